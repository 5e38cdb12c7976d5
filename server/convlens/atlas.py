"""Sprite sheets of a data set's thumbnails, so a page draws thousands of them from a few textures.

An atlas is one PNG of up to :data:`MAX_ITEMS` items, each fitted into a ``size`` × ``size`` cell (aspect kept,
centred, the rest transparent), cells row-major in ``columns`` columns: item ``offset + i`` is in cell ``i``.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from .datasets import Dataset
from .errors import BadInput

MAX_ITEMS = 4096
"""Items in one atlas at most; 10,000 thumbnails come in three requests."""
MAX_SIDE = 4096
"""Pixels a side of an atlas at most: the smallest ``MAX_TEXTURE_SIZE`` WebGL implementations commonly have."""
CACHED = 8
"""Atlases kept in memory: a page reloading the map gets them without loading every image again."""


def columns_for(count: int) -> int:
    """Columns of an atlas of ``count`` cells: the smallest square that holds them."""
    return max(1, math.ceil(math.sqrt(count)))


def layout(dataset: Dataset, size: int, offset: int, limit: int) -> dict[str, Any]:
    """Where each item of ``dataset[offset : offset + limit]`` is in its atlas, and each one's label.

    ``BadInput`` naming ``limit`` when the atlas would be over :data:`MAX_SIDE` pixels a side.
    """
    items = dataset.items()
    chosen = items[offset : offset + limit]
    columns = columns_for(len(chosen))
    rows = max(1, math.ceil(len(chosen) / columns))
    if columns * size > MAX_SIDE:
        most = (MAX_SIDE // size) ** 2
        raise BadInput(
            "limit", f"{len(chosen)} cells of {size} px exceed {MAX_SIDE} px a side; at most {most}"
        )
    return {
        "dataset": dataset.id,
        "total": len(items),
        "offset": offset,
        "count": len(chosen),
        "size": size,
        "columns": columns,
        "rows": rows,
        "width": columns * size,
        "height": rows * size,
        "labels": [item.label for item in chosen],
    }


class AtlasCache:
    """Atlas PNGs by (data set, its fingerprint, size, offset, limit), the newest :data:`CACHED` of them."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._png: OrderedDict[tuple, bytes] = OrderedDict()

    def png(self, dataset: Dataset, size: int, offset: int, limit: int) -> tuple[bytes, dict[str, Any]]:
        """The atlas's PNG bytes and its :func:`layout`."""
        where = layout(dataset, size, offset, limit)
        key = (dataset.id, dataset.fingerprint(), size, offset, where["count"])
        with self._lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key], where
        data = draw(dataset, where, self.workers)
        with self._lock:
            self._png[key] = data
            while len(self._png) > CACHED:
                self._png.popitem(last=False)
        return data, where

    def clear(self) -> None:
        with self._lock:
            self._png.clear()


def draw(dataset: Dataset, where: dict[str, Any], workers: int = 4) -> bytes:
    """The atlas of :func:`layout` ``where`` as RGBA PNG bytes."""
    size, columns = where["size"], where["columns"]
    sheet = np.zeros((where["height"], where["width"], 4), dtype=np.uint8)

    def place(cell: int) -> None:
        thumb = Image.fromarray(dataset.load(where["offset"] + cell))
        # Fitted with the aspect kept; a box filter averages what each thumbnail pixel covers (no aliasing).
        scale = size / max(thumb.size)
        fitted = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        pixels = np.asarray(thumb.resize(fitted, Image.BOX))
        row, col = divmod(cell, columns)
        top, left = row * size + (size - fitted[1]) // 2, col * size + (size - fitted[0]) // 2
        sheet[top : top + fitted[1], left : left + fitted[0], :3] = pixels
        sheet[top : top + fitted[1], left : left + fitted[0], 3] = 255

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atlas") as pool:
        list(pool.map(place, range(where["count"])))
    buffer = io.BytesIO()
    Image.fromarray(sheet, "RGBA").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
