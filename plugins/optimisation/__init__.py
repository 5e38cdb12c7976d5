"""Built-in topic "What a unit wants to see": optimising the image itself."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .class_model import CLASS_MODEL
from .deepdream import DEEPDREAM


@hookimpl
def register_methods() -> list[Method]:
    return [CLASS_MODEL, DEEPDREAM]
