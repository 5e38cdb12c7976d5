"""Fooling images by gradient ascent: from noise to a picture the model gives 99.6 % to a class.

Nguyen, Yosinski & Clune 2015 (arXiv:1412.1897), the gradient-ascent fooling images (figure 13): following the
gradient of a class's softmax probability w.r.t. the pixels, as Simonyan et al. 2014 (arXiv:1312.6034) do for
class models, gives unrecognisable pictures the model is sure of, as evolution does. One picture per target, each starting from
seeded noise N(0.5, 0.25²) clipped to [0, 1], climbs the log-probability of its class until it reaches
``confidence`` (then stays as it is) or ``max_steps`` steps are made. Optional regularisers of Yosinski et al.,
"Understanding Neural Networks Through Deep Visualization", 2015 (arXiv:1506.06579), section 3 (L2 decay toward
grey, Gaussian blur) make the picture smoother; off by default, so it stays unrecognisable.

Differences from the papers: each step moves the picture by the gradient divided by its mean absolute value,
times ``step`` grey levels (so ``step`` is the mean change of a pixel), then clips to [0, 1]; the paper does not
say how it steps. The log-probability (not the probability, whose gradient vanishes where it is near 0 or 1) is
climbed; its maximum is the same. The decay pulls toward grey 0.5 (the [0, 1] picture's middle), not toward 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.events import Event, Log, Progress
from convlens.methods import Method, RunContext
from convlens.params import Float, Int

from .evolution import Champion
from .fooling import (
    CONFIDENCE,
    NEAR_SURE,
    REFERENCE,
    TARGETS,
    check_logits,
    panel_names,
    parse_targets,
    result,
    stream,
)
from .noise import gaussian_noise

PIXEL = 1.0 / 255.0
GUARD = 1e-12
"""Added to the gradient's mean absolute value before dividing by it: a zero gradient takes no step."""


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Nx3xHxW ``images`` blurred by a Gaussian of ``sigma`` px, cut at 3 σ each side and rounded as SciPy's
    ``gaussian_filter`` cuts it, the edge pixels repeated beyond the border."""
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    across = F.conv2d(padded, kernel.view(3, 1, 1, -1), groups=3)
    return F.conv2d(across, kernel.view(3, 1, -1, 1), groups=3)


def ascent_step(
    pictures: torch.Tensor, gradient: torch.Tensor, step: float, decay: float, blur: float
) -> torch.Tensor:
    """``pictures`` moved ``step`` along the normalised ``gradient``, clipped to [0, 1], then decayed toward grey
    by the fraction ``decay`` and blurred by ``blur`` px (each where it is not 0)."""
    scale = gradient.abs().mean(dim=(1, 2, 3), keepdim=True) + GUARD
    moved = (pictures + step * gradient / scale).clamp(0, 1)
    if decay:
        moved = 0.5 + (1 - decay) * (moved - 0.5)
    if blur:
        moved = gaussian_blur(moved, blur)
    return moved


def run_gradient(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    targets = parse_targets(params["targets"], model)
    names = panel_names(model, targets)
    bar, max_steps = params["confidence"], params["max_steps"]
    champions = [Champion(target) for target in targets]
    steps_to: list[dict[float, int | None]] = [dict.fromkeys((NEAR_SURE, bar)) for _ in targets]
    pictures = torch.from_numpy(gaussian_noise(ctx.rng, len(targets), model.input_size))
    rows = torch.arange(len(targets))
    chosen = torch.tensor(targets)
    for index in range(max_steps + 1):
        climbing = pictures.clone().requires_grad_(True)
        logits = model.forward(climbing).logits
        check_logits(model, logits.detach().numpy(), f"step {index}")
        log_probabilities = torch.log_softmax(logits.double(), dim=1)
        every_class = log_probabilities.detach().numpy()
        for row, (champion, name) in enumerate(zip(champions, names, strict=True)):
            champion.image = pictures[row].numpy()
            champion.log_probabilities = every_class[row]
            for level, reached in steps_to[row].items():
                if reached is None and champion.confidence >= level:
                    steps_to[row][level] = index
                    yield Log(f"{name}: {level:.1%} at step {index}")
        yield from stream(model, names, champions, index, {})
        yield Progress(index, max_steps)
        climbing_rows = torch.tensor([champion.confidence < bar for champion in champions])
        if index == max_steps or not climbing_rows.any():
            break
        (gradient,) = torch.autograd.grad(log_probabilities[rows, chosen].sum(), climbing)
        moved = ascent_step(
            pictures, gradient.float(), params["step"] * PIXEL, params["decay"], params["blur"]
        )
        pictures = torch.where(climbing_rows.view(-1, 1, 1, 1), moved, pictures).detach()
    counts: list[dict[str, Any]] = [
        {"steps_to_99": reached[NEAR_SURE], "steps_to_confidence": reached[bar]} for reached in steps_to
    ]
    yield result(
        model,
        names,
        champions,
        {
            "confidence": bar,
            "reached": all(champion.confidence >= bar for champion in champions),
            "steps": index,
            "start": "noise N(0.5, 0.25²) clipped to [0, 1]",
        },
        counts,
    )


FOOLING_GRADIENT = Method(
    name="fooling_gradient",
    title="Fooling images by gradient ascent",
    topic="How easily it is fooled",
    run=run_gradient,
    params=(
        TARGETS,
        CONFIDENCE,
        Int("max_steps", 200, minimum=1, maximum=5000, title="Most steps", help="Gradient steps at most."),
        Float(
            "step",
            1.0,
            minimum=0.01,
            maximum=64.0,
            title="Step (/255)",
            help="Mean change of a pixel per step, in grey levels of the [0, 1] picture.",
        ),
        Float(
            "decay",
            0.0,
            minimum=0.0,
            maximum=0.5,
            title="L2 decay",
            help="Fraction of each pixel's distance to grey removed after each step (0: off).",
        ),
        Float(
            "blur",
            0.0,
            minimum=0.0,
            maximum=10.0,
            title="Blur (px)",
            help="Sigma of a Gaussian blur after each step (0: off).",
        ),
    ),
    needs=frozenset({"gradients"}),
    description="Pictures the model gives 99.6 % to each target class, by climbing the class's log-probability "
    "from noise with the gradient w.r.t. the pixels (Nguyen et al. 2015, fig. 13); optional L2 decay and blur.",
    reference=REFERENCE,
)
