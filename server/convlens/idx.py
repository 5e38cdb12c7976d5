"""IDX files, the format MNIST ships in (LeCun, Cortes, Burges, "The MNIST database of handwritten digits").

A file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), each dimension as a
big-endian uint32, then the values row-major. MNIST's are unsigned bytes: images ``0x00000803`` (count, rows,
columns) and labels ``0x00000801`` (count). Only unsigned bytes are read; a file ending in ``.gz`` is gunzipped
first. Anything else (another magic, fewer bytes than the dimensions promise, a bad gzip stream, dimensions too
large) is :class:`~convlens.errors.BadInput` naming the caller's field and the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import BadInput

UNSIGNED_BYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
MAX_SIDE = 512
"""The largest image side read: MNIST's is 28."""
MAX_COUNT = 1_000_000
"""The most items one file may hold: MNIST's training set has 60,000."""
MAX_BYTES = 256 * 1024 * 1024
"""The most bytes one file may hold once unzipped: MNIST's training images are 47 MB."""


def read_idx(path: Path, field: str, dims: int) -> np.ndarray:
    """The unsigned-byte array of dimension ``dims`` (3: images, 1: labels) in the IDX file ``path``."""
    data = _file_bytes(path, field)
    if len(data) < 4 + 4 * dims:
        raise BadInput(field, f"{path.name}: {len(data)} bytes, too short for an IDX header")
    zeros, kind, count = struct.unpack(">HBB", data[:4])
    magic = 0x800 + dims
    if zeros != 0 or kind != UNSIGNED_BYTE or count != dims:
        found = struct.unpack(">I", data[:4])[0]
        raise BadInput(field, f"{path.name}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    if shape[0] > MAX_COUNT or any(side > MAX_SIDE for side in shape[1:]):
        raise BadInput(
            field,
            f"{path.name}: dimensions {list(shape)} too large (at most {MAX_COUNT} items of {MAX_SIDE} px)",
        )
    if any(side == 0 for side in shape):
        raise BadInput(field, f"{path.name}: dimensions {list(shape)} hold nothing")
    expected = int(np.prod(shape))
    body = data[4 + 4 * dims :]
    if len(body) != expected:
        raise BadInput(
            field,
            f"{path.name}: the dimensions {list(shape)} need {expected} bytes of values, found {len(body)}",
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _file_bytes(path: Path, field: str) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``; at most :data:`MAX_BYTES` either way."""
    try:
        if path.suffix != ".gz":
            with path.open("rb") as stream:
                data = stream.read(MAX_BYTES + 1)
        else:
            with gzip.open(
                path, "rb"
            ) as stream:  # read in bounded chunks: a small gzip can unzip to gigabytes
                data = stream.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise BadInput(field, f"{path.name}: cannot be read ({type(error).__name__}: {error})") from None
    if len(data) > MAX_BYTES:
        raise BadInput(field, f"{path.name}: more than {MAX_BYTES} bytes")
    return data
