"""Feature visualisation: convlens's ``feature_vis`` versus Lucent's ``render_vis``, iterations per second.

Both sides optimise one channel's mean (``_blocks.9`` channel 4 of EfficientNet-Lite0 with its real weights) from
a Fourier-parameterised, colour-decorrelated image of 128x128, Adam at lr 0.05, for ``--steps`` steps, on the same
eager ``nn.Module`` (the default model built in torch), each normalising its input with ImageNet's mean and std:

- convlens: the ``feature_vis`` method run as a job runs it (``convlens.runner.prepare_run`` + ``iterate``) on a
  ``ModuleModel`` of that module, with ``transform_set`` "lucent": Lucent's standard transforms (grey pad 12 px,
  shift 0-7 px, scale 0.90-1.10, rotate -10..10 degrees, shift 0-3 px) and the resize back to 128, the same
  draws giving the same views as Lucent's own to a few thousandths (``tests/test_feature_vis.py``); a frame and
  metrics every 8 steps (its default), the result built at the end. Also timed with its default transforms
  (one reflected warp), for the record.
- Lucent: ``render_vis(net, "_blocks_9:4", param_f=image(128), fixed_image_size=128)``: its standard transforms,
  its ImageNet normalisation (``preprocess``), no progress bar, no image shown.

Each side's final image is scored on the same module (the channel's mean, no transforms) to show both did the
same job. Each run is in a fresh thread; the sides alternate; medians. Needs ``pip install -e '.[bench]'``
(torch-lucent and the kornia it was written for).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from live import exit_on_sigterm, in_fresh_thread, machine_note, median, write_summary

LAYER, CHANNEL, SIZE, LR, SEED = "_blocks.9", 4, 128, 0.05, 0


SIDES = ("convlens", "convlens_warp", "lucent")
"""convlens with Lucent's transforms (the figure), convlens with its own warp (for the record), Lucent."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    try:
        from lucent.optvis import param, render
    except ImportError as error:
        print(f"feature_vis bench needs Lucent: pip install -e '.[bench]' ({error})", file=sys.stderr)
        return 2

    from skimage import data

    from convlens.models.base import ModelCard
    from convlens.models.efficientnet_lite import build_efficientnet_lite0
    from convlens.models.module import ModuleModel
    from convlens.runner import iterate, prepare_run
    from convlens.runtime import configure_threads, tune_malloc
    from convlens_plugins.optimisation.feature_vis import FEATURE_VIS

    tune_malloc()
    configure_threads()
    net = build_efficientnet_lite0().eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    model = ModuleModel(
        "efficientnet_lite0", net, ModelCard(title="EfficientNet-Lite0", extra={"dynamic_size": True})
    )
    image = data.chelsea()
    params = {"objective": f"channel:{LAYER}:{CHANNEL}", "steps": args.steps, "size": SIZE, "lr": LR}

    def score(pixels: torch.Tensor) -> float:
        """The channel's mean on 1x3xHxW pixels in [0, 1], no transforms: what both sides raise."""
        with torch.no_grad():
            activation = model.forward(pixels, [LAYER], logits=False).activations[LAYER]
        return float(activation[0, CHANNEL].mean())

    def convlens_run(transform_set: str) -> tuple[float, float]:
        start = time.perf_counter()
        ctx = prepare_run(FEATURE_VIS, model, image, params | {"transform_set": transform_set}, seed=SEED)
        for event in iterate(FEATURE_VIS, ctx):
            result = event
        elapsed = time.perf_counter() - start
        return elapsed, score(torch.from_numpy(result.arrays["image"]).permute(2, 0, 1)[None].float())

    def lucent_run() -> tuple[float, float]:
        torch.manual_seed(SEED)  # its image's start
        np.random.seed(SEED)  # its transforms' draws
        start = time.perf_counter()
        images = render.render_vis(
            net,
            f"{LAYER.replace('.', '_')}:{CHANNEL}",
            param_f=lambda: param.image(SIZE),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            thresholds=(args.steps,),
            show_image=False,
            progress=False,
            fixed_image_size=SIZE,
        )
        elapsed = time.perf_counter() - start
        return elapsed, score(torch.from_numpy(images[-1][0]).permute(2, 0, 1)[None].float())

    runs = {
        "convlens": lambda: convlens_run("lucent"),
        "convlens_warp": lambda: convlens_run("warp"),
        "lucent": lucent_run,
    }
    print(
        f"feature_vis: {args.steps} steps at {SIZE}px, {LAYER} channel {CHANNEL}; {machine_note()}",
        flush=True,
    )
    for run in runs.values():  # warm-up, every side
        in_fresh_thread(run)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    scores: dict[str, list[float]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        for side in order:
            elapsed, value = in_fresh_thread(runs[side])
            seconds[side].append(elapsed)
            scores[side].append(value)
            print(f"  {side:<13} {args.steps / elapsed:.2f} it/s, channel mean after {value:.2f}", flush=True)
    rate = {side: args.steps / median(seconds[side]) for side in SIDES}
    print(
        f"feature_vis, Lucent's transforms on both sides: convlens {rate['convlens']:.2f} it/s, Lucent"
        f" {rate['lucent']:.2f} it/s, ratio {rate['convlens'] / rate['lucent']:.3f}; channel mean after:"
        f" convlens {median(scores['convlens']):.2f}, Lucent {median(scores['lucent']):.2f}",
        flush=True,
    )
    print(
        f"  (convlens with its own warp: {rate['convlens_warp']:.2f} it/s, channel mean after"
        f" {median(scores['convlens_warp']):.2f})",
        flush=True,
    )
    rows = [
        {
            "figure": "feature vis it/s vs Lucent (Lucent's transforms on both)",
            "convlens": rate["convlens"],
            "reference": rate["lucent"],
            "ratio": rate["convlens"] / rate["lucent"],
        }
    ]
    write_summary(
        args.json, rows, {"seconds": seconds, "channel_means": scores, "steps": args.steps, "size": SIZE}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
