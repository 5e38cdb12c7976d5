"""Heatmap colours: convlens's inferno is matplotlib's, as the server's table and as its PNGs colour a map."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from skimage.color import rgb2lab

from convlens.colormaps import colorize, colormap, overlay


def matplotlib_inferno() -> np.ndarray:
    """matplotlib's inferno sampled at 256 points, value 0 first, in [0, 1]."""
    return matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3]


def test_inferno_is_matplotlibs_table_to_the_level_the_server_serves(client):
    expected = np.floor(matplotlib_inferno() * 255 + 0.5).astype(int)  # the README's rounding, half up
    served = client.get("/api/colormaps/inferno")
    assert served.status_code == 200
    assert np.array_equal(np.array(served.get_json()["colors"]), expected)
    np.testing.assert_allclose(colormap("inferno"), matplotlib_inferno(), atol=0.5 / 255 + 1e-6)


def test_inferno_lightness_rises_from_black_to_pale_yellow():
    lightness = rgb2lab(colormap("inferno")[None].astype(np.float64))[0, :, 0]
    assert lightness[0] < 1 and lightness[-1] > 95
    assert np.diff(lightness).min() > 0


def test_colorize_looks_each_value_up_in_the_table_and_overlay_blends_it():
    values = np.array([[0.0, 1.0], [np.nan, 2.0]])
    colours = colorize(values, "grey")
    np.testing.assert_allclose(colours[..., 0], [[0, 1], [0, 1]])
    inferno = matplotlib_inferno()
    np.testing.assert_allclose(colorize(values), inferno[[[0, 255], [0, 255]]], atol=0.5 / 255 + 1e-6)
    image = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(overlay(image, values, 0.0), image)
    np.testing.assert_allclose(overlay(image, values, 1.0, "grey"), colours)
    np.testing.assert_allclose(
        overlay(image, values, 0.25), 0.75 * 0.5 + 0.25 * inferno[[[0, 255], [0, 255]]], atol=0.5 / 255
    )
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap("jet")
