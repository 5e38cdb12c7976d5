"""The job view's "Report" link downloads the run's HTML report, and the saved file opened in Chromium from disk,
with every network request blocked, makes none: its pictures decode and its chart is drawn."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import checked_page, png_pixels

from local import run_to_end

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
STATE = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""
SERIES_RGB = (0x1F, 0x77, 0xB4)
"""The first curve's colour (``convlens.report.PALETTE[0]``)."""


def done_dream(live_server: str) -> str:
    body = {
        "method": "deepdream",
        "model": DEFAULT_MODEL,
        "image": "chelsea",
        "params": {"steps": 5, "octaves": 1},
    }
    job = run_to_end(live_server, body)
    return job["id"]


def test_the_report_link_downloads_a_file_that_opens_offline_with_its_pictures_and_chart(
    page, browser, live_server, tmp_path, artifacts
):
    job_id = done_dream(live_server)
    page.goto(f"{live_server}/#job={job_id}")
    view = page.locator("convlens-job-view")
    page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle(timeout=60_000))
    with page.expect_download() as started:
        page.get_by_test_id("report").click()
    download = started.value
    assert download.suggested_filename == f"convlens-deepdream-{job_id}.html"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    served = requests.get(f"{live_server}/api/jobs/{job_id}/report.html", timeout=60).text
    assert saved.read_text().split("Written by")[0] == served.split("Written by")[0]

    with checked_page(browser) as offline:
        made: list[str] = []
        offline.on("request", lambda request: made.append(request.url))
        itself = saved.as_uri()
        # Nothing may come from anywhere but the file: each other request is recorded, and refused.
        offline.route(
            "**/*", lambda route: route.continue_() if route.request.url == itself else route.abort()
        )
        offline.goto(itself)
        assert made == [itself], "the report asked for nothing but itself"
        pictures = offline.eval_on_selector_all(
            "img", "(images) => images.map((image) => [image.complete, image.naturalWidth, image.alt])"
        )
        # The input picture, the dream, the frames' GIF.
        assert len(pictures) == 3 and all(complete and width > 0 for complete, width, _ in pictures), pictures
        chart = offline.locator("svg.chart").first
        assert chart.is_visible()
        shot = chart.screenshot(path=str(artifacts / "report-chart.png"))
        offline.screenshot(path=str(artifacts / "report-page.png"), full_page=True)
        pixels = png_pixels(shot).astype(int)
        curve = (np.abs(pixels - SERIES_RGB).max(axis=-1) < 40).sum()
        assert curve > 100, f"only {curve} pixels of the curve's colour: the chart's line is not drawn"
