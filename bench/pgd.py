"""PGD L∞ (10 steps, ε 8/255, step 2/255, random start): convlens' ``attack_steps`` versus torchattacks' PGD, images/s.

Both sides attack the same eager module, the default model (EfficientNet-Lite0 with its ImageNet weights), on a
batch of 1 and of 16 pictures (scikit-image's photographs at 224x224) with their own top classes as labels:
convlens through a ``ModuleModel`` of the module (its card normalises inside ``Model.forward``), torchattacks
through an ``nn.Module`` that normalises the same way before calling it. The random start is drawn from the same
seed on both sides (convlens from a ``torch.Generator``, torchattacks from the global one). convlens' side consumes
every state ``attack_steps`` yields, the final one's logits included (one forward more than torchattacks, which
returns the pictures alone).

On the CPU convlens feeds the network the pixels in channels-last order (``network_layout``), faster than the
contiguous batch torchattacks is given, so a third side runs torchattacks with the same module fed channels-last
inside (the like-for-like cost; torchattacks' own figure stays the one of the batch as given). That side computes
the same floats as convlens, so its adversarial batch must equal convlens' (the largest difference is printed);
the contiguous one differs by float noise that ``sign(∇)`` makes into whole steps.

Each run is one batch in a fresh thread (as the server runs jobs); the sides take turns (A/B/C, then C/B/A) and
medians are reported. Run: ``.venv/bin/python bench/pgd.py [--repeats 5 --batch-sizes 1,16]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from live import exit_on_sigterm, in_fresh_thread, machine_note, median, pixel_space, write_summary
from torch import nn

EPSILON, STEP, STEPS = 8 / 255, 2 / 255, 10
SEED = 0
PHOTOGRAPHS = (
    "chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat",
    "retina", "colorwheel", "logo", "page", "camera", "moon", "clock", "coins", "text",
)  # fmt: skip


def pictures(count: int, size: tuple[int, int]) -> torch.Tensor:
    """``count`` of scikit-image's photographs as RGB at ``size`` (grey ones made RGB), in [0, 1]."""
    from skimage import data

    from convlens.images import to_tensor

    chosen = []
    for name in PHOTOGRAPHS[:count]:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        chosen.append(to_tensor(np.ascontiguousarray(image[:, :, :3]), size))
    return torch.cat(chosen)


def timed(work: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    def run() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        adversarial = work()
        return time.perf_counter() - start, adversarial

    return in_fresh_thread(run)


def convlens_side(model, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    from convlens_plugins.adversarial.attacks import attack_steps

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(SEED)
        for _, state, _ in attack_steps(
            model,
            images,
            attack="pgd",
            norm="linf",
            epsilon=EPSILON,
            step=STEP,
            steps=STEPS,
            label=labels,
            targeted=False,
            generator=generator,
        ):
            adversarial = state
        return adversarial

    return run


def torchattacks_side(
    oracle: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], torch.Tensor]:
    import torchattacks

    attack = torchattacks.PGD(oracle, eps=EPSILON, alpha=STEP, steps=STEPS, random_start=True)

    def run() -> torch.Tensor:
        torch.manual_seed(SEED)
        return attack(images, labels)

    return run


class FedChannelsLast(nn.Module):
    """``net`` fed its pixels in channels-last order, as convlens feeds a network on the CPU."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=torch.channels_last))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.models.base import ModelCard
    from convlens.models.efficientnet_lite import build_efficientnet_lite0
    from convlens.models.module import ModuleModel
    from convlens.runtime import configure_threads, tune_malloc

    tune_malloc()
    configure_threads()
    module = build_efficientnet_lite0(pretrained=True).eval()
    card = ModelCard(title="EfficientNet-Lite0 (eager)", input_size=(224, 224))
    model = ModuleModel("efficientnet_lite0 (eager)", module, card)
    oracle = pixel_space(module, card.mean, card.std)
    print(f"pgd: L∞ {STEPS} steps, ε 8/255, step 2/255, random start; {machine_note()}", flush=True)

    rows, details = [], {}
    for batch in [int(size) for size in args.batch_sizes.split(",")]:
        images = pictures(batch, card.input_size)
        with torch.no_grad():
            labels = oracle(images).argmax(dim=1)
        sides = {
            "convlens": convlens_side(model, images, labels),
            "torchattacks": torchattacks_side(oracle, images, labels),
            "torchattacks channels-last": torchattacks_side(FedChannelsLast(oracle), images, labels),
        }
        for work in sides.values():
            timed(work)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        results: dict[str, torch.Tensor] = {}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                elapsed, results[name] = timed(sides[name])
                seconds[name].append(elapsed)
                print(f"  batch {batch:>2} {name:<26} {batch / elapsed:.3f} images/s", flush=True)
        same = float((results["convlens"] - results["torchattacks channels-last"]).abs().max())
        contiguous = float((results["convlens"] - results["torchattacks"]).abs().max())
        ours = batch / median(seconds["convlens"])
        theirs = batch / median(seconds["torchattacks"])
        like = batch / median(seconds["torchattacks channels-last"])
        print(
            f"batch {batch}: convlens {ours:.3f} images/s, torchattacks {theirs:.3f} images/s, ratio "
            f"{ours / theirs:.3f}; torchattacks fed channels-last {like:.3f} images/s, ratio {ours / like:.3f}; "
            f"max difference {same:.1e} from the channels-last side, {contiguous:.1e} from the other",
            flush=True,
        )
        rows.append(
            {
                "figure": f"PGD L∞ 10 steps images/s (batch {batch})",
                "convlens": ours,
                "reference": theirs,
                "ratio": ours / theirs,
                "unit": "images/s",
            }
        )
        rows.append(
            {
                "figure": f"PGD L∞ 10 steps images/s (batch {batch}, torchattacks fed channels-last)",
                "convlens": ours,
                "reference": like,
                "ratio": ours / like,
                "unit": "images/s",
            }
        )
        details[f"batch {batch}"] = {
            "seconds": seconds,
            "max_difference_channels_last": same,
            "max_difference_contiguous": contiguous,
        }
    write_summary(args.json, rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
