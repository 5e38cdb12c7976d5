"""BagNet patches per second: convlens's ``bagnet`` method versus a plain batched ONNX Runtime loop.

Chelsea at 224x224, q = 33 at stride 16 (12 x 12 = 144 patches; ``--patch``, ``--stride``), the default model
(``efficientnet_lite0.onnx``), each patch resized to 224 x 224.

convlens side: the method run in-process through ``convlens.runner`` (``prepare_run`` + ``iterate``, what a
job does minus streaming), every frame, top-5 list and the result built (heatmap, evidence grid). Rate:
patches / (start of ``iterate`` → ``Result``), which includes the whole picture's own pass.

Reference side: a plain loop as the issue describes it: the same patches cut from the same 224-px picture
and resized with PIL (bicubic), normalised in numpy, ``batch_size`` at a time (the method's default) through an
ONNX Runtime session with Runtime's default options, the logits kept. Each run of either side is a fresh
thread, as convlens runs each job. The two sides' patch logits must agree (max abs diff <= 1e-4) or the script
fails. The sides alternate within one run (the order reversed each repeat) and medians are reported.
A BagNet file (a small BagNet-33 from ``convlens_plugins.training.bagnet_net``, width 8, 1,000 classes, built
into a temporary folder with its card; ``--file-q``), 224 px, stride 8 (24 x 24 = 576 patches), four ways:
the ``bagnet`` method reading its logit map in one forward pass (the card's ``bagnet``); the same file as a
plain classifier through the method's per-patch path (the card without ``bagnet``: every patch resized to 224
and run whole, what the method did before BagNet files); ``map_logits`` alone (the one forward pass without
the method's frames and views); and each q x q patch alone through ONNX Runtime, batched, at its own size
(which gives the map's logits exactly: both one-pass sides must agree with it to 1e-4). Rates are patches/s,
medians (the sub-second sides run 5 times a repeat), the one-pass side's ratio to each printed.
Run: ``.venv/bin/python bench/bagnet.py [--repeats 3] [--patch 33] [--stride 16] [--file-q 33]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, median, rate, write_summary

MODEL = "efficientnet_lite0"
AGREEMENT = 1e-4
FILE_WIDTH = 8
FILE_CLASSES = 1000
FAST_RUNS = 5
"""Timed runs per repeat of each BagNet-file side but the per-patch path (about 20 s a run)."""


def run_convlens(model, image: np.ndarray, params: dict) -> tuple[float, np.ndarray]:
    """Seconds and patch logits (N x K) of one ``bagnet`` run."""
    from convlens.events import Result
    from convlens.runner import iterate, prepare_run
    from convlens_plugins.training.bagnet import BAGNET

    ctx = prepare_run(BAGNET, model, image, params)
    started = time.perf_counter()
    result = [event for event in iterate(BAGNET, ctx) if isinstance(event, Result)][-1]
    seconds = time.perf_counter() - started
    logits = result.arrays["patch_logits"]
    return seconds, logits.reshape(-1, logits.shape[-1])


def run_runtime_loop(session, model, picture: np.ndarray, params: dict) -> tuple[float, np.ndarray]:
    """Seconds and patch logits of the plain loop: PIL crops, numpy normalisation, batched ``session.run``."""
    from PIL import Image

    patch, stride, batch_size = params["patch"], params["stride"], params["batch_size"]
    height, width = model.input_size
    name = session.get_inputs()[0].name
    mean = np.asarray(model.card.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(1, 3, 1, 1)
    corners = [
        (y, x) for y in range(0, height - patch + 1, stride) for x in range(0, width - patch + 1, stride)
    ]
    started = time.perf_counter()
    outputs = []
    for first in range(0, len(corners), batch_size):
        crops = [
            np.asarray(
                Image.fromarray(picture[y : y + patch, x : x + patch]).resize((width, height), Image.BICUBIC),
                np.float32,
            )
            for y, x in corners[first : first + batch_size]
        ]
        batch = np.stack(crops).transpose(0, 3, 1, 2) / 255.0
        outputs.append(session.run(None, {name: ((batch - mean) / std).astype(np.float32)})[0])
    return time.perf_counter() - started, np.concatenate(outputs)


def build_bagnet_file(folder, patch: int):
    """The BagNet-``patch`` ONNX file loaded twice: under its card, and as a plain classifier (no ``bagnet``)."""
    import copy

    from convlens.models.store import load_model
    from convlens_plugins.training.bagnet_net import bagnet, write_bagnet

    write_bagnet(folder, f"bagnet{patch}", bagnet(patch, FILE_CLASSES, FILE_WIDTH), patch, formats=(".onnx",))
    one_pass = load_model(folder / f"bagnet{patch}.onnx")
    card = copy.deepcopy(one_pass.card)
    del card.extra["bagnet"]
    return one_pass, load_model(one_pass.path, card=card)


def run_patches_alone(
    session, model, picture: np.ndarray, patch: int, batch_size: int
) -> tuple[float, np.ndarray]:
    """Seconds and logits of each ``patch`` square of ``picture`` at stride 8, alone at its own size, batched."""
    stride = model.card.extra["bagnet"]["stride"]
    height, width = picture.shape[:2]
    mean = np.asarray(model.card.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(1, 3, 1, 1)
    corners = [
        (y, x) for y in range(0, height - patch + 1, stride) for x in range(0, width - patch + 1, stride)
    ]
    started = time.perf_counter()
    pixels = picture.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    normalised = ((pixels - mean) / std).astype(np.float32)[0]
    outputs = []
    for first in range(0, len(corners), batch_size):
        batch = np.stack(
            [normalised[:, y : y + patch, x : x + patch] for y, x in corners[first : first + batch_size]]
        )
        outputs.append(session.run(None, {"images": batch})[0])
    return time.perf_counter() - started, np.concatenate(outputs)


def run_map_only(model, picture: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds and patch logits of the one pass alone (``map_logits``), without the method's views."""
    from convlens.images import to_tensor
    from convlens_plugins.training.bagnet import map_logits

    declared = model.card.extra["bagnet"]
    started = time.perf_counter()
    _, logits, _ = map_logits(model, to_tensor(picture), declared["layer"], declared["stride"])
    return time.perf_counter() - started, logits


