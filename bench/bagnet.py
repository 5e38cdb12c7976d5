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
Run: ``.venv/bin/python bench/bagnet.py [--repeats 3] [--patch 33] [--stride 16]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, median, rate, write_summary

MODEL = "efficientnet_lite0"
AGREEMENT = 1e-4


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch", type=int, default=33)
    parser.add_argument("--stride", type=int, default=16)
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
    write_summary(args.json, rows, {"rates": rates, "max_abs_diff": worst, "batch_size": batch, **params})
    if worst > AGREEMENT:
        print(f"the patch logits differ by {worst:.2e} > {AGREEMENT:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
