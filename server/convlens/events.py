"""What a running method yields: frames, progress, metrics, log lines and its result.

A method's ``run`` is a generator of these events. The server turns each into a
Socket.IO message for the job's room; the CLI writes frames and the result to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """An image to show now: ``image`` is HxWx3 (or HxW) uint8, or float in [0, 1]."""

    image: np.ndarray
    step: int | None = None
    label: str = "main"


@dataclass
class Progress:
    """``step`` of ``total`` steps are done."""

    step: int
    total: int


@dataclass
class Metrics:
    """Named numbers at a step, drawn as live charts (loss, class score, ...)."""

    values: dict[str, float]
    step: int | None = None


@dataclass
class Log:
    """A line of text for the job's log."""

    message: str
    level: str = "info"


@dataclass
class Result:
    """The method's final output: named images, raw arrays (saved as ``.npy``) and JSON-serialisable data."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


Event = Frame | Progress | Metrics | Log | Result


def to_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from a uint8 array or a float array in [0, 1] (HxW becomes grey RGB)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])
