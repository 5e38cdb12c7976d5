"""The real page in a real browser against a real server: what a user sees while a method runs."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
CAT_LABELS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
TERMINAL = ("done", "failed", "stopped")
FRAME_ACK = re.compile(r'"frame_ack",\{[^}]*"seq":(\d+)')

# Installed on a <convlens-job-view>: records a hash of the canvas's pixels each time a frame is drawn
# (the view sets data-seq right after drawImage) and every progress value, so no frame is missed
# between two polls.
RECORDER = """(view) => {
  const record = { frames: [], progress: [] };
  window.__convlens = record;
  const fnv = (text) => {
    let hash = 2166136261;
    for (let i = 0; i < text.length; i++) { hash ^= text.charCodeAt(i); hash = Math.imul(hash, 16777619); }
    return (hash >>> 0).toString(16) + ":" + text.length;
  };
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      const target = mutation.target;
      if (mutation.attributeName === "data-seq" && target.dataset.testid === "canvas") {
        record.frames.push({ seq: Number(target.dataset.seq), hash: fnv(target.toDataURL()) });
      } else if (mutation.attributeName === "aria-valuenow") {
        record.progress.push(Number(target.getAttribute("aria-valuenow")));
      }
    }
  }).observe(view.shadowRoot, { subtree: true, attributes: true, attributeFilter: ["data-seq", "aria-valuenow"] });
}"""

STATE_OF_VIEW = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""

CHART_INK = """(view) => {
  const chart = view.shadowRoot.querySelector('[data-testid="chart"]');
  if (!chart || chart.width === 0 || chart.height === 0) return 0;
  const pixels = chart.getContext("2d").getImageData(0, 0, chart.width, chart.height).data;
  let inked = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked++;
  return inked;
}"""


def open_app(page, live_server: str) -> None:
    page.goto(live_server + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)


def start_deepdream(page, steps: int) -> None:
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="deepdream"]').click()
    page.get_by_test_id("param-steps").fill(str(steps))
    page.get_by_test_id("param-octaves").fill("1")
    page.get_by_test_id("run").click()


def view_state(view) -> str | None:
    return view.evaluate(STATE_OF_VIEW)


def wait_for_state(page, view, *states: str, timeout: float = 30_000) -> None:
    """Until the job view's state is one of ``states`` (its data-state, set with the text)."""
    page.wait_for_function(
        f"([view, states]) => states.includes(({STATE_OF_VIEW})(view))",
        arg=[view.element_handle(), list(states)],
        timeout=timeout,
    )


def wait_for_a_drawn_frame(page, view) -> None:
    page.wait_for_function(
        "(view) => view.shadowRoot.querySelector('canvas[data-seq]')", arg=view.element_handle()
    )


def record_frame_acks(page) -> list[int]:
    """The seq of every `frame_ack` the page sends, over a websocket or by HTTP long-polling."""
    acks: list[int] = []

    def scan(payload: str | bytes | None) -> None:
        if payload:
            text = payload if isinstance(payload, str) else payload.decode("latin-1")
            acks.extend(int(seq) for seq in FRAME_ACK.findall(text))

    page.on("websocket", lambda socket: socket.on("framesent", scan))
    page.on("request", lambda request: scan(request.post_data) if "/socket.io/" in request.url else None)
    return acks


