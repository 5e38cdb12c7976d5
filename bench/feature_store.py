"""Feature extraction over a folder of JPEGs: convlens's feature store versus a plain Runtime loop and a DataLoader.

The data set: ``--images`` (default 2,000) crops of scikit-image's photographs, several scales, written as JPEG
files (quality 90) into a temporary folder, a folder per photograph (torchvision's ``ImageFolder`` layout). The
features: the default model's (``efficientnet_lite0.onnx``) penultimate code, its 1280-channel head activation
pooled over the 7x7 positions, for every image.

convlens side: ``FeatureStore.features`` on ``convlens.datasets.FolderDataset`` into a fresh store (no reuse),
batch 32: decoding and resizing in its thread pool, ONNX Runtime cut at the layer.

Reference sides:
(a) a plain ONNX Runtime loop over already-decoded batches: every image decoded and resized before the clock
    starts (uint8, in memory), then per batch of 32 only the float conversion, the normalisation, the session
    (the same file cut at the same tensor with ``onnx.utils.extract_model``, Runtime's default options) and the
    mean over positions. Its rate is what inference alone allows; the target is convlens ≥ 0.9× it, i.e.
    decoding hidden behind inference.
(b) torchvision's ``ImageFolder`` + ``DataLoader`` (``Resize((224, 224), BICUBIC)``, ``ToTensor``,
    ``Normalize``; batch 32, ``--workers`` loader processes, default 2) feeding the eager EfficientNet-Lite0
    (``convlens.models.efficientnet_lite``, its classifier replaced by ``Identity``) under ``inference_mode``:
    the loop a PyTorch user writes. Target: convlens ≥ 2× it.

The three sets of codes must agree (max abs difference ≤ 1e-3 relative to the largest code) or the script
fails. The machine is shared and noisy: each side runs once, in a fresh thread, as a job would run it.
Run: ``.venv/bin/python bench/feature_store.py [--images 2000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, rate, write_summary
from PIL import Image

MODEL = "efficientnet_lite0.onnx"
BATCH = 32
AGREEMENT = 1e-3
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
SCALES = (0.3, 0.45, 0.6, 0.8)
"""Crop sides as a share of the photograph's shorter side."""


def write_crops(folder: Path, count: int) -> None:
    """``count`` deterministic JPEG crops, round-robin over photographs and scales, at random places."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = {name: np.asarray(getattr(data, name)())[:, :, :3] for name in PHOTOS}
    for name in PHOTOS:
        (folder / name).mkdir(parents=True)
    for index in range(count):
        name = PHOTOS[index % len(PHOTOS)]
        photo = photos[name]
        side = int(SCALES[(index // len(PHOTOS)) % len(SCALES)] * min(photo.shape[:2]))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        Image.fromarray(crop).save(folder / name / f"{index:05d}.jpg", quality=90)


def run_convlens(model, folder: Path, scratch: Path) -> tuple[float, np.ndarray, str]:
    from convlens.datasets import FolderDataset
    from convlens.features import FeatureStore

    dataset = FolderDataset(folder, id="crops")
    dataset.items()  # the listing and header checks are the data set's, done once when it is opened
    store = FeatureStore(scratch / f"store-{time.monotonic_ns()}")
    started = time.perf_counter()
    features = store.features(model, dataset, batch_size=BATCH)
    return time.perf_counter() - started, features.codes, features.engine


def decoded(folder: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[Path]]:
    """Every image decoded and resized (N x 3 x H x W uint8), in ``ImageFolder``'s order."""
    from convlens.images import read_image_file, resize

    paths = sorted(folder.glob("*/*.jpg"))
    pixels = np.empty((len(paths), 3, *size), dtype=np.uint8)
    for row, path in enumerate(paths):
        resized = resize(read_image_file(path), size)
        pixels[row] = np.round(resized * 255.0).astype(np.uint8).transpose(2, 0, 1)
    return pixels, paths


def run_runtime_loop(model, layer_tensor: str, pixels: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Seconds, codes and the process's CPU seconds of the plain loop."""
    import onnx
    import onnx.utils
    import onnxruntime

    proto = onnx.load(str(model.path))
    cut = onnx.utils.Extractor(proto).extract_model([proto.graph.input[0].name], [layer_tensor])
    session = onnxruntime.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    mean = np.asarray(model.card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.card.std, dtype=np.float32).reshape(1, 3, 1, 1)
    codes = []
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, pixels.shape[0], BATCH):
        batch = (pixels[start : start + BATCH].astype(np.float32) / 255.0 - mean) / std
        codes.append(session.run(None, {name: batch})[0].mean(axis=(2, 3)))
    return time.perf_counter() - started, np.concatenate(codes), time.process_time() - cpu


