"""Colour maps for heatmaps: 256x3 tables whose lightness rises evenly, so equal steps in value look equal.

``inferno`` runs black → purple → red → orange → pale yellow. It is built here, not copied: six anchor
colours are placed in CIELAB at their own lightness and interpolated there with lightness made exactly
linear in the value, then converted back to sRGB. ``grey`` is the plain ramp.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_ANCHORS = {
    "inferno": ("#000004", "#420a68", "#932667", "#dd513a", "#fca50a", "#fcffa4"),
}
NAMES = ("inferno", "grey")


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _lab_f(t: np.ndarray) -> np.ndarray:
    delta = 6 / 29
    return np.where(t > delta**3, np.cbrt(t), t / (3 * delta**2) + 4 / 29)


def _lab_f_inverse(t: np.ndarray) -> np.ndarray:
    delta = 6 / 29
    return np.where(t > delta, t**3, 3 * delta**2 * (t - 4 / 29))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Nx3 sRGB in [0, 1] → Nx3 CIELAB (D65)."""
    xyz = _srgb_to_linear(np.asarray(rgb, dtype=np.float64)) @ _RGB_TO_XYZ.T / _D65_WHITE
    fx, fy, fz = (_lab_f(xyz[:, i]) for i in range(3))
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """Nx3 CIELAB (D65) → Nx3 sRGB, clipped to [0, 1]."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[:, 0] + 16) / 116
    fx = fy + lab[:, 1] / 500
    fz = fy - lab[:, 2] / 200
    xyz = np.stack([_lab_f_inverse(fx), _lab_f_inverse(fy), _lab_f_inverse(fz)], axis=1) * _D65_WHITE
    return np.clip(_linear_to_srgb(xyz @ np.linalg.inv(_RGB_TO_XYZ).T), 0.0, 1.0)


def _hex(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


@cache
def colormap(name: str = "inferno") -> np.ndarray:
    """The 256x3 float32 table of ``name`` (one of :data:`NAMES`), rows from value 0 to value 1."""
    ramp = np.linspace(0.0, 1.0, 256)
    if name == "grey":
        table = np.repeat(ramp[:, None], 3, axis=1)
    elif name in _ANCHORS:
        lab = srgb_to_lab(np.array([_hex(c) for c in _ANCHORS[name]]))
        lightness = lab[:, 0]
        # Anchors sit at the value their own lightness gives them, so L is linear in the value.
        positions = (lightness - lightness[0]) / (lightness[-1] - lightness[0])
        a = np.interp(ramp, positions, lab[:, 1])
        b = np.interp(ramp, positions, lab[:, 2])
        table = lab_to_srgb(np.stack([lightness[0] + ramp * (lightness[-1] - lightness[0]), a, b], axis=1))
    else:
        raise ValueError(f"unknown colour map {name!r}; expected one of {NAMES}")
    table = table.astype(np.float32)
    table.setflags(write=False)
    return table


def colorize(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """HxW values in [0, 1] (clipped; NaN as 0) → HxWx3 float32 colours of map ``name``."""
    clean = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    return colormap(name)[np.rint(clean * 255).astype(np.intp)]


def overlay(image: np.ndarray, values: np.ndarray, opacity: float = 0.6, name: str = "inferno") -> np.ndarray:
    """``values`` (HxW in [0, 1]) coloured by ``name`` and blended over ``image`` (HxWx3 in [0, 1]) at ``opacity``."""
    base = np.asarray(image, dtype=np.float32)
    if base.shape[:2] != np.shape(values):
        raise ValueError(f"image {base.shape[:2]} and values {np.shape(values)} differ in size")
    return (1.0 - opacity) * base + opacity * colorize(values, name)
