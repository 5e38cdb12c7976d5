"""A photo whose EXIF orientation says how to turn it (every phone photo held sideways) is read upright, as an
image viewer shows it: an upload, and a picture file given to the CLI.

The oracle is the EXIF specification: the file stores the upright picture turned the other way (numpy's rot90
and flips), with the tag that tells a viewer how to turn it back.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convlens.image_library import ImageLibrary

ORIENTATION_TAG = 0x0112


def upright_picture() -> np.ndarray:
    """48x80, no symmetry: red left half, green top right, blue bottom right, a white block in the top left."""
    picture = np.zeros((48, 80, 3), np.uint8)
    picture[:, :40] = (200, 30, 30)
    picture[:24, 40:] = (30, 200, 30)
    picture[24:, 40:] = (30, 30, 200)
    picture[:16, :16] = 255
    return picture


# EXIF orientation → how the file stores the upright picture (the inverse of what a viewer does to show it).
STORED = {
    2: lambda upright: upright[:, ::-1],  # the viewer mirrors it left to right
    3: lambda upright: np.rot90(upright, 2),  # ... turns it 180°
    6: lambda upright: np.rot90(upright, 1),  # ... turns it 90° clockwise
    8: lambda upright: np.rot90(upright, -1),  # ... turns it 90° anticlockwise
}


def phone_jpeg(orientation: int) -> bytes:
    stored = np.ascontiguousarray(STORED[orientation](upright_picture()))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def assert_upright(pixels: np.ndarray) -> None:
    upright = upright_picture()
    assert pixels.shape == upright.shape
    # JPEG changes values a little, mostly at the edges between colours; a wrong turn changes most pixels a lot.
    assert np.abs(pixels.astype(int) - upright).mean() < 6


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_an_uploaded_phone_photo_is_upright(orientation, client):
    answer = client.post("/api/images", data={"file": (io.BytesIO(phone_jpeg(orientation)), "phone.jpg")})
    assert answer.status_code == 201, answer.get_json()
    upload = answer.get_json()
    assert (upload["height"], upload["width"]) == upright_picture().shape[:2]
    png = client.get(f"/api/images/{upload['id']}")
    assert png.status_code == 200
    assert_upright(np.asarray(Image.open(io.BytesIO(png.data)).convert("RGB")))


@pytest.mark.parametrize("orientation", [3, 6])
def test_a_phone_photo_given_as_a_file_is_upright(orientation, tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(phone_jpeg(orientation))
    name, pixels = ImageLibrary([]).resolve(str(path))
    assert name == "phone.jpg"
    assert_upright(pixels)
