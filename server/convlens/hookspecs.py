"""Every hook a convlens plugin can implement.

A plugin is a module (or object) registered under the ``convlens`` entry-point
group whose functions are marked with ``@convlens.hookimpl`` and named like the
specifications below. Built-in topics register the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:
    from .datasets import Dataset
    from .images import SampleImage
    from .methods import Method

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_methods() -> list[Method]:
    """Return the analysis methods this plugin offers.

    Each is a :class:`convlens.methods.Method`: a name unique across plugins, a
    title and topic for the UI, its parameters as :class:`convlens.params.Param`
    declarations, what it needs of a model, and a ``run(ctx)`` generator of events.
    """


@hookspec
def register_sample_images() -> list[SampleImage]:
    """Return sample images to offer in the image picker.

    Each is a :class:`convlens.images.SampleImage`: an id, a title and a ``load()``
    returning HxWx3 uint8 pixels.
    """


@hookspec
def register_datasets() -> list[Dataset]:
    """Return data sets to offer to methods that take one (a ``dataset`` parameter).

    Each is a :class:`convlens.datasets.Dataset`: an id, a title, its items (key and label) in a stable order,
    ``load(index)`` returning HxWx3 uint8 pixels, and a fingerprint that changes with its content.
    """
