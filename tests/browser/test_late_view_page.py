"""A finished job opened later (a reload, a link with #job=<id>): the page shows what a viewer who watched saw,
every label's newest frame with every panel's top-5, and the metrics chart's headers stay readable."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_npy, png_pixels
from test_adversarial_page import as_pixels, expected_top, shown_top

from local import run_to_end

pytestmark = pytest.mark.browser

MODELS = ("efficientnet_lite0.onnx", "efficientnet_lite0.pt")
PATTERNS = ("gaussian", "uniform", "stripes", "checkerboard")
STATE = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""
HEADER_BOXES = """(box) => [...box.querySelectorAll('.chart-label')].map((row) => ({
  metric: row.dataset.metric,
  title: row.querySelector('.name').title,
  value: row.querySelector('.value').textContent,
  truncated: row.querySelector('.name').scrollWidth > row.querySelector('.name').clientWidth,
  boxes: ['.name', '.value', '.range'].map((part) => {
    const rect = row.querySelector(part).getBoundingClientRect();
    return [rect.left, rect.right];
  }),
  chart: [box.getBoundingClientRect().left, box.getBoundingClientRect().right],
  rows: [row.getBoundingClientRect().top, row.getBoundingClientRect().bottom],
}))"""


def finished_noise_job(live_server: str) -> tuple[str, dict]:
    """A noise_predictions run on both model files of the default model, of few draws; its id and result."""
    params = {"models": [MODELS[1]], "draws": 8, "batch": 8, "bins": 8}
    body = {
        "method": "noise_predictions",
        "model": MODELS[0],
        "image": "chelsea",
        "params": params,
        "seed": 3,
    }
    job = run_to_end(live_server, body)
    return job["id"], requests.get(f"{live_server}/api/jobs/{job['id']}/result", timeout=60).json()


def test_a_finished_noise_run_opened_later_shows_every_pattern_and_the_histograms(
    page, live_server, artifacts
):
    job_id, result = finished_noise_job(live_server)
    page.goto(f"{live_server}/#job={job_id}")
    view = page.locator("convlens-job-view")
    page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle(timeout=60_000))
    # Lossless frames: the view reopens with PNG (a new subscription, as a reload makes).
    view.evaluate("(view) => view.setAttribute('format', 'png')")
    labels = [" | ".join(f"{name} · {model}" for model in MODELS) for name in (*PATTERNS, "histogram")]
    canvases = page.get_by_test_id("panel-canvas")
    page.wait_for_function(
        "(view) => view.shadowRoot.querySelectorAll('[data-testid=panel-canvas][data-seq]').length === 10",
        arg=view.element_handle(),
    )
    strips = page.get_by_test_id("panels")
    assert [strips.nth(i).get_attribute("data-label") for i in range(strips.count())] == labels
    assert canvases.count() == 2 * len(labels)

    by_model = result["data"]["by_model"]
    assert [entry["model"] for entry in by_model] == list(MODELS)
    patterns = fetch_npy(page, live_server + result["array_urls"]["patterns"])
    for index, name in enumerate(PATTERNS):
        for which, model in enumerate(MODELS):
            panel = f"{name} · {model}"
            # Under each pattern's panel, that model's top-5 of the pattern, as the result has it.
            top = [
                {"label": e["label"], "probability": e["probability"]}
                for e in by_model[which]["patterns"][name]
            ]
            assert shown_top(page, panel) == expected_top(top), panel
            drawn = canvas_pixels(page.locator(f'[data-testid="panel-canvas"][data-panel="{panel}"]'))
            assert np.abs(drawn - as_pixels(patterns[index])).max() <= 1, panel
    for model in MODELS:
        assert page.locator(f'[data-testid="panel-top"][data-panel="histogram · {model}"]').is_hidden()
    page.screenshot(path=str(artifacts / "noise-predictions-late-view.png"), full_page=True)


def test_the_charts_headers_never_overlap_and_a_long_name_ends_in_an_ellipsis(page, live_server, artifacts):
    job_id, result = finished_noise_job(live_server)
    page.goto(f"{live_server}/#job={job_id}")
    view = page.locator("convlens-job-view")
    page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle(timeout=60_000))
    box = view.locator(".chart-box")
    page.wait_for_function(
        "(view) => view.shadowRoot.querySelectorAll('.chart-label').length === 3", arg=view.element_handle()
    )
    means = {
        f"mean top probability · {entry['model']}": entry["mean_top_probability"]
        for entry in result["data"]["by_model"]
    }
    for width in (1440, 900):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)  # the chart redraws on resize, at most every 100 ms
        box.scroll_into_view_if_needed()
        rows = box.evaluate(HEADER_BOXES)
        assert {row["metric"] for row in rows} == {"mean_top_probability", *means}
        for row in rows:
            (name_left, name_right), (value_left, value_right), (range_left, range_right) = row["boxes"]
            left, right = row["chart"]
            assert (
                left
                <= name_left
                <= name_right
                <= value_left
                <= value_right
                <= range_left
                <= range_right
                <= right
            ), row
            assert row["title"] == row["metric"], "the full name in the tooltip"
            # Nothing is painted between name and value, nor between value and range: no text runs over.
            top, bottom = row["rows"]
            for gap_left, gap_right in ((name_right, value_left), (value_right, range_left)):
                clip = {
                    "x": gap_left + 0.5,
                    "y": top,
                    "width": gap_right - gap_left - 1,
                    "height": bottom - top,
                }
                gap = png_pixels(page.screenshot(clip=clip))
                assert np.ptp(gap.reshape(-1, 3), axis=0).max() <= 2, (row["metric"], "text in the gap")
            if row["metric"] in means:
                assert float(row["value"]) == float(f"{means[row['metric']]:.4g}")
        box.screenshot(path=str(artifacts / f"metrics-chart-headers-{width}.png"))
    assert any(row["truncated"] for row in rows), "at 900 px a long name is cut short (with an ellipsis)"
