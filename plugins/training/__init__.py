"""Built-in topic "Networks trained live": demonstrations that train their own network inside the job and stream
its learning (Roadmap §5)."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .bagnet import BAGNET, BAGNET_CORRELATION
from .deep_image_prior import DEEP_IMAGE_PRIOR, DEEP_IMAGE_PRIOR_CURVES
from .digits import DIGITS
from .shortcut import SHORTCUT
from .universal import UNIVERSAL_APPROXIMATION


@hookimpl
def register_methods() -> list[Method]:
    return [
        BAGNET,
        BAGNET_CORRELATION,
        DEEP_IMAGE_PRIOR,
        DEEP_IMAGE_PRIOR_CURVES,
        DIGITS,
        SHORTCUT,
        UNIVERSAL_APPROXIMATION,
    ]
