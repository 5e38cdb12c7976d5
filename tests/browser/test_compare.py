"""The comparison view in a real browser: one image and class through several attribution methods, every map
normalised the same way in the page; and one method on two models side by side."""

from __future__ import annotations

import numpy as np
import pytest
from browser_pixels import (
    canvas_pixels,
    coloured,
    compare_normalisation,
    fetch_npy,
    fetch_png,
    inferno,
)
from test_page import open_app

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
METHODS = ("saliency", "gradcam", "occlusion")
EGYPTIAN_CAT = 285


def cell(page, method: str, model: str = DEFAULT_MODEL):
    return page.locator(f'[data-testid="cell"][data-method="{method}"][data-model="{model}"]')


def wait_until_compared(page, timeout: float = 180_000) -> None:
    page.locator('[data-testid="compare-grid"][data-state="done"]').wait_for(
        state="attached", timeout=timeout
    )


def check_normalised_map(page, live_server: str, method: str, model: str, table: np.ndarray) -> np.ndarray:
    """The cell's canvas is the .npy map normalised the comparison's way and coloured by the server's inferno."""
    box = cell(page, method, model)
    assert box.get_attribute("data-state") == "done", box.inner_text()
    attribution = fetch_npy(page, box.get_attribute("data-array-url"))
    assert attribution.dtype == np.float32 and attribution.ndim == 2
    normalised, scale = compare_normalisation(attribution)
    assert scale > 0, f"{method}: no positive attribution"
    assert float(box.get_attribute("data-scale")) == pytest.approx(scale, rel=1e-5)

    drawn = canvas_pixels(box.get_by_test_id("cell-canvas"))
    assert drawn.shape[:2] == attribution.shape
    expected = coloured(normalised, table)
    difference = np.abs(drawn - expected).max(axis=2)
    # Only values within float rounding of a colour step may land on the neighbouring colour.
    assert (difference <= 2).mean() > 0.999, f"{method}: {np.count_nonzero(difference > 2)} pixels differ"
    assert drawn.std() > 10, f"{method}: the map is flat"

    brightest = np.all(drawn == table[255], axis=2)
    at_or_above_p99 = np.maximum(attribution, 0) >= scale
    overlap = np.count_nonzero(brightest & at_or_above_p99) / max(
        np.count_nonzero(brightest | at_or_above_p99), 1
    )
    assert overlap > 0.95, (
        f"{method}: the brightest pixels are not the top 1 % of the map (IoU {overlap:.3f})"
    )
    assert 0.005 <= brightest.mean() <= 0.05 or method == "occlusion", (
        f"{method}: {brightest.mean():.3%} of pixels saturate; the 99th percentile leaves about 1 %"
    )
    return drawn


def test_compare_page_draws_every_method_normalised_the_same_way(page, live_server, artifacts):
    # The main page links to the comparison of its chosen model and image.
    open_app(page, live_server)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    link = page.get_by_test_id("compare-link")
    page.wait_for_function(
        "(link) => link.href.includes('image=chelsea') && link.href.includes('model=')",
        arg=link.element_handle(),
    )
    link.click()
    page.wait_for_url("**/compare.html?*")
    page.locator('[data-testid="compare-method"][data-method="saliency"]').wait_for()
    assert page.get_by_test_id("compare-model").input_value() == DEFAULT_MODEL
    thumb = page.locator('[data-testid="image-thumb"][data-image="chelsea"]')
    assert thumb.get_attribute("aria-selected") == "true"

    offered = page.get_by_test_id("compare-method")
    names = [offered.nth(i).get_attribute("data-method") for i in range(offered.count())]
    assert set(METHODS) <= set(names), f"attribution-map methods offered: {names}"
    assert all(offered.nth(i).is_checked() for i in range(offered.count())), (
        "every available method is ticked"
    )
    for i, name in enumerate(names):
        offered.nth(i).set_checked(name in METHODS)
    occlusion = page.locator('[data-testid="compare-method-row"][data-method="occlusion"]')
    occlusion.locator("summary").click()
    occlusion.get_by_test_id("param-stride").fill("16")
    occlusion.get_by_test_id("param-batch_size").fill("64")

    chip = page.locator(f'[data-testid="top-class"][data-index="{EGYPTIAN_CAT}"]')
    chip.click()
    assert page.get_by_test_id("compare-target").input_value().startswith(f"{EGYPTIAN_CAT}:")

    page.get_by_test_id("compare-run").click()
    # Live: a cell shows the method's own frames before the comparison is done.
    page.locator('[data-testid="cell-canvas"][data-drawn]').first.wait_for(state="attached", timeout=120_000)
    wait_until_compared(page)
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)

    rows = [row.get_attribute("data-method") for row in page.get_by_test_id("row").all()]
    assert rows == [name for name in names if name in METHODS]
    table = inferno(page, live_server)
    for method in METHODS:
        check_normalised_map(page, live_server, method, DEFAULT_MODEL, table)
        assert f"class {EGYPTIAN_CAT}" in cell(page, method).get_by_test_id("cell-caption").inner_text()

    legend = canvas_pixels(page.get_by_test_id("legend-bar"))
    np.testing.assert_array_equal(legend[0], table)
    assert page.get_by_test_id("legend-low").inner_text() == "0"
    assert "99th percentile" in page.get_by_test_id("legend-caption").inner_text()

    # The shared opacity re-blends every finished map over the picture the model saw, in the page.
    picture = fetch_png(page, f"{live_server}/api/images/chelsea?model={DEFAULT_MODEL}")
    slider = page.get_by_test_id("compare-opacity")
    slider.focus()
    page.keyboard.press("Home")
    for method in METHODS:
        np.testing.assert_array_equal(
            canvas_pixels(cell(page, method).get_by_test_id("cell-canvas")), picture
        )


def test_one_method_on_two_models_side_by_side_from_the_url(page, live_server, artifacts):
    """compare.html's query string preselects and starts: the embeddable form of the view."""
    other = "efficientnet_lite0.pt2"
    page.goto(
        f"{live_server}/compare.html?model={DEFAULT_MODEL}&model-b={other}&image=chelsea"
        f"&target={EGYPTIAN_CAT}&methods=saliency&autorun"
    )
    wait_until_compared(page, timeout=120_000)
    columns = [column.get_attribute("data-model") for column in page.get_by_test_id("column").all()]
    assert columns == [DEFAULT_MODEL, other]
    assert [row.get_attribute("data-method") for row in page.get_by_test_id("row").all()] == ["saliency"]
    table = inferno(page, live_server)
    onnx = check_normalised_map(page, live_server, "saliency", DEFAULT_MODEL, table)
    exported = check_normalised_map(page, live_server, "saliency", other, table)
    # The same weights in two formats: the two maps agree, pixel for pixel, nearly everywhere.
    assert np.mean(np.abs(onnx - exported).max(axis=2) <= 8) > 0.97
    page.screenshot(path=str(artifacts / "compare-two-models.png"), full_page=True)