def bagnet_file_rows(args, image: np.ndarray, batch: int) -> tuple[list[dict], dict, float]:
    """The BagNet file's three sides: summary rows, details and the one-pass map's worst difference."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        one_pass, plain = in_fresh_thread(lambda: build_bagnet_file(Path(folder), args.file_q))
        session = ort.InferenceSession(str(one_pass.path), providers=["CPUExecutionProvider"])
        height, width = one_pass.input_size
        picture = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        params = {"patch": args.file_q, "stride": 8, "batch_size": batch}
        sides = {
            "one_pass": lambda: run_convlens(one_pass, picture, params),
            "map_only": lambda: run_map_only(one_pass, picture),
            "per_patch": lambda: run_convlens(plain, picture, params),
            "patches_alone": lambda: run_patches_alone(session, one_pass, picture, args.file_q, batch),
        }
        for side in sides.values():  # warm-up
            in_fresh_thread(side)
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        logits: dict[str, np.ndarray] = {}
        for repeat in range(args.repeats):
            for side in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:
                # The sub-second sides run several times a repeat: one run is shorter than the load's hiccups.
                for _ in range(1 if side == "per_patch" else FAST_RUNS):
                    elapsed, logits[side] = in_fresh_thread(sides[side])
                    seconds[side].append(elapsed)
                print(
                    f"repeat {repeat + 1}: BagNet file {side}: {rate(len(logits[side]), elapsed):.1f} patches/s"
                )
    patches = len(logits["one_pass"])
    worst = max(
        float(np.abs(logits[side] - logits["patches_alone"]).max()) for side in ("one_pass", "map_only")
    )
    rates = {side: rate(patches, median(values)) for side, values in seconds.items()}
    print(
        f"\nBagNet-{args.file_q} file (width {FILE_WIDTH}, {FILE_CLASSES} classes), {height} px, stride 8: {patches} patches"
    )
    print(f"one pass (bagnet, card's logit map): {rates['one_pass']:.1f} patches/s")
    print(f"per-patch path (bagnet, patches resized to {height} px): {rates['per_patch']:.1f} patches/s")
    print(f"the one pass alone (map_logits, no views): {rates['map_only']:.1f} patches/s")
    print(f"each patch alone, batched Runtime: {rates['patches_alone']:.1f} patches/s")
    print(f"ratio one pass / per-patch path: {rates['one_pass'] / rates['per_patch']:.1f}x")
    print(f"ratio one pass / patches alone: {rates['one_pass'] / rates['patches_alone']:.2f}x")
    print(f"ratio one pass alone / patches alone: {rates['map_only'] / rates['patches_alone']:.2f}x")
    print(f"max abs difference, one-pass map vs patches alone: {worst:.2e} (limit {AGREEMENT:g})")
    rows = [
        {
            "figure": f"BagNet-{args.file_q} file: one pass vs per-patch path (resized), patches/s",
            "convlens": rates["one_pass"],
            "reference": rates["per_patch"],
            "ratio": rates["one_pass"] / rates["per_patch"],
            "unit": "patches/s",
        },
        {
            "figure": f"BagNet-{args.file_q} file: one pass vs each patch alone (Runtime), patches/s",
            "convlens": rates["one_pass"],
            "reference": rates["patches_alone"],
            "ratio": rates["one_pass"] / rates["patches_alone"],
            "unit": "patches/s",
        },
        {
            "figure": f"BagNet-{args.file_q} file: the one pass alone vs each patch alone (Runtime), patches/s",
            "convlens": rates["map_only"],
            "reference": rates["patches_alone"],
            "ratio": rates["map_only"] / rates["patches_alone"],
            "unit": "patches/s",
        },
    ]
    return rows, {"file_rates": rates, "file_max_abs_diff": worst}, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch", type=int, default=33)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--file-q", type=int, default=33, choices=(9, 17, 33), help="the BagNet file's q")
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    import onnxruntime as ort
    from PIL import Image
    from skimage import data

    from convlens.models.store import ModelStore
    from convlens_plugins.training.bagnet import BAGNET

    batch = next(p.default for p in BAGNET.params if p.name == "batch_size")
    params = {"patch": args.patch, "stride": args.stride, "batch_size": batch}
    image = data.chelsea()
    model = in_fresh_thread(lambda: ModelStore([ensure_models()]).get(MODEL))
    height, width = model.input_size
    picture = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])

    in_fresh_thread(lambda: run_convlens(model, image, params))  # warm-up: both sessions
    in_fresh_thread(lambda: run_runtime_loop(session, model, picture, params))
    sides = ("convlens", "runtime_loop")
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    worst, patches = 0.0, 0
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            if side == "convlens":
                elapsed, logits = in_fresh_thread(lambda: run_convlens(model, image, params))
                convlens_logits = logits
            else:
                elapsed, logits = in_fresh_thread(lambda: run_runtime_loop(session, model, picture, params))
                loop_logits = logits
            seconds[side].append(elapsed)
            patches = len(logits)
            print(f"repeat {repeat + 1}: {side}: {rate(patches, elapsed):.1f} patches/s", flush=True)
        worst = max(worst, float(np.abs(convlens_logits - loop_logits).max()))

    rates = {side: rate(patches, median(values)) for side, values in seconds.items()}
    ratio = rates["convlens"] / rates["runtime_loop"]
    print(
        f"\nbagnet on chelsea at {height}, q {args.patch}, stride {args.stride}, batch {batch}: {patches} patches"
    )
    print(machine_note())
    print(f"convlens bagnet (runner): {rates['convlens']:.1f} patches/s")
    print(f"plain batched ONNX Runtime loop: {rates['runtime_loop']:.1f} patches/s")
    print(f"ratio convlens / loop: {ratio:.2f}x")
    print(f"max abs difference of the patch logits: {worst:.2e} (limit {AGREEMENT:g})")
    rows = [
        {
            "figure": "bagnet patches/s vs plain batched Runtime loop",
            "convlens": rates["convlens"],
            "reference": rates["runtime_loop"],
            "ratio": ratio,
            "unit": "patches/s",
        }
    ]
    file_rows, file_details, file_worst = bagnet_file_rows(args, image, batch)
    details = {"rates": rates, "max_abs_diff": worst, "batch_size": batch, **params, **file_details}
    write_summary(args.json, rows + file_rows, details)
    if max(worst, file_worst) > AGREEMENT:
        print(f"the patch logits differ by {max(worst, file_worst):.2e} > {AGREEMENT:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
