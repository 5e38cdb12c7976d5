"""Adversarial patch: held-out success per second, convlens's ``adversarial_patch`` versus ART's
``AdversarialPatchPyTorch``.

Both sides train a toaster patch on the default network (EfficientNet-Lite0, ImageNet weights) as one eager
module: convlens through a ``ModuleModel`` of it, ART through a ``PyTorchClassifier`` of the same module with the
card's normalisation inside (input [0, 1]). The same training images (the sample pictures convlens's seeded
split keeps for training), the same budget (``--steps`` steps of one batch of every training image: convlens
``batch`` = the number of training images, ART ``max_iter`` = steps with ``batch_size`` = that number), a disc of
80 px at model input drawn at 0.3–1.5× (ART: ``patch_shape`` 80 and ``scale_min``/``scale_max`` 24/224 and
120/224 of the picture's side, which is how its scale is defined), rotations up to ±22.5°, Adam at ``--lr`` on
[0, 1] pixels, each patch clipped to [0, 1].

Success: each finished patch, with its own mask (convlens's hard disc, ART's soft one), is pasted by one
OpenCV paste (``cv2.warpAffine``, bilinear) on the held-out pictures at the same ``--placements`` seeded
placements each (centre, 24–120 px, ±22.5°), and the eager module's top-1 is compared with the target; so both
patches are judged by the same placements and code, neither tool's own. Time: the training call's wall clock
(convlens: ``prepare_run`` to the ``Result``, its held-out tests at the start and the end included, ``every`` =
steps; ART: ``generate``), each in a fresh thread as a job runs. The ratio is convlens's success per second over
ART's (above 1: convlens better); a side with no success gets a ratio of 0 or infinity, printed as such, and nan
when neither side succeeded (the budget was too small to compare).

Run: ``.venv/bin/python bench/adversarial_patch.py [--steps 100] [--repeats 1]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
from live import (
    ensure_models,
    exit_on_sigterm,
    in_fresh_thread,
    machine_note,
    median,
    pixel_space,
    write_summary,
)
from torch import nn

TARGET = 859  # toaster
SIZE = 80
INPUT = 224
SCALES = (0.3, 1.5)
ROTATION = 22.5
HELD_OUT = 4
SEED = 0


def cv2_paste(picture: np.ndarray, patch: np.ndarray, mask: np.ndarray, placement: tuple) -> np.ndarray:
    """HxWx3 ``picture`` with ``patch`` (PxPx3, ``mask`` PxP) centred at (x, y), ``width`` px, ``angle``°."""
    import cv2

    x, y, width, angle = placement
    side = patch.shape[0]
    centre = ((side - 1) / 2, (side - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, width / side)
    matrix[:, 2] += (x - 0.5 - centre[0], y - 0.5 - centre[1])
    layers = np.dstack([patch * mask[:, :, None], mask]).astype(np.float32)
    warped = cv2.warpAffine(layers, matrix, (picture.shape[1], picture.shape[0]), flags=cv2.INTER_LINEAR)
    return picture * (1 - warped[:, :, 3:]) + warped[:, :, :3]


def placements(count: int, rng: np.random.Generator) -> list[tuple]:
    found = []
    for _ in range(count):
        width = SIZE * rng.uniform(*SCALES)
        x, y = rng.uniform(width / 2, INPUT - width / 2, size=2)
        found.append((x, y, width, rng.uniform(-ROTATION, ROTATION)))
    return found


def success(
    module: nn.Module, held_out: list[np.ndarray], patch, mask, trials: list[list[tuple]]
) -> tuple[float, float]:
    """The share of trials whose top-1 is the target, and the target's mean probability."""
    pasted = [cv2_paste(p, patch, mask, t) for p, these in zip(held_out, trials, strict=True) for t in these]
    batch = torch.from_numpy(np.stack(pasted).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        probabilities = torch.cat([module(chunk).double().softmax(dim=1) for chunk in batch.split(32)])
    return float((probabilities.argmax(dim=1) == TARGET).double().mean()), float(
        probabilities[:, TARGET].mean()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--placements", type=int, default=16, help="per held-out picture")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier
    from skimage import data

    from convlens.images import to_tensor
    from convlens.models.default import DEFAULT_MODEL_ID
    from convlens.models.efficientnet_lite import build_efficientnet_lite0
    from convlens.models.module import ModuleModel
    from convlens.models.store import ModelStore
    from convlens.runner import iterate, prepare_run
    from convlens.runtime import configure_threads, tune_malloc
    from convlens_plugins.adversarial.patch import ADVERSARIAL_PATCH, sample_pictures

    tune_malloc()
    configure_threads()
    card = ModelStore([ensure_models()]).get(DEFAULT_MODEL_ID).card
    net = build_efficientnet_lite0().eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    model = ModuleModel("efficientnet_lite0 (eager)", net, card)
    module = pixel_space(net, card.mean, card.std)
    pictures = {
        name: to_tensor(pixels, (INPUT, INPUT))[0].permute(1, 2, 0).numpy()
        for name, pixels in sample_pictures()
    }
    training_count = len(pictures) - HELD_OUT
    params = {
        "steps": args.steps,
        "batch": training_count,
        "lr": args.lr,
        "size": SIZE,
        "min_scale": SCALES[0],
        "max_scale": SCALES[1],
        "rotation": ROTATION,
        "held_out": HELD_OUT,
        "every": args.steps,
    }

    def convlens_run(steps: int = args.steps) -> tuple[float, np.ndarray, np.ndarray, dict]:
        start = time.perf_counter()
        ctx = prepare_run(ADVERSARIAL_PATCH, model, data.chelsea(), params | {"steps": steps}, seed=SEED)
        for event in iterate(ADVERSARIAL_PATCH, ctx):
            result = event
        elapsed = time.perf_counter() - start
        return elapsed, result.arrays["patch"], result.arrays["mask"], result.data

    # The split is the seed's: one convlens run says which pictures it trains on, and ART gets the same.
    print(f"adversarial patch: {args.steps} steps × {training_count} pastes; {machine_note()}", flush=True)
    _, _, _, first = in_fresh_thread(lambda: convlens_run(steps=1))
    training = np.stack([pictures[name] for name in first["training"]]).transpose(0, 3, 1, 2)
    held_out = [pictures[name] for name in first["held_out"]]
    trials = [placements(args.placements, np.random.default_rng(SEED + index)) for index in range(HELD_OUT)]

    def art_run() -> tuple[float, np.ndarray, np.ndarray, dict]:
        np.random.seed(SEED)
        torch.manual_seed(SEED)
        classifier = PyTorchClassifier(
            model=module,
            loss=nn.CrossEntropyLoss(),
            input_shape=(3, INPUT, INPUT),
            nb_classes=1000,
            clip_values=(0.0, 1.0),
        )
        attack = AdversarialPatchPyTorch(
            classifier,
            rotation_max=ROTATION,
            scale_min=SIZE * SCALES[0] / INPUT,
            scale_max=SIZE * SCALES[1] / INPUT,
            learning_rate=args.lr,
            max_iter=args.steps,
            batch_size=training_count,
            patch_shape=(3, SIZE, SIZE),
            patch_type="circle",
            optimizer="Adam",
            targeted=True,
            verbose=False,
        )
        labels = np.zeros((training_count, 1000), dtype=np.float32)
        labels[:, TARGET] = 1
        start = time.perf_counter()
        patch, mask = attack.generate(x=training.astype(np.float32), y=labels)
        elapsed = time.perf_counter() - start
        return elapsed, patch.transpose(1, 2, 0), mask[0], {}

    sides = {"convlens": convlens_run, "ART": art_run}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    probabilities: dict[str, list[float]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        for side in order:
            elapsed, patch, mask, _ = in_fresh_thread(sides[side])
            rate, probability = success(
                module, held_out, patch.astype(np.float32), mask.astype(np.float32), trials
            )
            seconds[side].append(elapsed)
            rates[side].append(rate)
            probabilities[side].append(probability)
            print(
                f"  {side:<9} held-out success {rate:.1%}, mean target probability {probability:.4f},"
                f" in {elapsed:.1f} s",
                flush=True,
            )
    per_second = {side: median(rates[side]) / median(seconds[side]) for side in sides}
    if per_second["ART"] > 0:
        ratio = per_second["convlens"] / per_second["ART"]
    else:  # no ratio when neither side fooled a held-out picture: raise --steps
        ratio = math.inf if per_second["convlens"] > 0 else math.nan
    print(
        f"adversarial patch, {args.steps} steps × {training_count}, held-out success over "
        f"{HELD_OUT} × {args.placements} placements: convlens {median(rates['convlens']):.1%} in "
        f"{median(seconds['convlens']):.1f} s, ART {median(rates['ART']):.1%} in {median(seconds['ART']):.1f} s; "
        f"success per second ratio {ratio:.3g}",
        flush=True,
    )
    rows = [
        {
            "figure": "adversarial patch held-out success per second vs ART",
            "convlens": per_second["convlens"],
            "reference": per_second["ART"],
            "ratio": ratio,
        }
    ]
    details = {"seconds": seconds, "success": rates, "target_probability": probabilities, "steps": args.steps}
    write_summary(args.json, rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
