"""Built-in topic "Basics": what the model predicts, the sample photos scikit-image ships, and data sets made
from data scikit-image and scikit-learn ship."""

from __future__ import annotations

from convlens import hookimpl
from convlens.datasets import Dataset
from convlens.images import SampleImage
from convlens.methods import Method

from .datasets import builtin_datasets
from .predict import PREDICT
from .samples import sample_images


@hookimpl
def register_methods() -> list[Method]:
    return [PREDICT]


@hookimpl
def register_sample_images() -> list[SampleImage]:
    return sample_images()


@hookimpl
def register_datasets() -> list[Dataset]:
    return builtin_datasets()
