"""The Deep Image Prior view: the PSNR chart with its reference line and best point, "Stop and keep the best",
and the paper's Figure 2 as four learning curves in one chart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_npy

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
PSNR, REFERENCE, BEST = (31, 119, 180), (100, 100, 100), (214, 39, 40)
CURVES = {
    "natural image": (44, 160, 44),
    "natural image + noise": (31, 119, 180),
    "scrambled pixels": (255, 127, 14),
    "white noise": (148, 103, 189),
}
"""The series colours of web/src/dip-view.ts."""
ENDS_MS = 240_000


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(pixels - np.array(colour)).max(axis=2) <= 2


def independent_psnr(clean: np.ndarray, other: np.ndarray) -> float:
    mse = np.mean((np.clip(other.astype(np.float64), 0, 1) - clean.astype(np.float64)) ** 2)
    return float(10 * np.log10(1 / mse))


def start_from_the_page(page, live_server: str, **params) -> None:
    page.goto(live_server + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="deep_image_prior"]').click()
    for name, value in params.items():
        page.get_by_test_id(f"param-{name}").fill(str(value))
    page.get_by_test_id("seed").fill(
        "0"
    )  # a repeatable run: its PSNR beats the corrupted picture's by step 40
    page.get_by_test_id("run").click()


def finished_job(page, live_server: str) -> dict:
    """Once the job has ended: the job as the server has it, the view then holding the result's best."""
    ended = ", ".join(f'[data-testid=state][data-state="{state}"]' for state in ("done", "failed", "stopped"))
    page.locator(ended).wait_for(state="attached", timeout=ENDS_MS)
    job_id = page.locator("convlens-job-view").get_attribute("job")
    job = requests.get(f"{live_server}/api/jobs/{job_id}", timeout=30).json()
    assert job["state"] == "done", job
    page.locator('[data-testid=dip-view][data-final="true"]').wait_for(state="attached")
    return job


def best_label(data: dict) -> str:
    return f"best: {data['psnr_best']:.1f} dB at step {data['best_step']}"


def test_a_run_from_the_page_charts_psnr_against_the_corrupted_level_and_labels_the_best(page, live_server):
    start_from_the_page(page, live_server, size=64, steps=40, every=4)
    job = finished_job(page, live_server)
    data, urls = job["result"]["data"], job["result"]["array_urls"]
    view = page.get_by_test_id("dip-view")
    assert page.get_by_test_id("dip-best").inner_text() == best_label(data)
    assert int(view.get_attribute("data-points")) >= 10  # a point per shown step, the peak's own included
    # The reference line is the corrupted picture's PSNR, measured here from the arrays the result exposes.
    clean, corrupted = (
        fetch_npy(page, live_server + urls["clean"]),
        fetch_npy(page, live_server + urls["corrupted"]),
    )
    assert float(view.get_attribute("data-reference")) == pytest.approx(
        independent_psnr(clean, corrupted), abs=1e-3
    )
    assert data["psnr_best"] == pytest.approx(
        independent_psnr(clean, fetch_npy(page, live_server + urls["best"])), abs=1e-3
    )
    pixels = canvas_pixels(page.locator("[data-testid=dip-chart] canvas"))
    curve, line, dot = (colour_mask(pixels, colour) for colour in (PSNR, REFERENCE, BEST))
    assert curve.sum() > 150 and dot.sum() > 30, (curve.sum(), dot.sum())
    # The reference is a horizontal dashed line: its pixels span the plot's width within a row or two.
    rows, columns = np.nonzero(line)
    assert line.sum() > 100 and np.ptp(rows) <= 3 and np.ptp(columns) > pixels.shape[1] / 2
    # The restoration beats the corrupted picture: its curve rises above the line (rows grow downwards).
    assert np.nonzero(curve)[0].min() < rows.min()
    assert page.get_by_test_id("dip-stop-best").is_hidden()


def test_stop_and_keep_the_best_ends_the_run_with_the_best_picture_and_its_step(page, live_server):
    start_from_the_page(page, live_server, size=64, steps=5000, every=5)
    view = page.get_by_test_id("dip-view")
    page.wait_for_function(
        "(view) => Number(view.dataset.points) >= 6", arg=view.element_handle(), timeout=ENDS_MS
    )
    page.get_by_test_id("dip-stop-best").click()
    job = finished_job(page, live_server)
    data, urls = job["result"]["data"], job["result"]["array_urls"]
    assert data["stopped_early"] and 15 <= data["steps"] < 5000 and 1 <= data["best_step"] <= data["steps"]
    clean = fetch_npy(page, live_server + urls["clean"])
    assert independent_psnr(clean, fetch_npy(page, live_server + urls["best"])) == pytest.approx(
        data["psnr_best"], abs=1e-3
    )
    assert page.get_by_test_id("dip-best").inner_text() == best_label(data)


def test_the_learning_curves_of_figure_2_share_one_chart_with_a_legend(page, live_server):
    body = {
        "method": "deep_image_prior_curves",
        "model": DEFAULT_MODEL,
        "image": "chelsea",
        "params": {"size": 64, "steps": 12, "every": 3},
    }
    answer = requests.post(f"{live_server}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    page.goto(f"{live_server}/#job={answer.json()['id']}")
    page.locator('[data-testid="state"][data-state="done"]').wait_for(state="attached", timeout=ENDS_MS)
    curves = page.get_by_test_id("dip-curves")
    page.wait_for_function(
        "(view) => Object.values(JSON.parse(view.dataset.points || '{}')).every((n) => n === 4)",
        arg=curves.element_handle(),
    )
    assert json.loads(curves.get_attribute("data-points")) == dict.fromkeys(CURVES, 4)
    legend = page.locator("[data-testid=dip-curves-chart] .u-legend .u-series .u-label").all_inner_texts()
    assert legend == list(CURVES)
    pixels = canvas_pixels(page.locator("[data-testid=dip-curves-chart] canvas"))
    for name, colour in CURVES.items():
        assert colour_mask(pixels, colour).sum() > 30, name
