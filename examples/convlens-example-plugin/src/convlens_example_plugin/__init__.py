"""An example convlens plugin: one method (``channel_mosaic``) and one generated sample image."""

from __future__ import annotations

import numpy as np

from convlens import hookimpl
from convlens.images import SampleImage
from convlens.methods import Method

from .mosaic import CHANNEL_MOSAIC


@hookimpl
def register_methods() -> list[Method]:
    return [CHANNEL_MOSAIC]


def checkerboard(size: int = 256, squares: int = 8) -> np.ndarray:
    """A checkerboard whose light squares fade from red (left) to blue (right) over a green ramp (top to bottom)."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    cells = (np.arange(size) * squares // size) % 2
    light = (cells[:, None] ^ cells[None, :]).astype(np.float32)
    red, green = np.meshgrid(1.0 - ramp, ramp, indexing="xy")
    rgb = np.stack([red, green, 1.0 - red], axis=2) * light[:, :, None] + 0.1
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


@hookimpl
def register_sample_images() -> list[SampleImage]:
    return [
        SampleImage(
            id="example-checkerboard", title="Coloured checkerboard", load=checkerboard, source="example"
        )
    ]
