"""Feature visualisation: convlens's ``feature_vis`` versus Lucent's ``render_vis``, iterations per second.

Both sides optimise one channel's mean (``_blocks.9`` channel 4 of EfficientNet-Lite0 with its real weights) from
a Fourier-parameterised, colour-decorrelated image of 128x128 with transformation robustness, Adam at lr 0.05,
for ``--steps`` steps, on the same eager ``nn.Module`` (the default model built in torch, normalising inside):

- convlens: the ``feature_vis`` method run as a job runs it (``convlens.runner.prepare_run`` + ``iterate``) on a
  ``ModuleModel`` of that module: pad, random scale and rotation in one warp, jitter; a frame and metrics every
  8 steps (its default), the result built at the end.
- Lucent: ``render_vis(model, "net__blocks_9:4", param_f=image(128), thresholds=(steps,))`` with its standard
  transforms (pad, jitter, random scale, random rotate, jitter), no progress bar, no image shown.

The transforms differ in detail (Lucent applies five, convlens two warps), so this compares the tools as a user
runs them on the same task, not identical arithmetic. Each run is in a fresh thread; the sides alternate;
medians. Needs ``pip install -e '.[bench]'`` (torch-lucent and the kornia it was written for).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from live import exit_on_sigterm, in_fresh_thread, machine_note, median, write_summary

LAYER, CHANNEL, SIZE, LR, SEED = "_blocks.9", 4, 128, 0.05, 0


class PixelSpace(torch.nn.Module):
    """The network taking [0, 1] pixels, normalising with ImageNet's mean and std as the default model's card."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


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
    wrapped = PixelSpace(net).eval()
    image = data.chelsea()
    params = {"objective": f"channel:{LAYER}:{CHANNEL}", "steps": args.steps, "size": SIZE, "lr": LR}

    def convlens_run() -> float:
        start = time.perf_counter()
        ctx = prepare_run(FEATURE_VIS, model, image, params, seed=SEED)
        for _ in iterate(FEATURE_VIS, ctx):
            pass
        return time.perf_counter() - start

    def lucent_run() -> float:
        torch.manual_seed(SEED)
        start = time.perf_counter()
        render.render_vis(
            wrapped,
            f"net_{LAYER.replace('.', '_')}:{CHANNEL}",
            param_f=lambda: param.image(SIZE),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            thresholds=(args.steps,),
            show_image=False,
            progress=False,
            fixed_image_size=SIZE,
        )
        return time.perf_counter() - start

    print(
        f"feature_vis: {args.steps} steps at {SIZE}px, {LAYER} channel {CHANNEL}; {machine_note()}",
        flush=True,
    )
    in_fresh_thread(convlens_run)  # warm-up, both sides
    in_fresh_thread(lucent_run)
    seconds: dict[str, list[float]] = {"convlens": [], "lucent": []}
    for repeat in range(args.repeats):
        order = ["convlens", "lucent"] if repeat % 2 == 0 else ["lucent", "convlens"]
        for side in order:
            elapsed = in_fresh_thread(convlens_run if side == "convlens" else lucent_run)
            seconds[side].append(elapsed)
            print(f"  {side:<8} {args.steps / elapsed:.2f} it/s", flush=True)
    ours, theirs = args.steps / median(seconds["convlens"]), args.steps / median(seconds["lucent"])
    print(
        f"feature_vis: convlens {ours:.2f} it/s, Lucent {theirs:.2f} it/s, ratio {ours / theirs:.3f}",
        flush=True,
    )
    rows = [
        {
            "figure": "feature vis it/s vs Lucent",
            "convlens": ours,
            "reference": theirs,
            "ratio": ours / theirs,
        }
    ]
    write_summary(args.json, rows, {"seconds": seconds, "steps": args.steps, "size": SIZE})
    return 0


if __name__ == "__main__":
    sys.exit(main())
