"""Grad-CAM: where in the image a convolutional layer found evidence for a class.

Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017 (arXiv:1610.02391), section 3. Each channel ``k`` of the layer's
activation ``A`` is weighted by the spatial mean of the class score's gradient w.r.t. it,
``w_k = mean_ij d y_c / d A_k[i, j]``, and the map is ``ReLU(sum_k w_k A_k)`` at the layer's resolution,
upsampled bilinearly to the input size. ``y_c`` is the logit, as in the paper and Captum's ``LayerGradCam``.

Differences from the paper: ``relu=False`` keeps the negative evidence in the arrays (Captum's
``relu_attributions=False``); the shown map is divided by its maximum and clipped at 0, so negative evidence
is black there. The default layer is the last one with a spatial output (CxHxW, more than one position),
which is the paper's choice of the last convolutional layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.colormaps import overlay
from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.images import to_image
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.params import Bool, Layer

from .saliency import OVERLAY, TARGET

if TYPE_CHECKING:
    from convlens.models.base import LayerInfo, Model

REFERENCE = (
    "Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra 2017, Grad-CAM: Visual Explanations from Deep "
    "Networks via Gradient-based Localization, ICCV, arXiv:1610.02391"
)


def is_spatial(layer: LayerInfo) -> bool:
    """Whether the layer's output is a CxHxW map with more than one position (a 1x1 map gives a flat CAM)."""
    return len(layer.shape) == 3 and layer.shape[1] * layer.shape[2] > 1


def last_spatial_layer(model: Model) -> str:
    """The name of the last spatial layer in execution order: Grad-CAM's default."""
    for layer in reversed(model.layers()):
        if is_spatial(layer):
            return layer.name
    raise BadInput("params.layer", f"model {model.id!r} has no spatial (CxHxW) layer")


def gradcam(
    model: Model, image: torch.Tensor, layer: str, target: int | None, relu: bool = True
) -> tuple[torch.Tensor, int]:
    """The Grad-CAM map (1x1xhxw at the layer's resolution) of a 1x3xHxW image in [0, 1], and the target.

    A ``target`` of ``None`` is the top-scoring class, from the same forward pass.
    """
    # A loaded model's weights do not require gradients: without this the activation is outside the graph.
    forward = model.forward(image.detach().requires_grad_(True), [layer])
    activation = forward.activations[layer]
    logits = forward.logits[0]
    if target is None:
        target = int(logits.detach().argmax())
    (gradient,) = torch.autograd.grad(logits[target], activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation.detach()).sum(dim=1, keepdim=True)
    return (F.relu(cam) if relu else cam), target


def spatial_layer(model: Model, name: str | None) -> LayerInfo:
    """The layer ``name`` (default: the last spatial one), refused unless its output is a CxHxW map."""
    info = model.layer(name or last_spatial_layer(model))
    if not is_spatial(info):
        raise BadInput(
            "params.layer",
            f"{info.name!r} is not a spatial (CxHxW) layer; its output shape is {list(info.shape)}",
        )
    return info


def upsampled(cam: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A 1x1xhxw map resized bilinearly to the image's size, as Grad-CAM is shown."""
    return F.interpolate(cam, size=image.shape[2:], mode="bilinear", align_corners=False)


def run_gradcam(ctx: RunContext) -> Iterator[Event]:
    model = ctx.model
    info = spatial_layer(model, ctx.params["layer"])
    layer = info.name
    image = ctx.model_input()
    cam, target = gradcam(model, image, layer, ctx.params["target"], ctx.params["relu"])
    upsampled_cam = upsampled(cam, image)
    cam_map = cam[0, 0].float().numpy()
    upsampled_map = upsampled_cam[0, 0].float().numpy()
    scale = float(upsampled_map.max())
    normalised = np.clip(upsampled_map / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(upsampled_map)
    heatmap = overlay(to_image(image), normalised, ctx.params["overlay"])
    yield Frame(heatmap, step=0, label="gradcam")
    yield Progress(1, 1)
    yield Result(
        images={"gradcam": heatmap, "map": normalised},
        arrays={"cam": cam_map, "attribution": upsampled_map},
        data={
            "target": target,
            "label": model.label(target),
            "layer": layer,
            "layer_shape": list(info.shape),
            "scale": scale,
        },
    )


GRADCAM = Method(
    name="gradcam",
    title="Grad-CAM",
    topic="Which pixels matter",
    run=run_gradcam,
    params=(
        TARGET,
        Layer(
            "layer",
            title="Layer",
            help="A convolutional (CxHxW) layer; empty: the last one. Later layers are coarser but more "
            "class-specific.",
        ),
        Bool(
            "relu",
            True,
            title="Only positive evidence",
            help="Apply the paper's ReLU to the map; off keeps negative evidence in the saved arrays.",
        ),
        OVERLAY,
    ),
    needs=frozenset({"gradients", "layers"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="Each channel of a convolutional layer weighted by the mean gradient of the class score "
    "(logit) w.r.t. it, summed, ReLU'd and upsampled: the regions the layer found evidence for the class in.",
    reference=REFERENCE,
)
