"""top_patches in the job view: the grid of patches is drawn while the data set is read, then the final grid."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_png

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
UNITS, K, TILE, GAP = 4, 6, 32, 2
ENDS_MS = 240_000
STATE = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""


def test_the_patch_grid_fills_in_as_the_data_set_is_read(page, live_server):
    params = {"dataset": "lfw_faces", "units": UNITS, "k": K, "tile": TILE, "every": 1}
    body = {"method": "top_patches", "model": DEFAULT_MODEL, "image": "chelsea", "params": params, "seed": 1}
    job = requests.post(f"{live_server}/api/jobs", json=body, timeout=60).json()
    # Held at its first event until the page watches, so the page sees the pass from its start.
    assert requests.post(f"{live_server}/api/jobs/{job['id']}/pause", timeout=60).ok
    page.goto(f"{live_server}/#job={job['id']}")
    view = page.locator("convlens-job-view")
    page.wait_for_function(f"(view) => ({STATE})(view) === 'paused'", arg=view.element_handle(timeout=60_000))
    assert requests.post(f"{live_server}/api/jobs/{job['id']}/resume", timeout=60).ok

    so_far = view.locator('canvas[data-label="so far"]')
    page.wait_for_function(
        "(canvas) => canvas.dataset.seq !== undefined", arg=so_far.element_handle(timeout=ENDS_MS)
    )
    drawn_at = int(so_far.get_attribute("data-step"))
    assert drawn_at < 200, "a partial grid was drawn before all 200 images were read"
    partial = canvas_pixels(so_far)
    size = (UNITS * (TILE + GAP) + GAP, K * (TILE + GAP) + GAP)
    assert partial.shape[:2] == size
    assert (partial.min(axis=2) < 240).mean() > 0.3, "the partial grid holds patches, not a blank canvas"

    final = view.locator('canvas[data-label="top patches"]')
    page.wait_for_function(
        "(canvas) => canvas.dataset.seq !== undefined", arg=final.element_handle(timeout=ENDS_MS)
    )
    page.wait_for_function(
        f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle(), timeout=ENDS_MS
    )
    result = requests.get(f"{live_server}/api/jobs/{job['id']}/result", timeout=60)
    drawn = canvas_pixels(final).astype(np.float64)
    expected = fetch_png(page, live_server + result.json()["images"]["patches"]).astype(np.float64)
    assert drawn.shape == expected.shape and drawn.shape[:2] == size
    assert np.abs(drawn - expected).mean() < 4, (
        "the page draws the result's grid (JPEG frames: near, not exact)"
    )
