"""Heatmap colours: lightness rises evenly from black to pale yellow, so the eye reads values in order."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.colormaps import colorize, colormap, lab_to_srgb, overlay, srgb_to_lab


def test_inferno_lightness_rises_evenly_from_black_to_near_white():
    lightness = srgb_to_lab(colormap("inferno"))[:, 0]
    assert lightness[0] < 1 and lightness[-1] > 95
    steps = np.diff(lightness)
    assert steps.min() > 0 and steps.max() < 1.2 * steps.mean()


def test_inferno_runs_through_purple_and_orange():
    table = colormap("inferno")
    r, g, b = table[64]
    assert b > g and r > g  # purple
    r, g, b = table[200]
    assert r > g > b  # orange


def test_lab_round_trip():
    rgb = np.random.default_rng(0).random((50, 3))
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-9)


def test_colorize_and_overlay():
    values = np.array([[0.0, 1.0], [np.nan, 2.0]])
    colours = colorize(values, "grey")
    np.testing.assert_allclose(colours[..., 0], [[0, 1], [0, 1]])
    image = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(overlay(image, values, 0.0), image)
    np.testing.assert_allclose(overlay(image, values, 1.0, "grey"), colours)
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap("jet")
