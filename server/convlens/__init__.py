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
