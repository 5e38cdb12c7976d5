"""Sample photos bundled inside the scikit-image wheel; none needs a download."""

from __future__ import annotations

from convlens.images import SampleImage, skimage_samples

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


def sample_images() -> list[SampleImage]:
    return skimage_samples(SKIMAGE_SAMPLES)
