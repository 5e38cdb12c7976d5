"""Pictures sent as JSON arrays of numbers (a digit drawn on a page), checked before numpy sees them.

``numpy.asarray`` would turn the string ``"1"`` into 1.0, overflow on an integer of 400 digits and walk a ragged
or deeply nested list; every value is checked here first, so each of those is a 400 naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import BadInput

MAX_SIDE = 512
"""The largest height or width a picture sent as numbers may have."""


def pixels_from_json(value: Any, field: str, size: tuple[int, int] | None) -> np.ndarray:
    """``value``, an H×W (grey) or H×W×3 (RGB) array of numbers in [0, 1], as HxWx3 float32; ``size`` (height,
    width), when given, is the shape it must have. ``BadInput`` naming ``field`` says what is wrong."""
    if not isinstance(value, list) or not value:
        raise BadInput(field, f"expected an H×W array of numbers in [0, 1], got {type(value).__name__}")
    height = len(value)
    first = value[0]
    if not isinstance(first, list) or not first:
        raise BadInput(field, "expected an H×W array: a list of rows, each a list of numbers")
    width = len(first)
    if height > MAX_SIDE or width > MAX_SIDE:
        raise BadInput(field, f"{height}×{width} is larger than {MAX_SIDE}×{MAX_SIDE}")
    if size is not None and (height, width) != tuple(size):
        raise BadInput(field, f"the model takes {size[0]}×{size[1]} pictures, got {height}×{width}")
    channels = len(first[0]) if isinstance(first[0], list) else None
    if channels not in (None, 3):
        raise BadInput(field, f"a pixel is a number (grey) or 3 numbers (RGB), got {channels} numbers")
    for row_index, row in enumerate(value):
        if not isinstance(row, list) or len(row) != width:
            raise BadInput(field, f"row {row_index} is not a list of {width} values like row 0")
        for column, cell in enumerate(row):
            where = f"[{row_index}][{column}]"
            if channels is None:
                _check_number(cell, field, where)
            elif not isinstance(cell, list) or len(cell) != channels:
                raise BadInput(field, f"{where} is not a list of {channels} numbers like [0][0]")
            else:
                for channel, number in enumerate(cell):
                    _check_number(number, field, f"{where}[{channel}]")
    array = np.asarray(value, dtype=np.float32)
    return np.repeat(array[..., None], 3, axis=2) if channels is None else array


def _check_number(value: Any, field: str, where: str) -> None:
    # Compared as Python numbers: an integer of any length compares without overflowing, NaN compares False.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = type(value).__name__ if isinstance(value, (list, dict)) else repr(value)[:40]
        raise BadInput(field, f"{where} is not a number: {shown}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(field, f"{where} is {value}; values are finite numbers in [0, 1]")
    if not 0 <= value <= 1:
        # str() of an integer of over 4,300 digits is a ValueError: an integer is not printed.
        shown = f"{value:.6g}" if isinstance(value, float) else "an integer"
        raise BadInput(field, f"{where} is {shown}, outside [0, 1]")
