"""Built-in topic "Basics": what the model predicts, and the sample photos scikit-image ships."""

from __future__ import annotations

from convlens import hookimpl
from convlens.images import SampleImage
from convlens.methods import Method

from .predict import PREDICT
from .samples import sample_images


@hookimpl
def register_methods() -> list[Method]:
    return [PREDICT]


@hookimpl
def register_sample_images() -> list[SampleImage]:
    return sample_images()
