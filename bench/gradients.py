"""Integrated Gradients (50 steps) and SmoothGrad (50 samples): convlens versus Captum, images per second.

convlens side, in this process: the plugin's method run as a job runs it (``convlens.runner.prepare_run`` and
``iterate``), on chelsea at the model's 224x224, target the top class, seed 0, its default batch sizes (16 path
points, 10 noisy copies): everything a job computes, the frames of SmoothGrad's running mean and the result's
heatmaps and signed views included.

Reference side: Captum's ``IntegratedGradients`` (``gausslegendre``, black baseline) and
``NoiseTunnel(Saliency)`` (``smoothgrad``, ``abs=False``, absolute noise std 0.15 × the image's range) on the
same autograd forward (``Model.forward(...).logits`` of the same loaded model), at the best of
``--batch-sizes`` for ``internal_batch_size`` / ``nt_samples_batch_size``, picked by one timed run of each
before the measured runs. Captum's noise is drawn from the global generator seeded as convlens seeds its own,
so both sides compute the same map; the largest difference (relative to the map's largest magnitude) is printed.

Each run is one image in a fresh thread (as the server runs jobs); the sides alternate (A/B, then B/A) and
medians are reported. Run: ``.venv/bin/python bench/gradients.py [--repeats 3 --formats pt2,onnx]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, median, write_summary

FORMATS = {"onnx": "efficientnet_lite0.onnx", "pt2": "efficientnet_lite0.pt2", "pt": "efficientnet_lite0.pt"}
STEPS = 50
SAMPLES = 50
NOISE_LEVEL = 0.15
SEED = 0


def timed(work: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds of ``work`` in a fresh thread, and its attributions (3xHxW)."""

    def run() -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        attributions = work()
        return time.perf_counter() - start, attributions

    return in_fresh_thread(run)


def convlens_side(method, model, image: np.ndarray, params: dict) -> Callable[[], np.ndarray]:
    from convlens.runner import iterate, prepare_run

    def run() -> np.ndarray:
        ctx = prepare_run(method, model, image, params, seed=SEED)
        return list(iterate(method, ctx))[-1].arrays["attributions"]

    return run


def captum_side(name: str, model, image: np.ndarray, batch_size: int) -> Callable[[], np.ndarray]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    from convlens.images import to_tensor
    from convlens_plugins.attribution.gradients import noise_std

    def logits(images: torch.Tensor) -> torch.Tensor:
        return model.forward(images).logits

    def run() -> np.ndarray:
        inputs = to_tensor(image, model.input_size)
        target = int(model.logits(inputs)[0].argmax())
        if name == "integrated_gradients":
            attribution = IntegratedGradients(logits).attribute(
                inputs, target=target, n_steps=STEPS, internal_batch_size=batch_size
            )
        else:
            torch.manual_seed(SEED)  # convlens's ctx.generator starts from the same seed
            attribution = NoiseTunnel(Saliency(logits)).attribute(
                inputs,
                nt_type="smoothgrad",
                nt_samples=SAMPLES,
                nt_samples_batch_size=batch_size,
                stdevs=noise_std(inputs, NOISE_LEVEL),
                target=target,
                abs=False,
            )
        return attribution[0].detach().numpy()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="pt2,onnx", help="comma-separated: onnx, pt2, pt")
    parser.add_argument(
        "--batch-sizes", default="10,25,50", help="Captum batch sizes to try; the best is used"
    )
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from skimage import data

    from convlens.models.store import ModelStore
    from convlens.runtime import configure_threads, tune_malloc
    from convlens_plugins.attribution.gradients import INTEGRATED_GRADIENTS, SMOOTHGRAD

    tune_malloc()
    configure_threads()
    store = ModelStore([ensure_models()])
    image = data.chelsea()
    methods = {
        "integrated_gradients": (INTEGRATED_GRADIENTS, {"steps": STEPS}),
        "smoothgrad": (SMOOTHGRAD, {"samples": SAMPLES, "noise_level": NOISE_LEVEL}),
    }
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    print(f"gradients: IG {STEPS} steps, SmoothGrad {SAMPLES} samples, chelsea; {machine_note()}", flush=True)

    rows, details = [], {}
    for fmt in formats:
        model = in_fresh_thread(lambda fmt=fmt: store.get(FORMATS[fmt]))
        for name, (method, params) in methods.items():
            ours = convlens_side(method, model, image, params)
            timed(ours)  # warm-up
            trials = {size: timed(captum_side(name, model, image, size))[0] for size in batch_sizes}
            best = min(trials, key=trials.get)
            theirs = captum_side(name, model, image, best)
            seconds: dict[str, list[float]] = {"convlens": [], "captum": []}
            maps: dict[str, np.ndarray] = {}
            for repeat in range(args.repeats):
                order = ["convlens", "captum"] if repeat % 2 == 0 else ["captum", "convlens"]
                for side in order:
                    elapsed, maps[side] = timed(ours if side == "convlens" else theirs)
                    seconds[side].append(elapsed)
                    print(f"  {fmt:<5} {name:<21} {side:<8} {1 / elapsed:.3f} images/s", flush=True)
            difference = float(np.abs(maps["convlens"] - maps["captum"]).max() / np.abs(maps["captum"]).max())
            ours_rate, theirs_rate = 1 / median(seconds["convlens"]), 1 / median(seconds["captum"])
            print(
                f"{fmt} {name}: convlens {ours_rate:.3f} images/s, Captum {theirs_rate:.3f} images/s "
                f"(batch {best}; tried {', '.join(f'{s}: {t:.2f} s' for s, t in trials.items())}), "
                f"ratio {ours_rate / theirs_rate:.3f}, max relative difference {difference:.1e}",
                flush=True,
            )
            rows.append(
                {
                    "figure": f"{name} images/s ({fmt})",
                    "convlens": ours_rate,
                    "reference": theirs_rate,
                    "ratio": ours_rate / theirs_rate,
                    "unit": "images/s",
                }
            )
            details[f"{fmt}/{name}"] = {
                "seconds": seconds,
                "captum_batch_size": best,
                "captum_trials_s": trials,
                "max_relative_difference": difference,
            }
    write_summary(args.json, rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
