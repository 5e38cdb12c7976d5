"""Occlusion perturbations per second: convlens's ``occlusion`` method versus Captum's ``Occlusion``.

Chelsea at 224x224, window 32, stride 8, grey fill, the top class of the default model
(``efficientnet_lite0.onnx``): 25x25 = 625 occluded images.

convlens sides: the method run in-process through ``convlens.runner`` (``prepare_run`` + ``iterate``, what a
job does minus streaming), every frame and the result built, with ``engine="incremental"`` (only the
region each square changes is recomputed) and ``engine="full"`` (each occluded image whole, built in numpy,
through ONNX Runtime). Rate: 625 / (start of ``iterate`` → ``Result``), which includes the unoccluded pass.

Reference sides: ``captum.attr.Occlusion`` on the same file's torch module (onnx2torch, as ``Model.forward``
runs it) returning softmax probabilities, under ``torch.no_grad``, at Captum's default
``perturbations_per_eval=1`` and at 8, 16, 32 and 64; *best* is the fastest of all five by median. And a plain
ONNX Runtime loop as the issue describes it: Runtime's default session options (one intra-op thread per CPU),
one occluded image per call, built in numpy, its softmax and running sums in numpy. Each run of any side is a
fresh thread, as convlens runs each job. Every map must agree with the first convlens map (max abs diff
<= 1e-4) or the script fails.

Approximate sides: the ``drill_down`` thresholds of ``--drill-downs`` (incremental engine): their rate is 625 /
(time to the whole stride-8 map), a perturbations/s equivalent, and their error is measured here, the L∞
difference from the exact convlens map over that map's maximum (the result's own ``error_estimate`` is printed
beside it). They are left out of the agreement check.

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
ENGINES = ("incremental", "full")


def run_convlens(
    model, image: np.ndarray, engine: str, batch_size: int, drill_down: float = 0.0
) -> tuple[float, np.ndarray, dict]:
    """Seconds, attribution map and result data of one convlens occlusion run; ``data["first_frame_seconds"]``
    is when its first frame came."""
    from convlens.events import Frame, Result
    from convlens.runner import iterate, prepare_run
    from convlens_plugins.attribution.occlusion import OCCLUSION

    params = {
        "window": WINDOW,
        "stride": STRIDE,
        "fill": FILL,
        "batch_size": batch_size,
        "engine": engine,
        "drill_down": drill_down,
    }
    ctx = prepare_run(OCCLUSION, model, image, params)
    started = time.perf_counter()
    first_frame = None
    for event in iterate(OCCLUSION, ctx):
        if first_frame is None and isinstance(event, Frame):
            first_frame = time.perf_counter() - started
        if isinstance(event, Result):
            result = event
    seconds = time.perf_counter() - started
    result.data["first_frame_seconds"] = first_frame
    if result.data["engine"] != engine:
        raise RuntimeError(
            f"asked for the {engine} engine, got {result.data['engine']}: {result.data['engine_reason']}"
        )
    return seconds, result.arrays["attribution"], result.data


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


def run_runtime_loop(session, model, pixels: np.ndarray, target: int) -> tuple[float, np.ndarray]:
    """Seconds and map of a plain ONNX Runtime loop: one occluded image per call, everything else in numpy."""
    mean = np.asarray(model.card.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(1, 3, 1, 1)
    starts = np.arange(int(np.ceil((pixels.shape[1] - WINDOW) / STRIDE)) + 1) * STRIDE
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    image = (pixels[None] - mean) / std
    fill = (np.full((1, 3, 1, 1), GREY, np.float32) - mean) / std

    def probability(batch: np.ndarray) -> float:
        logits = session.run(None, {name: batch})[0][0].astype(np.float64)
        exp = np.exp(logits - logits.max())
        return float(exp[target] / exp.sum())

    base = probability(image)
    total = np.zeros(pixels.shape[1:], np.float64)
    count = np.zeros(pixels.shape[1:], np.int32)
    for y in starts:
        for x in starts:
            occluded = image.copy()
            occluded[:, :, y : y + WINDOW, x : x + WINDOW] = fill
            total[y : y + WINDOW, x : x + WINDOW] += base - probability(occluded)
            count[y : y + WINDOW, x : x + WINDOW] += 1
    attribution = (total / np.maximum(count, 1)).astype(np.float32)
    return time.perf_counter() - started, attribution


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="Captum perturbations_per_eval besides 1")
    parser.add_argument("--convlens-batch", type=int, default=None, help="default: the method's own default")
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    parser.add_argument(
        "--drill-downs", default="0.05,0.2,0.5", help="drill_down thresholds run with the incremental engine"
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from skimage import data

    from convlens.images import to_tensor
    from convlens.models.onnx import runtime_session
    from convlens.models.store import ModelStore
    from convlens_plugins.attribution.occlusion import OCCLUSION

    batch = args.convlens_batch or next(p.default for p in OCCLUSION.params if p.name == "batch_size")
    image = data.chelsea()
    model = in_fresh_thread(lambda: ModelStore([ensure_models()]).get(MODEL))
    inputs = to_tensor(image, model.input_size)
    pixels = inputs[0].numpy()
    session = runtime_session(model.path)
    per_evals = [1, *(int(size) for size in args.batch_sizes.split(","))]

    for engine in ENGINES:  # warm-up: the Runtime sessions, the incremental plan
        in_fresh_thread(lambda engine=engine: run_convlens(model, image, engine, batch))
    _, reference_map, details = in_fresh_thread(lambda: run_convlens(model, image, ENGINES[0], batch))
    target, positions = details["target"], details["positions"]
    in_fresh_thread(lambda: run_runtime_loop(session, model, pixels, target))
    in_fresh_thread(lambda: run_captum(model, inputs, target, per_evals[-1]))

    drill_downs = [float(value) for value in args.drill_downs.split(",") if value]
    sides: list[str | int | float] = [*ENGINES, "runtime_loop", *per_evals, *drill_downs]
    seconds: dict[str, list[float]] = {str(side): [] for side in ENGINES + ("runtime_loop",)}
    seconds.update({f"captum_{p}": [] for p in per_evals})
    seconds.update({f"drill_down_{t:g}": [] for t in drill_downs})
    errors: dict[str, float] = {}
    first_frames: dict[str, list[float]] = {}
    computed: dict[str, int] = {}
    worst = 0.0
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            if isinstance(side, float):
                elapsed, attribution, data = in_fresh_thread(
                    lambda side=side: run_convlens(model, image, "incremental", batch, side)
                )
                key = f"drill_down_{side:g}"
                error = float(np.abs(attribution - reference_map).max() / reference_map.max())
                errors[key], computed[key] = error, data["positions_computed"]
                first_frames.setdefault(key, []).append(data["first_frame_seconds"])
                seconds[key].append(elapsed)
                print(
                    f"repeat {repeat + 1}: {key}: {rate(positions, elapsed):.1f} perturbations/s equivalent, "
                    f"first frame at {data['first_frame_seconds']:.2f} s of {elapsed:.2f} s, "
                    f"{data['positions_computed']} computed, L∞ error {error:.2%} of the map's max "
                    f"(estimate {data['error_estimate']:.2%})",
                    flush=True,
                )
                continue
            if side in ENGINES:
                elapsed, attribution, _ = in_fresh_thread(
                    lambda side=side: run_convlens(model, image, side, batch)
                )
                key = side
            elif side == "runtime_loop":
                elapsed, attribution = in_fresh_thread(
                    lambda: run_runtime_loop(session, model, pixels, target)
                )
                key = side
            else:
                elapsed, attribution = in_fresh_thread(
                    lambda side=side: run_captum(model, inputs, target, side)
                )
                key = f"captum_{side}"
            seconds[key].append(elapsed)
            worst = max(worst, float(np.abs(attribution - reference_map).max()))
            print(f"repeat {repeat + 1}: {key}: {rate(positions, elapsed):.1f} perturbations/s", flush=True)

    rates = {side: rate(positions, median(values)) for side, values in seconds.items()}
    best = max(per_evals, key=lambda p: rates[f"captum_{p}"])
    incremental, full, loop = rates["incremental"], rates["full"], rates["runtime_loop"]
    default, fastest = rates["captum_1"], rates[f"captum_{best}"]
    print(f"\nocclusion on chelsea at 224, window {WINDOW}, stride {STRIDE}: {positions} perturbations")
    print(machine_note())
    print(f"convlens incremental (batch {batch}): {incremental:.1f}/s; {details['engine_reason']}")
    print(f"convlens full (batch {batch}): {full:.1f}/s")
    print(f"plain ONNX Runtime loop, batch 1: {loop:.1f}/s")
    for p in per_evals:
        print(f"Captum perturbations_per_eval={p}: {rates[f'captum_{p}']:.1f}/s")
    print(
        f"incremental vs Captum default: {incremental / default:.2f}x; vs Captum best ({best}): "
        f"{incremental / fastest:.2f}x; vs full: {incremental / full:.2f}x"
    )
    print(f"full vs Captum best: {full / fastest:.2f}x; vs the plain Runtime loop: {full / loop:.2f}x")
    for key in (f"drill_down_{t:g}" for t in drill_downs):
        print(
            f"{key} (incremental engine): {rates[key]:.1f}/s equivalent ({computed[key]} of {positions} positions "
            f"computed): {rates[key] / fastest:.2f}x Captum best, L∞ error {errors[key]:.2%} of the map's max; "
            f"first frame after {median(first_frames[key]):.2f} s"
        )
    print(f"max abs difference of the exact maps: {worst:.2e} (limit {AGREEMENT:g})")
    rows = [
        {"figure": "occlusion/s vs Captum default", "convlens": incremental, "reference": default},
        {"figure": f"occlusion/s vs Captum best ({best})", "convlens": incremental, "reference": fastest},
        {
            "figure": f"occlusion/s, full engine vs Captum best ({best})",
            "convlens": full,
            "reference": fastest,
        },
        {"figure": "occlusion/s, incremental vs full engine", "convlens": incremental, "reference": full},
        {"figure": "occlusion/s, full engine vs plain Runtime loop", "convlens": full, "reference": loop},
    ]
    rows += [
        {
            "figure": f"occlusion/s equivalent, {key} (L∞ error {errors[key]:.2%}) vs Captum best ({best})",
            "convlens": rates[key],
            "reference": fastest,
        }
        for key in (f"drill_down_{t:g}" for t in drill_downs)
    ]
    for row in rows:
        row.update(ratio=row["convlens"] / row["reference"], unit="perturbations/s")
    write_summary(
        args.json,
        rows,
        {
            "rates": rates,
            "max_abs_diff": worst,
            "batch_size": batch,
            "engine_reason": details["engine_reason"],
            "drill_down_errors": errors,
        },
    )
    if worst > AGREEMENT:
        print(f"the maps differ by {worst:.2e} > {AGREEMENT:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
