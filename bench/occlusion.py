"""Occlusion perturbations per second: convlens's ``occlusion`` method versus Captum's ``Occlusion``.

Chelsea at 224x224, window 32, stride 8, grey fill, the top class of the default model
(``efficientnet_lite0.onnx``): 25x25 = 625 occluded images, one forward pass each.

convlens side: the method run in-process through ``convlens.runner`` (``prepare_run`` + ``iterate``, what a job
does minus streaming), every frame and the result built, its batches of occluded images made in numpy and run
by ONNX Runtime. Rate: 625 / (start of ``iterate`` → ``Result``), which includes the unoccluded forward pass.

Reference side: ``captum.attr.Occlusion`` on the same file's torch module (onnx2torch, as ``Model.forward``
runs it) returning softmax probabilities, under ``torch.no_grad``, at Captum's default
``perturbations_per_eval=1`` and at 8, 16, 32 and 64; *best* is the fastest of those by median. Each run of
either side is a fresh thread, as convlens runs each job. Both maps must agree (max abs diff <= 1e-4) or the
script fails.

The sides alternate within one run (the order reversed each repeat) and medians are reported.
Run: ``.venv/bin/python bench/occlusion.py [--repeats 3] [--batch-sizes 8,16,32,64]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, median, rate, write_summary

MODEL = "efficientnet_lite0"
WINDOW = 32
STRIDE = 8
FILL = "grey"
GREY = 0.5
AGREEMENT = 1e-4


def run_convlens(model, image: np.ndarray, batch_size: int) -> tuple[float, np.ndarray, int, int]:
    """Seconds, attribution map, target and positions of one convlens occlusion run."""
    from convlens.events import Result
    from convlens.runner import iterate, prepare_run
    from convlens_plugins.attribution.occlusion import OCCLUSION

    params = {"window": WINDOW, "stride": STRIDE, "fill": FILL, "batch_size": batch_size}
    ctx = prepare_run(OCCLUSION, model, image, params)
    started = time.perf_counter()
    result = [event for event in iterate(OCCLUSION, ctx) if isinstance(event, Result)][-1]
    seconds = time.perf_counter() - started
    return seconds, result.arrays["attribution"], result.data["target"], result.data["positions"]


def run_captum(model, inputs: torch.Tensor, target: int, per_eval: int) -> tuple[float, np.ndarray]:
    """Seconds and attribution map of Captum's ``Occlusion`` on the softmax of the model's torch module."""
    from captum.attr import Occlusion

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.forward(images).logits, dim=1)

    started = time.perf_counter()
    with torch.no_grad():
        attribution = Occlusion(probabilities).attribute(
            inputs,
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, STRIDE, STRIDE),
            baselines=GREY,
            target=target,
            perturbations_per_eval=per_eval,
        )
    return time.perf_counter() - started, attribution[0, 0].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="Captum perturbations_per_eval besides 1")
    parser.add_argument("--convlens-batch", type=int, default=None, help="default: the method's own default")
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from skimage import data

    from convlens.images import to_tensor
    from convlens.models.store import ModelStore
    from convlens_plugins.attribution.occlusion import OCCLUSION

    batch = args.convlens_batch or next(p.default for p in OCCLUSION.params if p.name == "batch_size")
    image = data.chelsea()
    model = in_fresh_thread(lambda: ModelStore([ensure_models()]).get(MODEL))
    inputs = to_tensor(image, model.input_size)
    per_evals = [1, *(int(size) for size in args.batch_sizes.split(","))]

    in_fresh_thread(lambda: run_convlens(model, image, batch))  # warm-up: the Runtime session, caches
    _, reference_map, target, positions = in_fresh_thread(lambda: run_convlens(model, image, batch))
    in_fresh_thread(lambda: run_captum(model, inputs, target, per_evals[-1]))

    seconds: dict[str, list[float]] = {"convlens": [], **{f"captum_{p}": [] for p in per_evals}}
    worst = 0.0
    for repeat in range(args.repeats):
        sides = ["convlens", *per_evals]
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            if side == "convlens":
                elapsed, attribution, _, _ = in_fresh_thread(lambda: run_convlens(model, image, batch))
                seconds["convlens"].append(elapsed)
            else:
                elapsed, attribution = in_fresh_thread(
                    lambda side=side: run_captum(model, inputs, target, side)
                )
                seconds[f"captum_{side}"].append(elapsed)
            worst = max(worst, float(np.abs(attribution - reference_map).max()))
            print(f"repeat {repeat + 1}: {side}: {rate(positions, elapsed):.1f} perturbations/s", flush=True)

    rates = {side: rate(positions, median(values)) for side, values in seconds.items()}
    best = max(per_evals[1:], key=lambda p: rates[f"captum_{p}"])
    convlens, default, fastest = rates["convlens"], rates["captum_1"], rates[f"captum_{best}"]
    print(
        f"\nocclusion on chelsea at 224, window {WINDOW}, stride {STRIDE}: {positions} perturbations; {machine_note()}"
    )
    print(f"convlens (batch {batch}, ONNX Runtime): {convlens:.1f}/s")
    for p in per_evals:
        print(f"Captum perturbations_per_eval={p}: {rates[f'captum_{p}']:.1f}/s")
    print(
        f"ratio vs Captum default: {convlens / default:.2f}x; vs Captum best ({best}): {convlens / fastest:.2f}x"
    )
    print(f"max abs difference of the maps: {worst:.2e} (limit {AGREEMENT:g})")
    rows = [
        {"figure": "occlusion/s vs Captum default", "convlens": convlens, "reference": default},
        {"figure": f"occlusion/s vs Captum best ({best})", "convlens": convlens, "reference": fastest},
    ]
    for row in rows:
        row.update(ratio=row["convlens"] / row["reference"], unit="perturbations/s")
    write_summary(args.json, rows, {"rates": rates, "max_abs_diff": worst, "batch_size": batch})
    if worst > AGREEMENT:
        print(f"the maps differ by {worst:.2e} > {AGREEMENT:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
