"""The universal approximation view: uPlot charts of the target and the fit, and a drawn target that runs."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_npy

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
METHOD = "universal_approximation"
TARGET = (31, 119, 180)
SUM = (214, 39, 40)
ERROR = (44, 160, 44)
"""The series colours of web/src/approximation-view.ts."""
ENDS_MS = 120_000


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(pixels - np.array(colour)).max(axis=2) <= 2


def wait_until_drawn(page, step: int) -> None:
    """Until the view has drawn the sum of ``step`` (it sets data-step after each drawing)."""
    page.locator(f'[data-testid=approximation][data-step="{step}"]').wait_for(timeout=ENDS_MS)


def test_a_run_from_the_page_draws_the_target_and_the_fit_on_the_charts(page, live_server):
    page.goto(live_server + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator(f'[data-testid="method"][data-method="{METHOD}"]').click()
    page.get_by_test_id("param-units").fill("16")
    page.get_by_test_id("run").click()
    wait_until_drawn(page, 16)
    main = canvas_pixels(page.locator("[data-testid=approx-chart] canvas"))
    target, fit = colour_mask(main, TARGET), colour_mask(main, SUM)
    assert target.sum() > 300 and fit.sum() > 300, (target.sum(), fit.sum())
    # sin(pi x): below the middle on the left half of the plot, above it on the right (rows grow downwards).
    rows, columns = np.nonzero(fit)
    middle = (columns.min() + columns.max()) / 2
    assert rows[columns < middle].mean() > rows[columns > middle].mean() + 20
    outside = canvas_pixels(page.locator("[data-testid=approx-outside-chart] canvas"))
    assert colour_mask(outside, TARGET).sum() > 200 and colour_mask(outside, SUM).sum() > 200
    assert (
        colour_mask(canvas_pixels(page.locator("[data-testid=approx-error-chart] canvas")), ERROR).sum() > 100
    )


def test_a_target_drawn_with_the_mouse_runs_and_the_run_passes_through_the_drawn_points(page, live_server):
    body = {"method": METHOD, "model": DEFAULT_MODEL, "image": "chelsea", "params": {"units": 8}, "seed": 1}
    answer = requests.post(f"{live_server}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    first = answer.json()["id"]
    page.goto(f"{live_server}/#job={first}")
    wait_until_drawn(page, 8)
    surface = page.get_by_test_id("approx-draw")
    surface.scroll_into_view_if_needed()
    box = surface.bounding_box()
    x_min, x_max, y_min, y_max = (
        float(surface.get_attribute(f"data-{name}")) for name in ("x-min", "x-max", "y-min", "y-max")
    )
    drawn = np.array([[-0.9, 0.5], [-0.3, -1.0], [0.4, 1.0], [0.9, 0.0]])

    def on_page(x: float, y: float) -> tuple[float, float]:
        return (
            box["x"] + (x - x_min) / (x_max - x_min) * box["width"],
            box["y"] + (y_max - y) / (y_max - y_min) * box["height"],
        )

    page.mouse.move(*on_page(*drawn[0]))
    page.mouse.down()
    for x, y in drawn[1:]:
        page.mouse.move(*on_page(x, y), steps=12)
    page.mouse.up()
    view = page.get_by_test_id("job-view")
    page.wait_for_function(
        "([view, first]) => view.getAttribute('job') !== first", arg=[view.element_handle(), first]
    )
    second = view.get_attribute("job")
    wait_until_drawn(page, 8)
    job = requests.get(f"{live_server}/api/jobs/{second}", timeout=30).json()
    assert job["method"] == METHOD and job["params"]["target"] == "drawn" and job["state"] == "done"
    x = fetch_npy(page, live_server + job["result"]["array_urls"]["x"])
    target = fetch_npy(page, live_server + job["result"]["array_urls"]["target"])
    # A pixel of the 480 x 200 surface is 0.004 in x and 0.015 in y.
    assert np.interp(drawn[:, 0], x, target) == pytest.approx(drawn[:, 1], abs=0.04)
    # The drawn run's chart is drawn too.
    pixels = canvas_pixels(page.locator("[data-testid=approx-chart] canvas"))
    assert colour_mask(pixels, TARGET).sum() > 300
