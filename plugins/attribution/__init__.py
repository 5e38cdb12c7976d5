"""Built-in topic "Which pixels matter": attribution maps over the input image."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .backprop_rules import BACKPROP_RULE_METHODS
from .context import CONTEXT
from .grabcut import GRABCUT
from .gradcam import GRADCAM
from .gradients import GRADIENT_METHODS
from .guided_gradcam import GUIDED_GRADCAM
from .occlusion import OCCLUSION
from .saliency import SALIENCY


@hookimpl
def register_methods() -> list[Method]:
    return [
        OCCLUSION,
        SALIENCY,
        *GRADIENT_METHODS,
        *BACKPROP_RULE_METHODS,
        GRADCAM,
        GUIDED_GRADCAM,
        GRABCUT,
        CONTEXT,
    ]
