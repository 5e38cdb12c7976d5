"""Frames encoded once per format and shared by every viewer of a job."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import BadInput
from .events import pixels_of
from .images import to_pixels_in_numpy

if TYPE_CHECKING:
    import torch

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
    """One frame of a job: its image and, made on first request, its pixels and their encodings.

    ``image`` is what :func:`events.held` keeps of a frame's image: uint8 pixels, or a tensor made into
    pixels only if the frame is shown (most of a fast run's frames never are): by torch on the thread that
    made the frame (the job's), in numpy on any other (a socket's, a request's), which must not start torch
    threads of its own (see :func:`images.to_pixels_in_numpy`).
    """

    seq: int
    step: int | None
    label: str
    image: np.ndarray | torch.Tensor
    quality: int = 85
    _pixels: np.ndarray | None = field(default=None, repr=False)
    _maker: int = field(default_factory=threading.get_ident, repr=False)
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def width(self) -> int:
        return int(self.image.shape[1] if isinstance(self.image, np.ndarray) else self.image.shape[-1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0] if isinstance(self.image, np.ndarray) else self.image.shape[-2])

    @property
    def pixels(self) -> np.ndarray:
        with self._lock:
            return self._made_pixels()

    def data(self, fmt: str = "jpeg") -> bytes:
        with self._lock:
            if fmt not in self._encoded:
                self._encoded[fmt] = encode_image(self._made_pixels(), fmt, self.quality)
            return self._encoded[fmt]

    def _made_pixels(self) -> np.ndarray:
        if self._pixels is None:
            off_the_job = threading.get_ident() != self._maker and hasattr(self.image, "detach")
            self._pixels = to_pixels_in_numpy(self.image) if off_the_job else pixels_of(self.image)
        return self._pixels

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
