"""Frames encoded once per format and shared by every viewer of a job."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import BadInput

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def encode_image(pixels: np.ndarray, fmt: str = "png", quality: int = 85) -> bytes:
    """HxWx3 uint8 pixels as JPEG, PNG or WebP bytes."""
    if fmt not in MIME:
        raise BadInput("format", f"unknown image format {fmt!r}; expected one of {sorted(MIME)}")
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class EncodedFrame:
    """One frame of a job: its pixels and, made on first request, their encodings."""

    seq: int
    step: int | None
    label: str
    pixels: np.ndarray
    quality: int = 85
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def data(self, fmt: str = "jpeg") -> bytes:
        with self._lock:
            if fmt not in self._encoded:
                self._encoded[fmt] = encode_image(self.pixels, fmt, self.quality)
            return self._encoded[fmt]

    def message(self, job_id: str, fmt: str = "jpeg") -> dict:
        return {
            "job": job_id,
            "seq": self.seq,
            "step": self.step,
            "label": self.label,
            "mime": MIME[fmt],
            "width": self.width,
            "height": self.height,
            "data": self.data(fmt),
        }
