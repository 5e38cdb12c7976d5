"""A finished attribution map in the job view: the top-5 quick pick of the class, the colour scale, and the
overlay-opacity slider that re-blends picture and map in the page."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_png, inferno
from test_page import open_app, wait_for_state

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
EGYPTIAN_CAT = 285


def run_saliency_on_chelsea(page, live_server: str, pick_top_class: bool = False) -> dict:
    """Run saliency from the page; the finished job's result."""
    open_app(page, live_server)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="saliency"]').click()
    if pick_top_class:
        chip = page.locator(f'[data-testid="top-class"][data-index="{EGYPTIAN_CAT}"]')
        chip.click()
        assert chip.get_attribute("aria-pressed") == "true"
    page.get_by_test_id("run").click()
    view = page.locator("convlens-job-view")
    wait_for_state(page, view, "done", timeout=60_000)
    job_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')")
    return requests.get(f"{live_server}/api/jobs/{job_id}/result", timeout=30).json()


def wait_for_opacity(page, value: str) -> None:
    page.locator(f'[data-testid="overlay-canvas"][data-opacity="{value}"]').wait_for(state="attached")


def test_top5_pick_sets_the_class_to_the_images_top_prediction(page, live_server):
    open_app(page, live_server)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="saliency"]').click()
    chips = page.get_by_test_id("top-class")
    chips.first.wait_for()
    assert chips.count() == 5
    assert chips.first.get_attribute("data-index") == str(EGYPTIAN_CAT)
    target = page.get_by_test_id("param-target")
    assert target.input_value() == "", "before a pick the class is empty (the top prediction)"
    chips.first.click()
    assert target.input_value() == f"{EGYPTIAN_CAT}: Egyptian cat"
    # A pick on another image's top-5 changes the field to that class.
    page.locator('[data-testid="image-thumb"][data-image="coffee"]').click()
    page.locator(f'[data-testid="top-class"]:not([data-index="{EGYPTIAN_CAT}"])').first.wait_for()
    other = chips.first.get_attribute("data-index")
    chips.first.click()
    assert target.input_value().startswith(f"{other}:") and other != str(EGYPTIAN_CAT)


def test_the_picked_class_is_the_class_the_job_explains(page, live_server):
    result = run_saliency_on_chelsea(page, live_server, pick_top_class=True)
    assert result["params"]["target"] == EGYPTIAN_CAT
    assert result["data"]["target"] == EGYPTIAN_CAT


def test_opacity_slider_reblends_picture_and_map_in_the_page(page, live_server, artifacts):
    result = run_saliency_on_chelsea(page, live_server)
    initial = result["params"]["overlay"]
    wait_for_opacity(page, str(initial))
    canvas = page.get_by_test_id("overlay-canvas")
    picture = fetch_png(page, f"{live_server}/api/images/chelsea?model={DEFAULT_MODEL}")
    grey_map = fetch_png(page, live_server + result["images"]["map"])[:, :, 0]
    colours = inferno(page, live_server)[grey_map]

    # At the run's own opacity the page draws what the server drew.
    server_overlay = fetch_png(page, live_server + result["images"]["saliency"])
    shown = canvas_pixels(canvas)
    assert np.abs(shown - server_overlay).max() <= 2

    slider = page.get_by_test_id("opacity")
    slider.focus()
    page.keyboard.press("Home")
    wait_for_opacity(page, "0")
    np.testing.assert_array_equal(canvas_pixels(canvas), picture)
    page.keyboard.press("End")
    wait_for_opacity(page, "1")
    np.testing.assert_array_equal(canvas_pixels(canvas), colours)
    for _ in range(50):
        page.keyboard.press("ArrowLeft")
    wait_for_opacity(page, "0.5")
    half = canvas_pixels(canvas)
    np.testing.assert_allclose(half, (picture + colours) / 2, atol=1)
    distances = [np.abs(pixels - picture).mean() for pixels in (picture, half, colours)]
    assert distances == sorted(distances) and distances[1] > 5, distances

    # Nothing was run again: still one job's result, and its downloads are still offered.
    assert page.get_by_test_id("result-json").is_visible()
    assert "attribution.npy" in page.get_by_test_id("result-array").all_inner_texts()
    assert page.get_by_test_id("result-image").count() >= 2
    page.screenshot(path=str(artifacts / "attribution-view.png"), full_page=True)


def test_legend_shows_the_colour_bar_and_the_maps_scale(page, live_server):
    result = run_saliency_on_chelsea(page, live_server)
    legend = page.get_by_test_id("legend")
    page.locator('[data-testid="legend-bar"][data-drawn]').wait_for(state="attached")
    assert legend.is_visible()
    bar = canvas_pixels(page.get_by_test_id("legend-bar"))
    np.testing.assert_array_equal(bar[0], inferno(page, live_server))
    assert page.get_by_test_id("legend-low").inner_text() == "0"
    assert float(page.get_by_test_id("legend-high").inner_text()) == pytest.approx(
        result["data"]["scale"], rel=1e-3
    )
    caption = page.get_by_test_id("legend-caption").inner_text()
    assert f"class {result['data']['target']}" in caption and "units" in caption
