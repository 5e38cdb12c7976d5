"""Guided Grad-CAM: guided backpropagation's fine detail, kept where Grad-CAM finds the class.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017
(arXiv:1610.02391), section 3.1: the guided-backpropagation map of the class score (Springenberg et al. 2015)
multiplied pixel by pixel with the Grad-CAM map upsampled to the input, so the result is both high-resolution
and class-discriminative.

Differences from the paper: Grad-CAM is upsampled bilinearly, as the Grad-CAM method here shows it (Captum's
``GuidedGradCam`` defaults to nearest-neighbour); the product is kept per colour channel in the arrays, and the
shown map is its largest absolute value over channels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from convlens.events import Event, Frame, Progress, Result
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.params import Layer

from .backprop_rules import Unit, reconstruction, unit_gradient
from .gradcam import gradcam, spatial_layer, upsampled
from .gradients import attribution_views
from .saliency import OVERLAY, TARGET

REFERENCE = (
    "Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra 2017, Grad-CAM: Visual Explanations from Deep "
    "Networks via Gradient-based Localization, ICCV, arXiv:1610.02391"
)


def run_guided_gradcam(ctx: RunContext) -> Iterator[Event]:
    model = ctx.model
    layer = spatial_layer(model, ctx.params["layer"]).name
    image = ctx.model_input()
    cam, target = gradcam(model, image, layer, ctx.params["target"])
    yield Progress(1, 2)
    guided, score, rectifiers = unit_gradient(model, image, Unit(None, target), "guided")
    attributions = (guided * upsampled(cam, image))[0].float().numpy()
    images, scales = attribution_views(image, attributions, ctx.params["overlay"], "guided_gradcam")
    images["reconstruction"] = reconstruction(attributions)
    yield Frame(images["reconstruction"], label="reconstruction")
    yield Progress(2, 2)
    yield Result(
        images=images,
        arrays={"attributions": attributions, "attribution": np.abs(attributions).max(axis=0)},
        data={
            "target": target,
            "label": model.label(target),
            "score": score,
            "layer": layer,
            "rectifiers": rectifiers,
            **scales,
        },
    )


GUIDED_GRADCAM = Method(
    name="guided_gradcam",
    title="Guided Grad-CAM",
    topic="Which pixels matter",
    run=run_guided_gradcam,
    params=(
        TARGET,
        Layer(
            "layer", title="Layer", help="The Grad-CAM layer, a convolutional (CxHxW) one; empty: the last."
        ),
        OVERLAY,
    ),
    needs=frozenset({"gradients", "layers", "relu_rules"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="Guided backpropagation of the class score multiplied pixel by pixel with the upsampled "
    "Grad-CAM map: fine detail, only where the layer found the class.",
    reference=REFERENCE,
)
