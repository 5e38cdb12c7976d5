"""Deep Image Prior steps per second: the ``deep_image_prior`` method versus a bare torch loop of the same net.

Chelsea's centre square at ``--size`` (default 128) with Gaussian noise of σ 25 grey levels, ``--steps`` Adam
steps (default 20) at the method's default lr, a frame and metrics every 10 steps (the method's default).

convlens side: the method run in-process through ``convlens.runner`` (``prepare_run`` + ``iterate``, what a job
does minus streaming): corruption, PSNR at every step, the best picture kept, frames, metrics, the result.
Reference side: the same steps written out in plain torch: the same net (``SkipNet``, initialised from the same
seeded generator), the same code ``z`` and jitter, the same noisy target, MSE, Adam; nothing else. Both draw
from one generator in the same order, so their last pictures must be equal bit for bit, or the script fails.
Each run is a fresh thread, as convlens runs each job; the sides alternate (the order reversed each repeat) and
medians are reported. Rate: steps / (start of the loop → its end), setup excluded on both sides. Also printed:
the seconds until the method's streamed PSNR first beat the noisy picture's by 3 dB (the issue's "visibly better
within 60 s"; give ``--steps`` enough to get there, e.g. 150 at 128 px).
Run: ``.venv/bin/python bench/deep_image_prior.py [--size 128] [--steps 20] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from live import exit_on_sigterm, in_fresh_thread, machine_note, median, rate, write_summary

SEED = 0
SIGMA = 25.0


def run_convlens(image: np.ndarray, size: int, steps: int) -> tuple[float, np.ndarray, float | None]:
    """Seconds from the first event requested to the ``Result``, the last picture, and the seconds until a
    streamed PSNR first beat the noisy picture's by 3 dB (``None`` if none did)."""
    from convlens.events import Metrics, Result
    from convlens.runner import iterate, prepare_run
    from convlens.testing import make_tiny_model
    from convlens_plugins.training.deep_image_prior import DEEP_IMAGE_PRIOR

    params = {"size": size, "steps": steps, "corruption": "noise", "sigma": SIGMA}
    ctx = prepare_run(DEEP_IMAGE_PRIOR, make_tiny_model(), image, params, seed=SEED)
    started = time.perf_counter()
    psnr_times = []
    for event in iterate(DEEP_IMAGE_PRIOR, ctx):
        if isinstance(event, Metrics):
            psnr_times.append((event.values["psnr"], time.perf_counter() - started))
        if isinstance(event, Result):
            result = event
    seconds = time.perf_counter() - started
    better = [at for psnr, at in psnr_times if psnr >= result.data["psnr_corrupted"] + 3.0]
    return seconds, result.arrays["last"], better[0] if better else None


def run_bare(image: np.ndarray, size: int, steps: int, lr: float) -> tuple[float, np.ndarray]:
    """The same fit as a plain torch loop: seconds of its steps, and its last picture."""
    from convlens.images import to_image
    from convlens_plugins.training.deep_image_prior import (
        CODE_JITTER,
        random_code,
        seeded_net,
        square_picture,
    )

    generator = torch.Generator().manual_seed(SEED)
    clean = square_picture(image.astype(np.float32) / 255.0, size)
    noisy = (clean + torch.randn(clean.shape, generator=generator) * (SIGMA / 255.0)).clamp(0.0, 1.0)
    code = random_code((size, size), generator)
    net = seeded_net(generator)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    started = time.perf_counter()
    for _ in range(steps):
        output = net(code + torch.randn(code.shape, generator=generator) * CODE_JITTER)
        loss = (output - noisy).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return time.perf_counter() - started, to_image(output.detach()), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from skimage import data

    from convlens.runtime import configure_threads
    from convlens_plugins.training.deep_image_prior import LR

    configure_threads()
    image = data.chelsea()
    sides = {
        "convlens": lambda: run_convlens(image, args.size, args.steps),
        "bare": lambda: run_bare(image, args.size, args.steps, LR.default),
    }
    in_fresh_thread(lambda: run_bare(image, args.size, 2, LR.default))  # warm-up: oneDNN's kernels
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    pictures: dict[str, np.ndarray] = {}
    to_3_db: list[float] = []
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else list(sides)[::-1]:
            elapsed, pictures[side], better = in_fresh_thread(sides[side])
            seconds[side].append(elapsed)
            to_3_db += [better] if better is not None else []
            print(f"repeat {repeat + 1}: {side}: {rate(args.steps, elapsed):.2f} steps/s", flush=True)
    same = np.array_equal(pictures["convlens"], pictures["bare"])
    convlens, bare = (rate(args.steps, median(seconds[side])) for side in sides)
    print(f"\ndeep_image_prior on chelsea at {args.size} px, {args.steps} steps, σ {SIGMA:g}")
    print(machine_note())
    print(f"convlens method: {convlens:.2f} steps/s; bare torch loop: {bare:.2f} steps/s")
    print(f"ratio convlens / bare: {convlens / bare:.3f}")
    print(f"last pictures equal bit for bit: {same}")
    reached = f"{median(to_3_db):.1f} s (median)" if to_3_db else f"not within {args.steps} steps"
    print(f"the method's PSNR 3 dB above the noisy picture's after: {reached}")
    rows = [
        {"figure": f"DIP steps/s at {args.size} px vs bare torch", "convlens": convlens, "reference": bare}
    ]
    write_summary(args.json, rows, {"seconds": seconds, "same_picture": same, "to_3_db_s": to_3_db})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
