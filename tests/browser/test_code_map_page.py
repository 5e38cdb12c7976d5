"""The code map in the job view: thumbnails drawn at the job's points, a wheel zooms, a click opens the image."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels
from PIL import Image

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
DATASET = "lfw_faces"  # 200 images: a few seconds of features, and two labels
TAB10 = {"face": (31, 119, 180), "non-face": (255, 127, 14)}  # matplotlib's first two, by sorted label
ENDS_MS = 240_000


@pytest.fixture(scope="module")
def code_map_job(live_server: str) -> str:
    params = {
        "dataset": DATASET,
        "early_iterations": 50,
        "iterations": 50,
        "every": 10,
        "thumb": 8,
        "size": 256,
    }
    body = {"method": "code_map", "model": DEFAULT_MODEL, "image": "chelsea", "params": params, "seed": 3}
    answer = requests.post(f"{live_server}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def open_finished_map(page, live_server: str, job_id: str):
    """The app showing the job, once its map has drawn the final layout with every thumbnail."""
    page.goto(f"{live_server}/#job={job_id}")
    code_map = page.locator("convlens-code-map")
    page.wait_for_function(
        "(map) => map.dataset.final === 'loaded' && map.dataset.atlases === '1' && map.dataset.points === '200'",
        arg=code_map.element_handle(timeout=ENDS_MS),
        timeout=ENDS_MS,
    )
    next_frame(page)
    return code_map


def next_frame(page) -> None:
    """Until the page has drawn its next two animation frames (the map draws in one after a change)."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


def colour_count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= 2).sum())


def test_the_map_draws_each_thumbnail_bordered_in_its_labels_colour(page, live_server, code_map_job):
    code_map = open_finished_map(page, live_server, code_map_job)
    pixels = canvas_pixels(code_map.get_by_test_id("code-map-canvas"))
    assert (pixels.min(axis=2) < 250).mean() > 0.02, "thumbnails cover part of the canvas"
    for label, colour in TAB10.items():
        assert colour_count(pixels, colour) > 200, f"{label}'s border colour is drawn"
    legend = code_map.get_by_test_id("code-map-legend").locator("li")
    assert legend.evaluate_all("(items) => items.map((i) => i.dataset.label)") == sorted(TAB10)


def test_a_wheel_zooms_the_drawn_map_about_the_cursor(page, live_server, code_map_job):
    code_map = open_finished_map(page, live_server, code_map_job)
    canvas = code_map.get_by_test_id("code-map-canvas")
    canvas.scroll_into_view_if_needed()
    before = canvas_pixels(canvas).astype(np.float64)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -np.log(2) / 0.002)  # the map zooms by exp(-deltaY x 0.002): x2
    next_frame(page)
    after = canvas_pixels(canvas).astype(np.float64)
    # The middle half of the old picture, scaled x2, is the new one (thumbnails resampled: not exactly).
    height, width = before.shape[:2]
    middle = before[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2]
    enlarged = np.asarray(Image.fromarray(middle.astype(np.uint8)).resize((width, height), Image.BILINEAR))

    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.mean(axis=2).ravel(), b.mean(axis=2).ravel())[0, 1])

    assert similarity(after, enlarged) > 0.6
    assert similarity(after, enlarged) > similarity(after, before) + 0.2


def test_a_click_on_a_thumbnail_opens_that_image(page, live_server, code_map_job):
    code_map = open_finished_map(page, live_server, code_map_job)
    index = 199  # drawn last, so on top of any it overlaps
    canvas = code_map.get_by_test_id("code-map-canvas")
    canvas.scroll_into_view_if_needed()
    x, y = code_map.evaluate(f"(map) => map.screenOf({index})")
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    image = f"dataset:{DATASET}:{index}"
    chosen = page.locator(f'[data-testid="image-thumb"][data-image="{image}"]')
    chosen.wait_for()
    assert chosen.get_attribute("aria-selected") == "true"
    assert page.evaluate("new URL(location.href).searchParams.get('image')") == image
    # The picture behind it is that data-set item, as the data-set API serves it.
    served = requests.get(f"{live_server}/api/images/{image}", timeout=30).content
    item = requests.get(f"{live_server}/api/datasets/{DATASET}/items/{index}", timeout=30).content
    assert served == item


def test_the_map_draws_the_points_streamed_while_the_job_runs(page, live_server, code_map_job):
    params = {"dataset": DATASET, "early_iterations": 50, "iterations": 10_000, "every": 10, "thumb": 8}
    body = {"method": "code_map", "model": DEFAULT_MODEL, "image": "chelsea", "params": params, "seed": 4}
    answer = requests.post(f"{live_server}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    try:
        page.goto(f"{live_server}/#job={job_id}")
        code_map = page.locator("convlens-code-map")
        page.wait_for_function(
            "(map) => map.dataset.points === '200' && map.dataset.atlases === '1'",
            arg=code_map.element_handle(timeout=ENDS_MS),
            timeout=120_000,
        )
        next_frame(page)
        assert requests.get(f"{live_server}/api/jobs/{job_id}", timeout=30).json()["state"] == "running"
        assert code_map.get_attribute("data-final") is None, "drawn from the streamed points, not the result"
        assert int(code_map.get_attribute("data-step")) < 50 + 10_000, "points from before the end of t-SNE"
        pixels = canvas_pixels(code_map.get_by_test_id("code-map-canvas"))
        assert all(colour_count(pixels, colour) > 100 for colour in TAB10.values())
    finally:
        requests.post(f"{live_server}/api/jobs/{job_id}/stop", timeout=30)


def test_thumbnails_larger_than_the_largest_point_are_drawn_as_quads(page, live_server, code_map_job):
    code_map = open_finished_map(page, live_server, code_map_job)
    canvas = code_map.get_by_test_id("code-map-canvas")
    canvas.scroll_into_view_if_needed()
    assert code_map.get_attribute("data-drawn-as") == "points"
    index = 199
    label = requests.get(f"{live_server}/api/datasets/{DATASET}?offset={index}&limit=1", timeout=30).json()
    colour = TAB10[label["items"][0]["label"]]
    box = canvas.bounding_box()
    for _ in range(40):  # x2 each, about point 199, until its thumbnail is over the largest point size
        x, y = code_map.evaluate(f"(map) => map.screenOf({index})")
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.wheel(0, -np.log(2) / 0.002)
        next_frame(page)
        if code_map.get_attribute("data-drawn-as") == "quads":
            break
    assert code_map.get_attribute("data-drawn-as") == "quads"
    pixels = canvas_pixels(canvas)
    assert colour_count(pixels, colour) > 1000, "the thumbnail's border, now hundreds of pixels long"
    assert (pixels.min(axis=2) < 250).mean() > 0.2, "the thumbnail fills much of the canvas"
