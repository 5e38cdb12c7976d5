"""Sample photos bundled inside the scikit-image wheel; none needs a download."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convlens.images import SampleImage

SKIMAGE_SAMPLES = {
    "chelsea": "Chelsea the cat",
    "coffee": "A cup of coffee",
    "astronaut": "Astronaut Eileen Collins",
    "rocket": "A rocket on its launch pad",
    "camera": "Cameraman (grey)",
    "coins": "Greek coins (grey)",
    "horse": "Horse silhouette (binary)",
    "moon": "Moon surface (grey)",
    "clock": "Clock, motion blurred (grey)",
    "hubble_deep_field": "Hubble deep field",
    "immunohistochemistry": "Immunohistochemistry stain",
}
"""scikit-image ``data`` function names (also the ids) and titles; each loads from a file in the wheel."""


def skimage_loader(name: str) -> Callable[[], np.ndarray]:
    """A function returning the sample ``name`` as HxWx3 uint8: grey and binary ones repeated to RGB."""

    def load() -> np.ndarray:
        from skimage import data

        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(pixels[:, :, :3])

    return load


def sample_images() -> list[SampleImage]:
    return [
        SampleImage(id=name, title=title, load=skimage_loader(name), source="scikit-image")
        for name, title in SKIMAGE_SAMPLES.items()
    ]
