"""Built-in data sets made from data that scikit-image and scikit-learn ship in their wheels; none downloads.

- ``skimage_crops``: square crops at four scales of ten of scikit-image's photographs, 300 per photograph at
  seeded positions, each resized to 64×64 and labelled by its photograph, so that a code map has clusters to find
  and top patches have variety.
- ``digits``: scikit-learn's 1,797 handwritten digits (UCI, Alpaydin & Kaynak 1998), 8×8 at 17 grey levels,
  scaled to 0–255 and enlarged 4× (nearest neighbour) to 32×32 RGB; labels ``0``–``9``.
- ``lfw_faces``: scikit-image's ``lfw_subset``, 200 grey 25×25 pictures: 100 faces from Labeled Faces in the Wild
  and 100 non-face patches (as its documentation orders them); labels ``face`` and ``non-face``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import version

import numpy as np
from PIL import Image

from convlens.datasets import Dataset, DatasetItem

CROP_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
)
CROP_FRACTIONS = (1 / 2, 1 / 3, 1 / 4, 1 / 6)
"""Crop sides as fractions of the photograph's shorter side."""
CROPS_PER_SCALE = 75
CROP_SIZE = 64
CROP_SEED = 19


def _rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


class ArrayDataset(Dataset):
    """A data set whose items are made in memory by ``make()`` → (keys, labels, ``load(index)``), on first use."""

    def __init__(
        self, id: str, title: str, source: str, version_of: str, make: Callable, recipe: str = ""
    ) -> None:
        self.id, self.title, self.source = id, title, source
        self._version_of = version_of
        self._recipe = recipe
        self._make = make
        self._lock = threading.Lock()
        self._contents: tuple[list[DatasetItem], Callable[[int], np.ndarray]] | None = None

    @property
    def _made(self) -> tuple[list[DatasetItem], Callable[[int], np.ndarray]]:
        with self._lock:  # made once, even when two jobs ask at the same time
            if self._contents is None:
                self._contents = self._make()
            return self._contents

    def items(self) -> list[DatasetItem]:
        return self._made[0]

    def load(self, index: int) -> np.ndarray:
        self._check_index(index)
        return self._made[1](index)

    def fingerprint(self) -> str:
        # The content follows from the package's data and this module's constants.
        text = f"{self.id}:{self._version_of} {version(self._version_of)}:{self._recipe}"
        return hashlib.sha256(text.encode()).hexdigest()


def crop_boxes(
    height: int, width: int, rng: np.random.Generator, per_scale: int = CROPS_PER_SCALE
) -> list[tuple[int, int, int]]:
    """(top, left, side) of each crop of a ``height``×``width`` photograph: ``per_scale`` per scale."""
    boxes = []
    for fraction in CROP_FRACTIONS:
        side = max(1, round(min(height, width) * fraction))
        tops = rng.integers(0, height - side + 1, per_scale)
        lefts = rng.integers(0, width - side + 1, per_scale)
        boxes += [(int(top), int(left), side) for top, left in zip(tops, lefts, strict=True)]
    return boxes


def photo_crops(per_scale: int = CROPS_PER_SCALE, id: str = "skimage_crops") -> ArrayDataset:
    """Seeded crops of scikit-image's photographs, ``per_scale`` at each of :data:`CROP_FRACTIONS` a photograph
    (the built-in ``skimage_crops`` has 75: 3,000 crops; the benches take more)."""
    recipe = f"{CROP_PHOTOS}{CROP_FRACTIONS}{per_scale}:{CROP_SIZE}:{CROP_SEED}"
    title = f"Crops of scikit-image's photographs ({len(CROP_PHOTOS) * len(CROP_FRACTIONS) * per_scale})"
    make = lambda: _make_crops(per_scale)  # noqa: E731
    return ArrayDataset(id, title, "scikit-image", "scikit-image", make, recipe)


def _make_crops(per_scale: int):
    from skimage import data

    rng = np.random.default_rng(CROP_SEED)
    photos = {name: _rgb(getattr(data, name)()) for name in CROP_PHOTOS}
    items, boxes = [], []
    for name, photo in photos.items():
        for top, left, side in crop_boxes(*photo.shape[:2], rng, per_scale):
            items.append(DatasetItem(f"{name}/{top}_{left}_{side}", name))
            boxes.append((name, top, left, side))

    def load(index: int) -> np.ndarray:
        name, top, left, side = boxes[index]
        crop = Image.fromarray(photos[name][top : top + side, left : left + side])
        return np.asarray(crop.resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC))

    return items, load


def _make_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    items = [DatasetItem(f"{i:04d}", str(int(target))) for i, target in enumerate(digits.target)]
    return items, lambda index: _rgb(np.kron(pixels[index], np.ones((4, 4), np.uint8)))


def _make_lfw():
    from skimage import data

    pictures = np.rint(data.lfw_subset() * 255).astype(np.uint8)
    labels = ["face" if i < 100 else "non-face" for i in range(len(pictures))]
    items = [DatasetItem(f"{label}/{i:03d}", label) for i, label in enumerate(labels)]
    return items, lambda index: _rgb(pictures[index])


@lru_cache(maxsize=1)
def _builtin() -> tuple[Dataset, ...]:
    # One object each per process, so the server, the CLI and the fixtures make their pixels once.
    return (
        photo_crops(),
        ArrayDataset(
            "digits", "Handwritten digits (scikit-learn)", "scikit-learn", "scikit-learn", _make_digits
        ),
        ArrayDataset(
            "lfw_faces",
            "Faces and non-faces (scikit-image lfw_subset)",
            "scikit-image",
            "scikit-image",
            _make_lfw,
        ),
    )


def builtin_datasets() -> list[Dataset]:
    return list(_builtin())
