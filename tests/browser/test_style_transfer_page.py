"""Style transfer in the real page: frames change on the canvas, the loss chart updates, pause holds, resume, stop."""

from __future__ import annotations

import pytest
from test_page import CHART_INK, RECORDER, open_app, view_state, wait_for_state

pytestmark = pytest.mark.browser

CHART_HASH = """(view) => {
  const chart = view.shadowRoot.querySelector('[data-testid="chart"]');
  return chart && chart.width > 0 ? chart.toDataURL() : "";
}"""
DISTINCT_FRAMES = "(n) => new Set(window.__convlens.frames.map((f) => f.hash)).size >= n"


def start_style_transfer(page, steps: int) -> None:
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="style_transfer"]').click()
    page.get_by_test_id("param-style").select_option("brick")
    page.get_by_test_id("param-size").fill("64")
    page.get_by_test_id("param-steps").fill(str(steps))
    page.get_by_test_id("run").click()


def test_style_transfer_streams_changing_frames_and_loss_and_obeys_pause_resume_stop(
    page, live_server, artifacts
):
    open_app(page, live_server)
    view = page.locator("convlens-job-view")
    view.evaluate(RECORDER)
    start_style_transfer(page, steps=2000)

    page.wait_for_function(DISTINCT_FRAMES, arg=3, timeout=120_000)
    assert view_state(view) == "running"
    page.wait_for_function(f"(view) => ({CHART_INK})(view) > 50", arg=view.element_handle(), timeout=60_000)
    chart_before = view.evaluate(CHART_HASH)
    page.wait_for_function(
        f"([view, before]) => ({CHART_HASH})(view) !== before",
        arg=[view.element_handle(), chart_before],
        timeout=60_000,
    )

    # The step counter shows the run's own speed, from the server's clock at each step.
    page.wait_for_function(
        "(view) => /^\\d+ \\/ 2000 · \\d+(\\.\\d)? it\\/s$/"
        ".test(view.shadowRoot.querySelector('[data-testid=step]').textContent)",
        arg=view.element_handle(),
        timeout=30_000,
    )
    speed = float(page.get_by_test_id("step").inner_text().split("·")[1].split()[0])
    assert 0 < speed < 10_000, speed

    page.get_by_test_id("pause").click()
    wait_for_state(page, view, "paused")
    assert "it/s" not in page.get_by_test_id("step").inner_text(), "no speed shown while paused"
    assert page.get_by_test_id("state").inner_text() == "paused"
    page.wait_for_timeout(1_000)  # an event already on its way may still land
    held = page.evaluate("window.__convlens")
    page.wait_for_timeout(2_000)
    still = page.evaluate("window.__convlens")
    assert still["progress"] == held["progress"], "no progress while paused"
    assert still["frames"] == held["frames"], "no new frame while paused"

    page.get_by_test_id("resume").click()
    wait_for_state(page, view, "running")
    page.wait_for_function(
        "(n) => window.__convlens.progress.length > n", arg=len(held["progress"]), timeout=60_000
    )
    page.wait_for_function(DISTINCT_FRAMES, arg=len({f["hash"] for f in held["frames"]}) + 1, timeout=60_000)

    page.get_by_test_id("stop").click()
    wait_for_state(page, view, "stopped")
    assert page.get_by_test_id("state").inner_text() == "stopped"
    progress = page.evaluate("window.__convlens.progress")
    assert progress == sorted(progress) and progress[-1] < 2000, progress
    page.screenshot(path=str(artifacts / "style_transfer.png"), full_page=True)


def test_the_viewer_chooses_its_frame_rate(page, live_server):
    open_app(page, live_server)
    view = page.locator("convlens-job-view")
    view.evaluate("(view) => view.setAttribute('max-fps', '2')")
    view.evaluate(RECORDER)
    start_style_transfer(page, steps=2000)  # 64 px: tens of steps a second
    page.wait_for_function("() => window.__convlens.frames.length >= 1", timeout=120_000)
    before = page.evaluate("[window.__convlens.frames.length, Math.max(0, ...window.__convlens.progress)]")
    page.wait_for_timeout(4_000)
    after = page.evaluate("[window.__convlens.frames.length, Math.max(0, ...window.__convlens.progress)]")
    page.get_by_test_id("stop").click()
    drawn, steps = after[0] - before[0], after[1] - before[1]
    assert 1 <= drawn <= 2 * 4 + 1, f"{drawn} frames drawn in 4 s at max-fps 2"
    assert steps > 3 * drawn, f"the job ran on ({steps} steps) while the viewer drew {drawn} frames"
