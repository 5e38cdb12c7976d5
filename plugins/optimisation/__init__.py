"""Built-in topic "What a unit wants to see": optimising the image itself."""

from __future__ import annotations

from convlens import hookimpl
from convlens.images import SampleImage
from convlens.methods import Method

from .activation_max import ACTIVATION_MAX
from .class_model import CLASS_MODEL
from .deepdream import DEEPDREAM
from .feature_vis import FEATURE_VIS
from .inversion import INVERSION, INVERSION_LADDER
from .style_transfer import STYLE_TRANSFER, style_samples


@hookimpl
def register_methods() -> list[Method]:
    return [
        CLASS_MODEL,
        ACTIVATION_MAX,
        FEATURE_VIS,
        INVERSION,
        INVERSION_LADDER,
        DEEPDREAM,
        STYLE_TRANSFER,
    ]


# Last, so the photos of the basics plugin lead the picker and the page's default image stays a photo.
@hookimpl(trylast=True)
def register_sample_images() -> list[SampleImage]:
    return style_samples()
