"""Image-specific class saliency: how much each pixel's change would change the class score.

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image Classification
Models and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034), section 3. The map is the gradient of
the unnormalised class score (the logit, not the softmax probability) w.r.t. the input pixels, reduced
to one value per pixel as the maximum over colour channels of its absolute value.

Differences from the paper: the gradient is taken w.r.t. the picture in [0, 1] as a person sees it
(the model normalises inside), on the image resized to the model's input size, not on a crop; the shown
map is divided by its 99th percentile and clipped to 1, so the brightest 1 % saturate (the paper scales by
the maximum, which leaves all but a few pixels nearly black); ``data["scale"]`` is that divisor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.colormaps import overlay
from convlens.events import Event, Frame, Progress, Result
from convlens.images import to_image
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.params import ClassIndex, Float

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Simonyan, Vedaldi, Zisserman 2014, Deep Inside Convolutional Networks: Visualising Image "
    "Classification Models and Saliency Maps, arXiv:1312.6034"
)
SATURATE_PERCENTILE = 99.0
"""The shown map is divided by this percentile of itself and clipped: a few extreme pixels would leave the rest black."""

TARGET = ClassIndex(
    "target", title="Class", help="The class whose score is explained; empty: the top prediction."
)
OVERLAY = Float(
    "overlay", 0.7, minimum=0.0, maximum=1.0, title="Overlay opacity", help="0 shows only the image."
)
"""Parameters every attribution map shares."""


def saliency_map(model: Model, image: torch.Tensor, target: int | None) -> tuple[np.ndarray, int, float]:
    """``max_c |d logit_target / d image|`` (HxW float32) for a 1x3xHxW image in [0, 1], the target and its logit.

    A ``target`` of ``None`` is the top-scoring class, from the same forward pass.
    """
    pixels = image.detach().clone().requires_grad_(True)
    logits = model.forward(pixels).logits[0]
    if target is None:
        target = int(logits.detach().argmax())
    score = logits[target]
    (gradient,) = torch.autograd.grad(score, pixels)
    return gradient.abs().amax(dim=1)[0].float().numpy(), target, float(score.detach())


def percentile_scaled(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative HxW ``values`` divided by their 99th percentile and clipped to 1, and that divisor."""
    scale = float(np.percentile(values, SATURATE_PERCENTILE))
    normalised = np.minimum(values / scale, 1.0) if scale > 0 else np.zeros_like(values)
    return normalised, scale


def heatmap_overlay(
    image: torch.Tensor, values: np.ndarray, opacity: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """``values`` (HxW, >= 0) percentile-scaled and overlaid on ``image`` (1x3xHxW): heatmap, scaled map, scale."""
    normalised, scale = percentile_scaled(values)
    return overlay(to_image(image), normalised, opacity), normalised, scale


def run_saliency(ctx: RunContext) -> Iterator[Event]:
    image = ctx.model_input()
    gradient_map, target, score = saliency_map(ctx.model, image, ctx.params["target"])
    heatmap, normalised, scale = heatmap_overlay(image, gradient_map, ctx.params["overlay"])
    yield Frame(heatmap, step=0, label="saliency")
    yield Progress(1, 1)
    yield Result(
        images={"saliency": heatmap, "map": normalised},
        arrays={"gradient_map": gradient_map, "attribution": gradient_map},
        data={
            "target": target,
            "label": ctx.model.label(target),
            "score": score,
            "max_gradient": float(gradient_map.max()),
            "scale": scale,
        },
    )


SALIENCY = Method(
    name="saliency",
    title="Saliency map",
    topic="Which pixels matter",
    run=run_saliency,
    params=(
        TARGET,
        OVERLAY,
    ),
    needs=frozenset({"gradients"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="Gradient of the class score (logit) w.r.t. the input pixels, max over colour channels of its "
    "absolute value: bright pixels are those whose change would change the score most.",
    reference=REFERENCE,
)
