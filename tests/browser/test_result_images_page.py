"""A finished job's result images as pictures for later runs, in a real browser: a trained patch's "Apply this
patch" opens ``apply_patch`` with ``patch`` set to ``job:<id>:patch``, and the run pastes exactly that patch;
"use as picture" makes a result image the page's picture."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from browser_pixels import fetch_png
from test_page import open_app, wait_for_state

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
SIDE = 16
INPUT = 224
TINY_PATCH = {
    "size": SIDE,
    "shape": "square",
    "steps": 2,
    "batch": 1,
    "held_out": 1,
    "draws": 1,
    "every": 1,
    "min_scale": 1.0,
    "max_scale": 1.0,
    "rotation": 0.0,
}


def finished(live_server: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{live_server}/api/jobs/{job_id}", timeout=30).json()
        if job["state"] in ("done", "failed", "stopped") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def shown_job(page) -> str:
    return page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')")


def test_apply_this_patch_pastes_the_finished_jobs_patch_on_the_chosen_picture(page, live_server):
    body = {"method": "adversarial_patch", "model": DEFAULT_MODEL, "image": "chelsea", "params": TINY_PATCH}
    trained = requests.post(f"{live_server}/api/jobs", json=body, timeout=30).json()["id"]
    assert finished(live_server, trained)["state"] == "done"

    open_app(page, live_server)
    page.locator('[data-testid="method"][data-method="apply_patch"]').wait_for()
    page.locator('[data-testid="image-thumb"][data-image="astronaut"]').click()
    page.goto(f"{live_server}/#job={trained}")
    view = page.locator("convlens-job-view")
    wait_for_state(page, view, "done")
    page.get_by_test_id("apply-patch").click()

    patch_id = f"job:{trained}:patch"
    page.locator('[data-testid="method"][data-method="apply_patch"][aria-checked="true"]').wait_for()
    assert page.get_by_test_id("param-patch").input_value() == patch_id
    assert page.get_by_test_id("param-size").input_value() == str(SIDE)
    assert page.get_by_test_id("param-shape").locator("option:checked").inner_text() == "square"
    # The picture stays the one chosen; the patch joined the pictures on offer.
    assert page.locator('[data-testid="image-thumb"][aria-selected="true"]').get_attribute("data-image") == (
        "astronaut"
    )
    assert page.locator(f'[data-testid="image-thumb"][data-image="{patch_id}"]').count() == 1

    page.get_by_test_id("run").click()
    page.wait_for_function(f"() => !location.hash.includes('{trained}')")
    applied = shown_job(page)
    wait_for_state(page, view, "done", timeout=60_000)
    job = requests.get(f"{live_server}/api/jobs/{applied}", timeout=30).json()
    assert job["image"] == "astronaut" and job["params"]["patch"] == patch_id

    patch = fetch_png(page, f"{live_server}/api/jobs/{trained}/images/patch.png")
    assert patch.shape == (SIDE, SIDE, 3)
    patched = fetch_png(page, f"{live_server}/api/jobs/{applied}/images/patched.png")
    original = fetch_png(page, f"{live_server}/api/images/astronaut?model={DEFAULT_MODEL}")
    inside = np.zeros((INPUT, INPUT), dtype=bool)
    corner = INPUT // 2 - SIDE // 2
    inside[corner : corner + SIDE, corner : corner + SIDE] = True
    assert np.abs(patched[inside].reshape(patch.shape) - patch).max() <= 1
    assert np.abs(patched[~inside] - original[~inside]).max() <= 1

    # The patched picture, in turn, becomes the page's picture.
    page.locator('[data-testid="use-as-picture"][data-image="patched"]').click()
    picked = f"job:{applied}:patched"
    thumb = page.locator(f'[data-testid="image-thumb"][data-image="{picked}"]')
    assert thumb.get_attribute("aria-selected") == "true"
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.locator("img").element_handle()
    )
    shown = fetch_png(page, f"{live_server}/api/images/{picked}")
    assert np.array_equal(shown, patched)