def decode_cpu_ms(folder: Path, size: tuple[int, int], count: int = 200) -> float:
    """CPU milliseconds per image of what the store's pool does for one image: load, resize, lay out as CxHxW."""
    from convlens.datasets import FolderDataset
    from convlens.images import resize

    dataset = FolderDataset(folder, id="crops")
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).astype(int))  # every photograph and scale
    started = time.thread_time()
    for index in indices:
        np.ascontiguousarray(resize(dataset.load(int(index)), size).transpose(2, 0, 1))
    return (time.thread_time() - started) / len(indices) * 1e3


def run_dataloader(model, folder: Path, workers: int) -> tuple[float, np.ndarray]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    net = build_efficientnet_lite0(pretrained=True)
    net._fc = torch.nn.Identity()
    transform = transforms.Compose(
        [
            transforms.Resize(model.input_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(model.card.mean, model.card.std),
        ]
    )
    loader = DataLoader(datasets.ImageFolder(str(folder), transform), batch_size=BATCH, num_workers=workers)
    codes = []
    started = time.perf_counter()
    with torch.inference_mode():
        for images, _labels in loader:
            codes.append(net(images).numpy())
    return time.perf_counter() - started, np.concatenate(codes)


def difference(codes: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(codes - reference).max() / np.abs(reference).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="the DataLoader's worker processes")
    parser.add_argument("--json", help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.features import penultimate_layer
    from convlens.models.store import ModelStore

    model = ModelStore([ensure_models()]).get(MODEL)
    layer = penultimate_layer(model)
    model.layers()
    layer_tensor = model._tensor_of[model._node_of[layer]]
    with tempfile.TemporaryDirectory(prefix="convlens-features-bench-") as scratch_name:
        scratch = Path(scratch_name)
        folder = scratch / "crops"
        write_crops(folder, args.images)
        pixels, _ = decoded(folder, model.input_size)
        decode_ms = decode_cpu_ms(folder, model.input_size)
        loop_s, loop_codes, loop_cpu_s = in_fresh_thread(
            lambda: run_runtime_loop(model, layer_tensor, pixels)
        )
        convlens_s, codes, engine = in_fresh_thread(lambda: run_convlens(model, folder, scratch))
        loader_s, loader_codes = in_fresh_thread(lambda: run_dataloader(model, folder, args.workers))

    count = args.images
    rates = {
        "convlens": rate(count, convlens_s),
        "loop": rate(count, loop_s),
        "loader": rate(count, loader_s),
    }
    worst = max(difference(codes, loop_codes), difference(codes, loader_codes))
    print(f"\nfeatures of {MODEL} layer {layer} (pooled) for {count} JPEG crops, batch {BATCH}")
    print(machine_note())
    print(f"convlens feature store ({engine}): {rates['convlens']:.1f} images/s ({convlens_s:.1f} s)")
    print(f"plain ONNX Runtime loop over decoded batches: {rates['loop']:.1f} images/s ({loop_s:.1f} s)")
    print(f"ImageFolder + DataLoader ({args.workers} workers) + torch: {rates['loader']:.1f} images/s")
    print(
        f"convlens vs Runtime loop: {rates['convlens'] / rates['loop']:.2f}x (target >= 0.9); "
        f"vs DataLoader: {rates['convlens'] / rates['loader']:.2f}x (target >= 2)"
    )
    inference_ms = loop_cpu_s / count * 1e3
    print(
        f"CPU per image: decode and resize {decode_ms:.2f} ms (one thread), the Runtime loop {inference_ms:.2f} ms "
        f"(all its threads, spinning included): what the pool must fit beside inference on {os.cpu_count()} CPUs"
    )
    print(f"largest difference of the codes, relative to the largest code: {worst:.2e} (limit {AGREEMENT:g})")
    rows = [
        {"figure": "features images/s vs Runtime loop on decoded", "convlens": rates["convlens"]},
        {"figure": "features images/s vs ImageFolder+DataLoader", "convlens": rates["convlens"]},
    ]
    rows[0]["reference"], rows[1]["reference"] = rates["loop"], rates["loader"]
    for row in rows:
        row.update(ratio=row["convlens"] / row["reference"], unit="images/s")
    details = {"rates": rates, "max_rel_diff": worst, "engine": engine, "layer": layer}
    details.update(decode_cpu_ms=decode_ms, inference_cpu_ms=inference_ms)
    write_summary(args.json, rows, details)
    if worst > AGREEMENT or engine != "onnxruntime":
        print(f"the codes differ by {worst:.2e} > {AGREEMENT:g} or the engine was {engine}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
