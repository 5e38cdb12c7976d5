"""The adversarial topic in a real browser: an attack's three captioned panels with their top-5s, and the
linear explanation's ε slider, recomputed in the page."""

from __future__ import annotations

import math

import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, fetch_npy, fetch_png
from test_page import open_app, wait_for_state

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
PANELS = ("original", "perturbation", "adversarial")
X = [2, -1, 3, -2, 2, 2, 1, -4, 5, 1]
W = [-1, -1, 1, -1, 1, -1, 1, 1, -1, 1]
RED = (214, 39, 40)


def run_from_the_page(page, live_server: str, method: str, params: dict[str, str]) -> dict:
    """Run ``method`` on chelsea from the page with ``params`` typed into its form; the finished job's result."""
    open_app(page, live_server)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator(f'[data-testid="method"][data-method="{method}"]').click()
    for name, value in params.items():
        page.get_by_test_id(f"param-{name}").fill(value)
    page.get_by_test_id("run").click()
    wait_for_state(page, page.locator("convlens-job-view"), "done", timeout=120_000)
    job_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')")
    return requests.get(f"{live_server}/api/jobs/{job_id}/result", timeout=30).json()


def area_shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWxC averaged over the cells of a height x width grid: cell (i, j) is rows floor(i·H/height) to
    ceil((i+1)·H/height) and the columns likewise (adaptive average pooling, torch's "area")."""
    rows, columns = image.shape[:2]
    out = np.empty((height, width, image.shape[2]))
    for i in range(height):
        top, bottom = i * rows // height, -(-(i + 1) * rows // height)
        for j in range(width):
            left, right = j * columns // width, -(-(j + 1) * columns // width)
            out[i, j] = image[top:bottom, left:right].mean(axis=(0, 1))
    return out


def as_pixels(image: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(image, 0, 1) * 255 + 0.5).astype(np.int16)


def shown_top(page, panel: str) -> list[tuple[str, str]]:
    items = page.locator(f'[data-testid="panel-top"][data-panel="{panel}"] [data-testid="panel-prediction"]')
    labels, percents = (
        items.locator(".label").all_inner_texts(),
        items.locator(".probability").all_inner_texts(),
    )
    return list(zip(labels, percents, strict=True))


def expected_top(top: list[dict]) -> list[tuple[str, str]]:
    return [(entry["label"], f"{entry['probability'] * 100:.1f}%") for entry in top]


def test_a_pgd_run_shows_three_panels_their_top5s_the_norms_and_the_flip(page, live_server, artifacts):
    result = run_from_the_page(page, live_server, "adversarial_attack", {"steps": "6"})
    data = result["data"]
    assert data["attack"] == "pgd" and data["flipped_at"] is not None, data
    view = page.locator("convlens-job-view")
    # One strip of three panels however many frames came: its label stays, the panels are split from it.
    assert page.get_by_test_id("panels").count() == 1
    canvases = page.get_by_test_id("panel-canvas")
    assert [canvases.nth(i).get_attribute("data-panel") for i in range(3)] == list(PANELS)
    captions = page.locator('[data-testid="panels"] figcaption .name').all_inner_texts()
    assert captions == list(PANELS)

    # The final frame again, losslessly (a reopened view subscribes anew: the newest frame and predictions).
    view.evaluate("(view) => view.setAttribute('format', 'png')")
    last = str(data["steps"])
    for panel in PANELS:
        page.locator(f'[data-testid="panel-canvas"][data-panel="{panel}"][data-step="{last}"]').wait_for(
            state="attached"
        )
    shown = {
        panel: canvas_pixels(page.locator(f'[data-testid="panel-canvas"][data-panel="{panel}"]'))
        for panel in PANELS
    }
    height, width = shown["original"].shape[:2]
    assert width == 512 // 3 and {p.shape for p in shown.values()} == {(height, width, 3)}
    picture = fetch_png(page, f"{live_server}/api/images/chelsea?model={DEFAULT_MODEL}") / 255.0
    adversarial = fetch_npy(page, live_server + result["array_urls"]["adversarial"])
    delta = fetch_npy(page, live_server + result["array_urls"]["perturbation"])
    grey = 0.5 + data["perturbation_scale"] * delta
    for panel, source in (("original", picture), ("perturbation", grey), ("adversarial", adversarial)):
        expected = as_pixels(area_shrink(source, height, width))
        assert np.abs(shown[panel] - expected).max() <= 1, panel
    middle = shown["perturbation"]
    assert abs(middle.mean() - 128) < 12 and np.abs(middle - shown["original"]).mean() > 30, "grey-ish noise"
    assert np.abs(shown["adversarial"] - shown["original"]).max() <= data["epsilon"] + 1

    # Each picture's top-5 under it; the perturbation has none, but says its amplification.
    assert shown_top(page, "original") == expected_top(data["top5_before"])
    assert shown_top(page, "adversarial") == expected_top(data["top5_after"])
    assert page.locator('[data-testid="panel-top"][data-panel="perturbation"]').is_hidden()
    notes = page.get_by_test_id("panel-note").all_inner_texts()
    assert (
        notes[1].strip() == f"×{data['perturbation_scale']:.4g} amplified" and not notes[0] and not notes[2]
    )

    assert (
        page.get_by_test_id("attack-norms").inner_text()
        == f"L∞ {data['linf']:.2f}/255 · L2 {data['l2']:.2f}/255"
    )
    flip = page.get_by_test_id("attack-flip").inner_text()
    before = data["top5_before"][0]["label"]
    assert flip == f"label flipped at step {data['flipped_at']}: {before} → {data['flipped_to']['label']}", (
        flip
    )
    assert data["flipped_to"]["label"] != before
    page.screenshot(path=str(artifacts / "adversarial-attack.png"), full_page=True)


def deck(epsilon: float) -> tuple[float, float, list[float]]:
    """The deck's score, p(class 1) and contributions w_i·x'_i after moving x by ε along sign(w)."""
    moved = [x + epsilon * math.copysign(1, w) for x, w in zip(X, W, strict=True)]
    contributions = [w * x for x, w in zip(moved, W, strict=True)]
    score = sum(contributions)
    return score, 1 / (1 + math.exp(-score)), contributions


def red_bar_lengths(bars: np.ndarray) -> list[int]:
    """The length of each dimension's red bar (the contribution after the move), slot i 40 pixels wide."""
    red = np.all(bars == RED, axis=2)
    return [int(red[:, 40 * i + 20 + 7].sum()) for i in range(len(X))]


def test_the_linear_demos_slider_recomputes_the_decks_numbers(page, live_server, artifacts):
    result = run_from_the_page(page, live_server, "linear_explanation", {})
    assert result["data"]["x"] == X and result["data"]["w"] == W
    slider = page.get_by_test_id("linear-epsilon")
    score, probability = page.get_by_test_id("linear-score"), page.get_by_test_id("linear-probability")
    widest = max(abs(v) for v in [w * x for x, w in zip(X, W, strict=True)] + deck(2.0)[2])
    for epsilon, shown_score, shown_p in ((0.5, "2", "0.8808"), (0.0, "-3", "0.0474"), (0.5, "2", "0.8808")):
        slider.fill(str(epsilon))
        page.locator(f'.linear-demo[data-epsilon="{epsilon:g}"]').wait_for(state="attached")
        expected_score, expected_p, contributions = deck(epsilon)
        assert score.inner_text() == shown_score and float(shown_score) == expected_score
        assert probability.inner_text() == shown_p and float(shown_p) == round(expected_p, 4)
        rows = page.get_by_test_id("linear-row")
        assert [float(rows.nth(i).locator("td").last.inner_text()) for i in range(10)] == contributions
        lengths = red_bar_lengths(canvas_pixels(page.get_by_test_id("linear-bars")))
        assert lengths == [round(abs(v) / widest * 110) for v in contributions], lengths
    assert round(deck(0.5)[1], 2) == 0.88 and round(deck(0.0)[1], 4) == 0.0474
    page.screenshot(path=str(artifacts / "linear-demo.png"), full_page=True)
