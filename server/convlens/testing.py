"""Pytest fixtures for convlens plugin authors, loaded through the ``pytest11`` entry point.

A plugin's test in three lines::

    def test_my_method(convlens_run, tiny_model, sample_image):
        events = convlens_run("my_method", tiny_model, sample_image, steps=3)
        assert isinstance(events[-1], Result)

``convlens_run`` validates the parameters and seeds the generators exactly as the server does
(:mod:`convlens.runner`), then collects every event. ``tiny_model`` is a small random conv net
(64x64 input, 10 classes) so tests take seconds on a CPU. :func:`of_type` picks the events of one
kind and :func:`metric` one metric's values over the steps. Importing this module does not import
torch; the fixtures do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import numpy as np

    from .events import Event
    from .methods import Method
    from .models.base import Model
    from .models.module import ModuleModel

E = TypeVar("E")

TINY_INPUT_SIZE = (64, 64)
TINY_CLASSES = 10


CHROMIUM_NAMES = ("chromium", "chromium-browser")
"""The commands looked for on the ``PATH``: Debian's and Ubuntu's names for Chromium."""


def find_chromium() -> str | None:
    """The Chromium the browser tests and the browser bench drive (Playwright cannot download its own), or ``None``.

    ``CONVLENS_CHROMIUM`` names it; otherwise it is the first of :data:`CHROMIUM_NAMES` on the ``PATH``, as
    ``make browser`` looks for it before installing Debian's.
    """
    named = os.environ.get("CONVLENS_CHROMIUM")
    if named:
        return shutil.which(named)
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
)
"""How it is launched: headless, without a sandbox, GPU or background network traffic."""


def make_tiny_model(seed: int = 0, dynamic_size: bool = True) -> ModuleModel:
    """A random 3-conv + linear classifier as a :class:`ModuleModel` (``tiny``), the same for the same ``seed``.

    Layers: ``conv1``, ``relu1``, ``conv2``, ``relu2``, ``conv3``, ``relu3``, ``pool``, ``flatten``, ``fc``.
    ``dynamic_size`` sets ``card.extra["dynamic_size"]``: whether it takes inputs of any size
    (it can, thanks to its global pooling; ``False`` lets a test take the fixed-size path).
    """
    from collections import OrderedDict

    import torch
    from torch import nn

    from .models.base import ModelCard
    from .models.module import ModuleModel

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        module = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(8, 16, 3, stride=2, padding=1),
                relu2=nn.ReLU(),
                conv3=nn.Conv2d(16, 32, 3, stride=2, padding=1),
                relu3=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(32, TINY_CLASSES),
            )
        )
    finally:
        torch.random.set_rng_state(generator_state)
    card = ModelCard(
        title="Tiny random conv net",
        input_size=TINY_INPUT_SIZE,
        labels=[f"class {i}" for i in range(TINY_CLASSES)],
        extra={"dynamic_size": dynamic_size},
    )
    return ModuleModel("tiny", module, card)


def find_method(name: str) -> Method:
    """The method called ``name`` among the installed plugins."""
    from .plugins import get_methods

    return get_methods().get(name)


def run_method(
    method: str | Method, model: Model, image: np.ndarray, /, *, seed: int = 0, **params: Any
) -> list[Event]:
    """Every event of ``method`` run on ``model`` and ``image`` with ``params``, as the server runs it.

    ``method`` is a method name (looked up among the installed plugins) or a :class:`Method`.
    Parameters are validated against the model first, so a bad one raises ``BadInput``.
    """
    from .runner import iterate, prepare_run

    if isinstance(method, str):
        method = find_method(method)
    ctx = prepare_run(method, model, image, params, seed=seed)
    return list(iterate(method, ctx))


def of_type(events: Iterable[object], kind: type[E]) -> list[E]:
    """The events of ``kind`` (``Frame``, ``Metrics``, ...), in order."""
    return [event for event in events if isinstance(event, kind)]


def metric(events: Iterable[Event], name: str) -> list[float]:
    """The value of the metric ``name`` at each ``Metrics`` event, in order."""
    from .events import Metrics

    return [metrics.values[name] for metrics in of_type(events, Metrics)]


@pytest.fixture
def convlens_run():
    """:func:`run_method`: ``convlens_run("name", model, image, seed=0, **params) -> list[Event]``."""
    return run_method


@pytest.fixture
def tiny_model():
    """A fresh :func:`make_tiny_model` (seed 0, any input size)."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def sample_image():
    """scikit-image's ``chelsea`` (a cat), 300x451x3 uint8."""
    from skimage import data

    image = data.chelsea()
    image.setflags(write=False)
    return image
