"""convlens: see inside image CNNs.

Plugin authors need only this module: ``from convlens import hookimpl`` and the
declarations in :mod:`convlens.methods`, :mod:`convlens.params` and :mod:`convlens.events`.
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "convlens"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function in a plugin module as the implementation of a convlens hook."""

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]


def __getattr__(name: str):
    """``convlens.show``, ``convlens.compare`` and ``convlens.notebook``, imported on first use: a plugin's
    ``import convlens`` stays cheap and needs no anywidget."""
    if name in ("show", "compare", "notebook"):
        import importlib

        notebook = importlib.import_module(".notebook", __name__)
        return notebook if name == "notebook" else getattr(notebook, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