def test_deepdream_streams_frames_progress_metrics_and_predictions(page, live_server, artifacts):
    acks = record_frame_acks(page)
    open_app(page, live_server)
    view = page.locator("convlens-job-view")
    view.evaluate(RECORDER)
    start_deepdream(page, steps=8)

    page.wait_for_function(
        """(view) => {
          const state = view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state;
          const distinct = new Set(window.__convlens.frames.map((f) => f.hash)).size;
          return distinct >= 3 || ["done", "failed", "stopped", "error"].includes(state);
        }""",
        arg=view.element_handle(),
        timeout=180_000,
    )
    record = page.evaluate("window.__convlens")
    hashes = [frame["hash"] for frame in record["frames"]]
    assert len(set(hashes)) >= 3, f"expected 3 distinct frames on the canvas, got {record['frames']}"
    seqs = [frame["seq"] for frame in record["frames"]]
    assert seqs == sorted(seqs), f"frames are drawn newest-last, never an older one after a newer: {seqs}"
    page.wait_for_timeout(200)
    assert set(seqs) <= set(acks), f"each drawn frame is acknowledged (drawn {seqs}, acked {acks})"

    page.wait_for_function(f"(view) => ({CHART_INK})(view) > 50", arg=view.element_handle(), timeout=60_000)

    predictions = page.get_by_test_id("predictions").get_by_test_id("prediction")
    predictions.first.wait_for()
    assert predictions.count() == 5
    labels = [re.sub(r"\s+", " ", text).strip() for text in predictions.locator(".label").all_inner_texts()]
    assert CAT_LABELS & set(labels), f"the top-5 of Chelsea should hold a cat, got {labels}"

    if view_state(view) not in TERMINAL:
        # force: the job may finish between the check and the click, and a disabled Stop is then fine.
        page.get_by_test_id("stop").click(force=True)
    wait_for_state(page, view, "done", "stopped", timeout=60_000)
    state_text = page.get_by_test_id("state").inner_text()
    assert state_text in ("done", "stopped"), state_text

    record = page.evaluate("window.__convlens")
    progress = record["progress"]
    assert len(set(progress)) >= 2 and progress[-1] > progress[0], (
        f"the progress bar should advance: {progress}"
    )
    if state_text == "done":
        assert page.get_by_test_id("progress").evaluate("(bar) => bar.value === bar.max")
        assert page.get_by_test_id("result-json").get_attribute("href").endswith("/result")

    page.screenshot(path=str(artifacts / "deepdream.png"), full_page=True)


def test_pause_resume_and_stop_control_a_long_run(page, live_server):
    open_app(page, live_server)
    view = page.locator("convlens-job-view")
    start_deepdream(page, steps=400)
    state = page.get_by_test_id("state")
    wait_for_a_drawn_frame(page, view)

    page.get_by_test_id("pause").click()
    wait_for_state(page, view, "paused")
    assert state.inner_text() == "paused"
    page.get_by_test_id("resume").click()
    wait_for_state(page, view, "running")
    page.get_by_test_id("stop").click()
    wait_for_state(page, view, "stopped")
    assert state.inner_text() == "stopped"
    assert page.get_by_test_id("stop").is_disabled()


def test_uploading_a_non_image_shows_an_inline_error_naming_file(page, live_server):
    open_app(page, live_server)
    page.get_by_test_id("upload").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"these are notes, not pixels\n"}
    )
    error = page.get_by_test_id("upload-error")
    error.wait_for(state="visible")
    assert error.get_attribute("data-field") == "file"
    assert error.inner_text().startswith("file:"), error.inner_text()


def test_a_bad_parameter_is_shown_next_to_its_field(page, live_server):
    open_app(page, live_server)
    page.locator('[data-testid="method"][data-method="deepdream"]').click()
    page.get_by_test_id("param-steps").fill("100000")
    page.get_by_test_id("run").click()
    field_error = page.get_by_test_id("error-steps")
    field_error.wait_for(state="visible")
    assert field_error.inner_text(), "the server's reason is shown"
    assert (
        page.locator('div.field[data-field="params.steps"]').get_attribute("class").split().count("invalid")
        == 1
    )


@pytest.fixture(scope="module")
def finished_job(live_server: str) -> str:
    job = requests.post(
        f"{live_server}/api/jobs",
        json={
            "method": "deepdream",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"steps": 3, "octaves": 1},
        },
        timeout=60,
    ).json()
    deadline = time.monotonic() + 180
    while requests.get(f"{live_server}/api/jobs/{job['id']}", timeout=30).json()["state"] not in TERMINAL:
        assert time.monotonic() < deadline, "the job did not finish in 180 s"
        time.sleep(0.2)
    return job["id"]


