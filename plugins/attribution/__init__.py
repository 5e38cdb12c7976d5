"""Built-in topic "Which pixels matter": attribution maps over the input image."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .gradcam import GRADCAM
from .gradients import GRADIENT_METHODS
from .occlusion import OCCLUSION
from .saliency import SALIENCY


@hookimpl
def register_methods() -> list[Method]:
    return [OCCLUSION, SALIENCY, *GRADIENT_METHODS, GRADCAM]
