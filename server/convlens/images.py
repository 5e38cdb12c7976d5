"""Images: the samples plugins offer, uploads checked before they are trusted, and tensors for models."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput, TooLarge
from .events import to_uint8

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
"""Larger images are refused: a decompression bomb is a small file that expands to huge pixels."""


@dataclass(frozen=True)
class SampleImage:
    """A picture offered in the image picker; ``load`` returns HxWx3 uint8."""

    id: str
    title: str
    load: Callable[[], np.ndarray]
    source: str = ""


def skimage_samples(titles: Mapping[str, str]) -> list[SampleImage]:
    """Pictures bundled in the scikit-image wheel, by ``skimage.data`` function name (the id) and title.

    Each loads as HxWx3 uint8: grey and binary ones repeated to RGB. None needs a download.
    """

    def loader(name: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            from skimage import data

            pixels = np.asarray(getattr(data, name)())
            if pixels.dtype == bool:
                pixels = pixels.astype(np.uint8) * 255
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            return np.ascontiguousarray(pixels[:, :, :3])

        return load

    return [
        SampleImage(id=name, title=title, load=loader(name), source="scikit-image")
        for name, title in titles.items()
    ]


def decode_image(
    data: bytes, field: str = "file", max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """HxWx3 uint8 from encoded bytes, or ``BadInput`` naming ``field``: empty, too big, not an image, truncated, a bomb.

    The pixels stand as a viewer shows them: a photo's EXIF orientation (a phone's, held sideways) is applied.
    """
    if not data:
        raise BadInput(field, "the file is empty")
    if len(data) > max_bytes:
        raise TooLarge(field, f"the file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise TooLarge(
                        field, f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels"
                    )
                probe.load()
                image = ImageOps.exif_transpose(probe).convert("RGB")
    except BadInput:  # the pixel cap's TooLarge, a ValueError that the last clause would call corrupt
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        if isinstance(error, UnidentifiedImageError):
            raise BadInput(field, "not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, TIFF ...)") from None
        raise TooLarge(field, f"decompression bomb refused: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadInput(field, f"the image is truncated or corrupt: {error}") from None
    return np.asarray(image, dtype=np.uint8)


def read_image_file(path: str | Path, field: str = "image") -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise BadInput(field, f"no such file: {path}")
    return decode_image(path.read_bytes(), field=field, max_bytes=max(MAX_UPLOAD_BYTES, path.stat().st_size))


def to_float(image: np.ndarray) -> np.ndarray:
    """HxWx3 float32 in [0, 1] from uint8 or float pixels."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 float32 in [0, 1] resized to ``size`` = (height, width) with antialiasing."""
    height, width = size
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return to_float(image)
    # uint8 goes to PIL as it is: through float and back gives the same bytes, at two passes' cost (a third
    # of a feature-store image's decode-and-resize time).
    pixels = image if image.dtype == np.uint8 else (to_float(image) * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(pixels)
    return np.asarray(pil.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0


def to_tensor(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """1x3xHxW float32 tensor in [0, 1], resized to ``size`` when given."""
    array = resize(image, size) if size else to_float(image)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """HxWx3 float32 in [0, 1] from a 1x3xHxW or 3xHxW tensor."""
    array = tensor.detach().float().cpu().numpy()
    if array.ndim == 4:
        array = array[0]
    return np.clip(np.ascontiguousarray(array.transpose(1, 2, 0)), 0.0, 1.0)


def to_pixels(tensor: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 from a 1x3xHxW or 3xHxW tensor in [0, 1] (NaN as 0): what a streamed frame shows.

    The same pixels as ``events.to_uint8(to_image(tensor))``, made by torch on the run's threads: between two
    steps of a run numpy's single-threaded passes took 0.18 ms at 128 px, several times their time on their
    own. The float values are rounded straight into the HxWx3 layout (one pass; rounding to CxHxW uint8
    first and then interleaving took 0.37 ms at 448x298, this 0.23). Only on the run's own thread: see
    :func:`to_pixels_in_numpy`.
    """
    values = tensor.detach()
    if values.ndim == 4:
        values = values[0]
    values = torch.nan_to_num(values.float(), nan=0.0).mul_(255.0).add_(0.5).clamp_(0.0, 255.0)
    pixels = torch.empty(values.shape[1], values.shape[2], values.shape[0], dtype=torch.uint8)
    return pixels.copy_(values.permute(1, 2, 0)).numpy()


def to_pixels_in_numpy(tensor: torch.Tensor) -> np.ndarray:
    """:func:`to_pixels` made without a torch op, for a thread other than the run's.

    A torch op of more than a few thousand values in a new thread starts an OpenMP team for that thread, and
    once a process has more OpenMP threads than cores libgomp stops spinning between ops: a style transfer
    whose frames a socket's thread made into pixels with torch ran at 37% of its speed.
    """
    array = tensor.detach().numpy()
    if array.ndim == 4:
        array = array[0]
    return to_uint8(np.moveaxis(array.astype(np.float32, copy=False), 0, -1))