@pytest.mark.parametrize("embedding", ["element", "iframe-page"])
def test_job_view_on_its_own_catches_up_on_a_finished_run(page, live_server, finished_job, embedding):
    """The view outside the app, opened after the job ended: as a custom element in another page
    (with `server`), and as /embed.html?job=… (what an iframe shows)."""
    if embedding == "element":
        html = (
            "<!doctype html><title>another page</title>"
            '<script type="module" src="/assets/convlens.js"></script>'
            f'<convlens-job-view job="{finished_job}" server="{live_server}"></convlens-job-view>'
        )
        page.route(
            f"{live_server}/another-page.html",
            lambda route: route.fulfill(body=html, content_type="text/html"),
        )
        page.goto(f"{live_server}/another-page.html")
    else:
        page.goto(f"{live_server}/embed.html?job={finished_job}")
    view = page.locator("convlens-job-view")
    wait_for_state(page, view, "done", timeout=60_000)
    wait_for_a_drawn_frame(page, view)
    assert page.get_by_test_id("state").inner_text() == "done"
    assert page.get_by_test_id("result-json").is_visible()
    assert page.get_by_test_id("predictions").get_by_test_id("prediction").count() == 5
    assert page.get_by_test_id("result-image").count() >= 1


def test_saliency_result_offers_its_raw_array_for_download(page, live_server):
    open_app(page, live_server)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="saliency"]').click()
    page.get_by_test_id("run").click()
    view = page.locator("convlens-job-view")
    wait_for_state(page, view, "done", timeout=60_000)
    links = page.get_by_test_id("result-array")
    links.first.wait_for(state="visible")
    assert {"gradient_map.npy", "attribution.npy"} <= set(links.all_inner_texts())
    for link in links.all():
        download = page.request.get(link.get_attribute("href"))
        array = np.load(io.BytesIO(download.body()))
        assert array.shape == (224, 224) and array.max() > 0, link.inner_text()


def test_occlusion_heatmap_fills_in_on_the_canvas(page, live_server, artifacts):
    open_app(page, live_server)
    view = page.locator("convlens-job-view")
    view.evaluate(RECORDER)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="occlusion"]').click()
    page.get_by_test_id("param-window").fill("48")
    page.get_by_test_id("param-stride").fill("16")
    page.get_by_test_id("param-batch_size").fill("13")
    page.get_by_test_id("run").click()
    wait_for_state(page, view, "done", timeout=120_000)
    record = page.evaluate("window.__convlens")
    hashes = [frame["hash"] for frame in record["frames"]]
    # 12x12 window positions in batches of 13: the map is drawn in several steps, each one different.
    assert len(set(hashes)) >= 3, f"the heatmap should fill in over several frames, got {record['frames']}"
    progress = record["progress"]
    assert progress == sorted(progress) and len(set(progress)) >= 3, progress
    page.screenshot(path=str(artifacts / "occlusion.png"), full_page=True)


def test_a_channel_field_follows_its_layer_and_refuses_a_channel_past_it(page, live_server):
    open_app(page, live_server)
    page.locator('[data-testid="method"][data-method="activation_max"]').click()
    channel_help = page.locator('div.field[data-field="params.channel"] .help')
    page.get_by_test_id("param-layer").select_option("_blocks.9")
    assert channel_help.inner_text().endswith("0 – 111 (112 channels)"), channel_help.inner_text()
    page.get_by_test_id("param-layer").select_option("_blocks.1")
    assert channel_help.inner_text().endswith("0 – 23 (24 channels)"), channel_help.inner_text()
    page.get_by_test_id("param-channel").fill("24")
    page.get_by_test_id("run").click()
    field_error = page.get_by_test_id("error-channel")
    field_error.wait_for(state="visible")
    assert "24 channels" in field_error.inner_text()
    assert page.get_by_test_id("state").get_attribute("data-state") == "idle", "no job was started"
