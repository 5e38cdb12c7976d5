"""Socket.IO events through Flask-SocketIO's test client: subscribe, frames, progress, stop, unsubscribe."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from convlens.errors import BadInput
from convlens.events import Frame, Log, Predictions, Progress, Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL

ENDS = 120.0
"""Seconds a job of a few steps is given to end: a hang guard, never reached when the job works."""


def start(client, method: str, params: dict, model: str = DEFAULT_MODEL) -> str:
    answer = client.post(
        "/api/jobs", json={"method": method, "model": model, "image": "chelsea", "params": params}
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def server_job(app, job_id: str):
    """The server's own record of the job (its ``ended`` event is set once viewers were sent its end)."""
    return app.extensions["convlens"].jobs.get(job_id)


def ended(app, job_id: str):
    """The job, once it has ended and its final events were sent."""
    job = server_job(app, job_id)
    assert job.ended.wait(ENDS), f"job {job_id} did not end within {ENDS} s (state {job.state})"
    return job


def for_job(packets: list[dict], job_id: str) -> list[dict]:
    return [p for p in packets if (p["args"][0].get("job") or p["args"][0].get("id")) == job_id]


def collect(sio, job_id: str, until: set[str], timeout: float = ENDS, ack: bool = True) -> list[dict]:
    """Received events until one named in ``until`` arrives; frames are acknowledged like a browser does."""
    received: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sio.get_received()
        for packet in batch:
            received.append(packet)
            if packet["name"] == "frame" and ack:
                sio.emit("frame_ack", {"job": job_id, "seq": packet["args"][0]["seq"]})
        if any(p["name"] in until for p in batch):
            return received
        time.sleep(0.02)
    raise AssertionError(f"none of {until} within {timeout} s; got {[p['name'] for p in received]}")


def test_a_viewer_receives_frames_progress_metrics_and_done(client, socket_client):
    job_id = start(client, "deepdream", {"steps": 4, "octaves": 2})
    ack = socket_client.emit("subscribe", {"job": job_id}, callback=True)
    assert ack["ok"] is True
    events = collect(socket_client, job_id, {"done", "failed"})
    names = [p["name"] for p in events]
    assert names[0] == "job" and "failed" not in names
    frames = [p["args"][0] for p in events if p["name"] == "frame"]
    assert frames, "at least one frame reaches the viewer"
    first = frames[0]
    assert first["mime"] == "image/jpeg" and isinstance(first["data"], bytes)
    assert Image.open(io.BytesIO(first["data"])).size == (first["width"], first["height"])
    progress = [p["args"][0] for p in events if p["name"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == 8
    # Each step carries the server's clock at that step: in order, within the job's run.
    job = client.get(f"/api/jobs/{job_id}").get_json()
    times = [p["time"] for p in progress]
    assert times == sorted(times) and job["started"] <= times[0] and times[-1] <= job["finished"]
    assert job["progress"]["time"] == times[-1]
    assert any(p["name"] == "metrics" and "objective" in p["args"][0]["values"] for p in events)
    done = next(p["args"][0] for p in events if p["name"] == "done")
    assert done["result"]["model"]["id"] == DEFAULT_MODEL


def test_a_late_viewer_first_gets_the_latest_frame_then_the_end(app, client, socket_client):
    job_id = start(client, "deepdream", {"steps": 3, "octaves": 1})
    ended(app, job_id)
    socket_client.emit("subscribe", {"job": job_id, "format": "png"}, callback=True)
    received = socket_client.get_received()
    names = [p["name"] for p in received]
    logs = names.count("log")
    assert names == ["job", "metrics_history", *["log"] * logs, "frame", "done"], "the end is not replayed"
    frame = received[-2]["args"][0]
    assert frame["seq"] == 2 and frame["mime"] == "image/png"
    history = received[1]["args"][0]["history"]
    assert len(history) == 3
    done = received[-1]["args"][0]
    assert done["job"] == job_id and done["result"]["method"] == "deepdream"
    assert done["result"] == client.get(f"/api/jobs/{job_id}").get_json()["result"]


def run_chatty(ctx):
    for line in range(250):
        yield Log(f"line {line}", level="info" if line % 2 else "warning")
    yield Result(data={"lines": 250})


def run_failing(ctx):
    yield Log("going down")
    raise BadInput("params.depth", "deeper than the model")


def test_a_late_viewer_of_a_failed_job_gets_failed_with_its_error(app, client, socket_client, extra_methods):
    extra_methods(Method(name="failing", title="Failing", topic="Tests", run=run_failing))
    job_id = start(client, "failing", {})
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    received = socket_client.get_received()
    assert [p["name"] for p in received] == ["job", "metrics_history", "log", "failed"]
    expected = {"error": "deeper than the model", "field": "params.depth"}
    assert received[-1]["args"][0] == {"job": job_id, "error": expected}
    assert client.get(f"/api/jobs/{job_id}").get_json()["error"] == expected


def test_a_late_viewer_of_a_stopped_job_gets_stopped(app, client, socket_client):
    job_id = start(client, "deepdream", {"steps": 300, "octaves": 1})
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200
    assert ended(app, job_id).state == "stopped"
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    received = socket_client.get_received()
    assert received[0]["name"] == "job" and received[0]["args"][0]["state"] == "stopped"
    assert received[-1] == {"name": "stopped", "args": [{"job": job_id}], "namespace": "/"}
    assert [p["name"] for p in received].count("stopped") == 1


def test_a_late_viewer_gets_exactly_the_last_200_log_lines_in_order(
    app, client, socket_client, extra_methods
):
    extra_methods(Method(name="chatty", title="Chatty", topic="Tests", run=run_chatty))
    job_id = start(client, "chatty", {})
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    logs = [p["args"][0] for p in socket_client.get_received() if p["name"] == "log"]
    assert logs == [
        {"job": job_id, "level": "info" if line % 2 else "warning", "message": f"line {line}"}
        for line in range(50, 250)
    ]


def test_webp_frames_arrive_as_webp_and_decode_to_the_frame(app, client, socket_client):
    job_id = start(client, "deepdream", {"steps": 4, "octaves": 1})
    assert socket_client.emit("subscribe", {"job": job_id, "format": "webp"}, callback=True)["ok"] is True
    frames = [
        p["args"][0] for p in collect(socket_client, job_id, {"done", "failed"}) if p["name"] == "frame"
    ]
    assert frames
    for frame in frames:
        picture = Image.open(io.BytesIO(frame["data"]))
        assert frame["mime"] == "image/webp" and picture.format == "WEBP"
        assert picture.size == (frame["width"], frame["height"])
    # The newest frame, as WebP and as (lossless) PNG to two late viewers: the same picture.
    late = {}
    for fmt in ("webp", "png"):
        viewer = app.extensions["socketio"].test_client(app, flask_test_client=client)
        viewer.emit("subscribe", {"job": job_id, "format": fmt}, callback=True)
        (late[fmt],) = (p["args"][0] for p in viewer.get_received() if p["name"] == "frame")
        viewer.disconnect()
    assert late["webp"]["mime"] == "image/webp" and late["webp"]["seq"] == late["png"]["seq"] == 3
    webp, png = (block_means(Image.open(io.BytesIO(late[fmt]["data"]))) for fmt in ("webp", "png"))
    assert webp.shape == png.shape and png.std() > 10
    assert np.abs(webp - png).mean() < 3, "lossy in the details, but the same picture"


def block_means(picture: Image.Image, block: int = 8) -> np.ndarray:
    """The picture's RGB means over ``block``-pixel squares: what lossy coding keeps of it."""
    pixels = np.asarray(picture.convert("RGB"), dtype=float)
    rows, columns = (size // block * block for size in pixels.shape[:2])
    squares = pixels[:rows, :columns].reshape(rows // block, block, columns // block, block, 3)
    return squares.mean(axis=(1, 3))


def test_stop_over_the_socket(client, socket_client):
    job_id = start(client, "deepdream", {"steps": 300, "octaves": 1})
    socket_client.emit("subscribe", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"frame"})
    assert socket_client.emit("stop", {"job": job_id}, callback=True)["ok"] is True
    events = collect(socket_client, job_id, {"stopped"})
    assert events[-1]["args"][0]["job"] == job_id
    assert client.get(f"/api/jobs/{job_id}").get_json()["state"] == "stopped"


class HeldInPause(threading.Event):
    """A job's ``resume_event`` that tells (``settled``) when the job's thread waits on it, or has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.settled = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.settled.set()
        return super().wait(timeout)


@pytest.fixture
def held_in_pause(app, monkeypatch):
    """``held_in_pause(job_id)`` waits until the job's thread is held in its pause; it fails if the job ends
    instead. Each job started during the test can be watched so."""
    jobs = app.extensions["convlens"].jobs
    start_task = jobs.start_task

    def start_watched(run, job):
        job.resume_event = HeldInPause()

        def run_then_settle(job):
            try:
                run(job)
            finally:
                job.resume_event.settled.set()

        return start_task(run_then_settle, job)

    monkeypatch.setattr(jobs, "start_task", start_watched)

    def wait(job_id: str):
        job = server_job(app, job_id)
        assert job.resume_event.settled.wait(ENDS), f"job {job_id} neither paused nor ended in {ENDS} s"
        assert not job.ended.is_set(), "the job ran to its end through the pause"
        return job

    return wait


def test_pause_holds_the_job_until_resume(app, client, socket_client, held_in_pause):
    job_id = start(client, "deepdream", {"steps": 30, "octaves": 1})
    socket_client.emit("subscribe", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"frame"})
    assert socket_client.emit("pause", {"job": job_id}, callback=True)["job"]["state"] == "paused"
    job = held_in_pause(job_id)
    assert job.state == "paused" and 1 <= job.frames < 30
    assert client.get(f"/api/jobs/{job_id}").get_json()["state"] == "paused"
    socket_client.emit("resume", {"job": job_id}, callback=True)
    events = collect(socket_client, job_id, {"done"})
    states = [p["args"][0]["state"] for p in events if p["name"] == "job"]
    assert states[-2:] == ["running", "done"]
    assert client.get(f"/api/jobs/{job_id}").get_json()["frames"] == 30


def acknowledge_all(sio, job_id: str) -> None:
    """Takes what the viewer was sent, acknowledging each frame, until it has no frame in flight."""
    while frames := [p for p in sio.get_received() if p["name"] == "frame"]:
        for frame in frames:
            sio.emit("frame_ack", {"job": job_id, "seq": frame["args"][0]["seq"]})


def test_an_unsubscribed_viewer_gets_nothing_more(app, client, held_in_pause):
    socketio = app.extensions["socketio"]
    leaver, stayer = (socketio.test_client(app, flask_test_client=client) for _ in range(2))
    job_id = start(client, "deepdream", {"steps": 30, "octaves": 1})
    for viewer in (leaver, stayer):
        assert viewer.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    collect(leaver, job_id, {"frame"})
    # Unsubscribed while the job is held in a pause: nothing of the job can be on its way to the viewer.
    stayer.emit("pause", {"job": job_id}, callback=True)
    held_in_pause(job_id)
    for viewer in (leaver, stayer):
        acknowledge_all(viewer, job_id)  # ready for the next frame, had they still wanted it
    assert leaver.emit("unsubscribe", {"job": job_id}, callback=True) == {"ok": True}
    stayer.emit("resume", {"job": job_id}, callback=True)
    ended(app, job_id)
    after = stayer.get_received()
    assert {"job", "frame", "progress", "done"} <= {p["name"] for p in for_job(after, job_id)}
    assert leaver.get_received() == [], "an unsubscribed viewer was still sent the job's events"
    leaver.disconnect()
    stayer.disconnect()


def test_bad_socket_requests_are_answered_not_crashed(socket_client):
    assert socket_client.emit("subscribe", {"job": "nope"}, callback=True) == {
        "ok": False,
        "error": "unknown job 'nope'",
        "field": "job",
    }
    assert socket_client.emit("subscribe", "not an object", callback=True)["field"] == "body"
    assert socket_client.emit("stop", {}, callback=True)["field"] == "job"
    assert socket_client.is_connected()


def test_two_jobs_stream_to_their_own_rooms(client, app):
    socketio = app.extensions["socketio"]
    first, second = (socketio.test_client(app, flask_test_client=client) for _ in range(2))
    job_a = start(client, "deepdream", {"steps": 3, "octaves": 1})
    job_b = start(client, "deepdream", {"steps": 3, "octaves": 1}, model="efficientnet_lite0.pt")
    first.emit("subscribe", {"job": job_a}, callback=True)
    second.emit("subscribe", {"job": job_b}, callback=True)
    events_a = collect(first, job_a, {"done"})
    events_b = collect(second, job_b, {"done"})
    assert {p["args"][0]["job"] for p in events_a if p["name"] in ("frame", "progress", "metrics")} == {job_a}
    assert {p["args"][0]["job"] for p in events_b if p["name"] in ("frame", "progress", "metrics")} == {job_b}
    first.disconnect()
    second.disconnect()


def test_a_paced_job_sends_few_messages_and_every_metrics_point(app, client, socket_client, monkeypatch):
    # Sends at most once an hour: what a job makes between two sends is held back and collected, so a
    # viewer gets the run in a few messages, and still every metrics point and the last frame and step.
    monkeypatch.setattr(app.extensions["convlens"].jobs, "send_interval", 3600.0)
    steps = 12
    job_id = start(client, "class_model", {"steps": steps, "target": 1, "every": 1})
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    events = collect(socket_client, job_id, {"done", "failed"})
    names = [p["name"] for p in events]
    assert "failed" not in names
    history = next(p["args"][0]["history"] for p in events if p["name"] == "metrics_history")
    sent = [point for p in events if p["name"] == "metrics" for point in p["args"][0]["points"]]
    seen = {point["step"]: point["values"] for point in history + sent}
    assert sorted(seen) == list(range(steps + 1)), "no metrics point is lost"
    assert all(set(values) >= {"score", "probability"} for values in seen.values())
    progress = [p["args"][0] for p in events if p["name"] == "progress"]
    logs = names.count("log")
    assert progress and len(progress) <= logs + 2 < steps, names
    assert progress[-1]["step"] == steps
    frames = [p["args"][0] for p in events if p["name"] == "frame"]
    assert frames and frames[-1]["step"] == steps and len(frames) <= logs + 2


PANELS = ("original", "adversarial")
TOP_STEPS = 6


def tops_at(step: int) -> dict[str, list[dict]]:
    """What the ``ranking`` method says at ``step``: each panel's classes, best first, moving with the step."""
    return {
        panel: [
            {"class": np.int64(10 * offset + rank + step), "label": f"{panel} {rank}", "probability": p}
            for rank, p in enumerate(np.float32([0.5, 0.3, 0.2]) / (step + 1))
        ]
        for offset, panel in enumerate(PANELS)
    }


def run_ranking(ctx):
    """Two panels a step, with their top classes (numpy numbers, as a method computes them), in lists it reuses."""
    tops = tops_at(0)
    for step in range(TOP_STEPS):
        yield Frame(np.full((8, 16, 3), 40 * step, dtype=np.uint8), step=step, label=" | ".join(PANELS))
        tops.update(tops_at(step))
        yield Predictions(tops, step=step)
        yield Progress(step + 1, TOP_STEPS)
    tops.clear()  # after the last yield: what was yielded must not change with it
    yield Result(data={})


def as_sent(tops: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``tops`` as JSON carries it: plain ints, strings and floats (float32 made float64 exactly)."""
    return {
        panel: [
            {"class": int(e["class"]), "label": e["label"], "probability": float(e["probability"])}
            for e in top
        ]
        for panel, top in tops.items()
    }


def test_predictions_reach_a_viewer_as_yielded_and_the_newest_last(app, client, socket_client, extra_methods):
    extra_methods(Method(name="ranking", title="Ranking", topic="Tests", run=run_ranking))
    job_id = start(client, "ranking", {})
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    events = collect(socket_client, job_id, {"done", "failed"})
    assert "failed" not in [p["name"] for p in events]
    sent = [p["args"][0] for p in events if p["name"] == "predictions"]
    assert sent, "the viewer gets the panels' top classes"
    for message in sent:
        assert message == {"job": job_id, "step": message["step"], "tops": as_sent(tops_at(message["step"]))}
    assert sent[-1]["step"] == TOP_STEPS - 1, "the newest is sent before the job ends"
    result = client.get(f"/api/jobs/{job_id}/result").get_json()
    assert result["panel_predictions"] == {"step": TOP_STEPS - 1, "tops": as_sent(tops_at(TOP_STEPS - 1))}


def test_a_late_viewer_gets_the_newest_predictions_after_the_frame(app, client, socket_client, extra_methods):
    extra_methods(Method(name="ranking", title="Ranking", topic="Tests", run=run_ranking))
    job_id = start(client, "ranking", {})
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    received = socket_client.get_received()
    names = [p["name"] for p in received]
    assert names == ["job", "metrics_history", "frame", "predictions", "done"]
    newest = received[3]["args"][0]
    assert newest == {"job": job_id, "step": TOP_STEPS - 1, "tops": as_sent(tops_at(TOP_STEPS - 1))}
    assert received[2]["args"][0]["step"] == newest["step"], (
        "the frame and the lists under it are of one step"
    )


def test_a_paced_job_sends_only_the_newest_predictions(
    app, client, socket_client, extra_methods, monkeypatch
):
    monkeypatch.setattr(app.extensions["convlens"].jobs, "send_interval", 3600.0)
    extra_methods(Method(name="ranking", title="Ranking", topic="Tests", run=run_ranking))
    job_id = start(client, "ranking", {})
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    events = collect(socket_client, job_id, {"done", "failed"})
    steps = [p["args"][0]["step"] for p in events if p["name"] == "predictions"]
    assert steps and steps[-1] == TOP_STEPS - 1 and len(steps) <= 2 < TOP_STEPS, steps


@pytest.mark.parametrize(
    ("tops", "error", "says"),
    [
        ([{"class": 1, "label": "a", "probability": 0.5}], TypeError, "map panel names to lists, got list"),
        (
            {"a": [{"class": 1.0, "label": "a", "probability": 0.5}]},
            TypeError,
            r"\['class'\] must be an integer",
        ),
        ({"a": [{"class": 1, "label": 7, "probability": 0.5}]}, TypeError, r"\['label'\] must be a string"),
        ({"a": [{"class": 1, "label": "a", "probability": 1.5}]}, ValueError, r"in \[0, 1\], got 1.5"),
        (
            {"a": [{"class": 1, "label": "a", "probability": float("nan")}]},
            ValueError,
            r"in \[0, 1\], got nan",
        ),
        ({"a": [{"class": 1, "label": "a"}]}, ValueError, r"tops\['a'\]\[0\] must be \{'class'"),
    ],
)
def test_predictions_that_are_not_top_class_lists_say_what_is_wrong(tops, error, says):
    with pytest.raises(error, match=says):
        Predictions(tops)


def test_a_job_yielding_bad_predictions_fails_with_what_was_wrong(app, client, extra_methods):
    def run(ctx):
        yield Predictions({"adversarial": [{"class": 3, "label": "cat", "probability": 2.0}]})

    extra_methods(Method(name="bad_tops", title="Bad tops", topic="Tests", run=run))
    job = ended(app, start(client, "bad_tops", {}))
    assert job.state == "failed"
    assert "tops['adversarial'][0]['probability'] must be in [0, 1], got 2.0" in job.error["error"]


def top_list(name: str, first: int) -> list[dict]:
    """A panel's top-3: classes ``first``, ``first + 1``, ``first + 2`` with falling probabilities."""
    return [
        {"class": first + rank, "label": f"{name} {first + rank}", "probability": p}
        for rank, p in enumerate([0.5, 0.25, 0.125])
    ]


GAUSSIAN = "gaussian · a | gaussian · b"
STRIPES = "stripes · a | stripes · b"
HISTOGRAM = "histogram"
PICTURES = [np.random.default_rng(seed).integers(0, 256, (6, 10, 3), dtype=np.uint8) for seed in range(4)]
"""The pictures the ``patterned`` method shows, in order (random, so that no two are alike)."""
GA0, GB0, SA1, SB1, GA3, SUMMARY4 = (
    top_list(name, first) for first, name in enumerate("ga gb sa sb ga s".split(), 1)
)
"""The lists the ``patterned`` method yields, by panel and the step it names them at."""
PATTERNED = [
    (Frame(PICTURES[0], step=0, label=GAUSSIAN), {"gaussian · a": GA0, "gaussian · b": GB0}),
    (Frame(PICTURES[1], step=1, label=STRIPES), {"stripes · a": SA1, "stripes · b": SB1}),
    (Frame(PICTURES[2], step=2, label=HISTOGRAM), None),
    # The gaussian panels again, a list only for one of them: the other keeps step 0's.
    (Frame(PICTURES[3], step=3, label=GAUSSIAN), {"gaussian · a": GA3}),
    # A list of a panel that no frame shows.
    (None, {"summary": SUMMARY4}),
]


def patterned(released: threading.Event | None = None) -> Method:
    """A method yielding frames under three labels, like noise_predictions' patterns then histograms, each
    with its panels' lists; it starts once ``released`` is set."""

    def run(ctx):
        if released is not None:
            assert released.wait(ENDS)
        for step, (frame, tops) in enumerate(PATTERNED):
            if frame is not None:
                yield frame
            if tops is not None:
                yield Predictions(tops, step=step)
        yield Result(data={})

    return Method(name="patterned", title="Patterned", topic="Tests", run=run)


def test_a_late_viewer_sees_the_newest_frame_of_each_label_and_every_panels_newest_top(
    app, client, socket_client, extra_methods
):
    extra_methods(patterned())
    job_id = start(client, "patterned", {})
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id, "format": "png"}, callback=True)["ok"] is True
    received = socket_client.get_received()
    assert [p["name"] for p in received] == [
        "job", "metrics_history",
        "frame", "predictions", "predictions",  # the gaussian strip: its panels' lists are of two steps
        "frame", "predictions",  # the stripes
        "frame",  # the histogram, whose panel has no list
        "predictions",  # the summary, which no frame shows
        "done",
    ]  # fmt: skip
    frames = [p["args"][0] for p in received if p["name"] == "frame"]
    # In the order the labels first came, each its newest picture, exactly (PNG) as the method yielded it.
    assert [(f["label"], f["step"], f["seq"]) for f in frames] == [
        (GAUSSIAN, 3, 3),
        (STRIPES, 1, 1),
        (HISTOGRAM, 2, 2),
    ]
    for frame, picture in zip(frames, (PICTURES[3], PICTURES[1], PICTURES[2]), strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(frame["data"])).convert("RGB")), picture)
    lists = [p["args"][0] for p in received if p["name"] == "predictions"]
    assert lists == [
        {"job": job_id, "step": 3, "tops": {"gaussian · a": GA3}},
        {"job": job_id, "step": 0, "tops": {"gaussian · b": GB0}},
        {"job": job_id, "step": 1, "tops": {"stripes · a": SA1, "stripes · b": SB1}},
        {"job": job_id, "step": 4, "tops": {"summary": SUMMARY4}},
    ]
    # The result keeps every panel's newest list too, with the newest event's step.
    result = client.get(f"/api/jobs/{job_id}/result").get_json()
    newest = {
        "gaussian · a": GA3,
        "gaussian · b": GB0,
        "stripes · a": SA1,
        "stripes · b": SB1,
        "summary": SUMMARY4,
    }
    assert result["panel_predictions"] == {"step": 4, "tops": newest}


def test_a_live_viewer_gets_the_newest_frame_at_the_jobs_pace_and_every_panels_newest_top(
    app, client, socket_client, extra_methods, monkeypatch
):
    # One send an hour: what the run makes is held back until its end, then sent as a live send is: the
    # job's single newest frame (not one a label: that is a late viewer's catch-up), with every panel's
    # newest list (a panel whose frame came between two sends keeps its list).
    monkeypatch.setattr(app.extensions["convlens"].jobs, "send_interval", 3600.0)
    released = threading.Event()
    extra_methods(patterned(released))
    job_id = start(client, "patterned", {})
    assert socket_client.emit("subscribe", {"job": job_id, "format": "png"}, callback=True)["ok"] is True
    released.set()
    events = collect(socket_client, job_id, {"done", "failed"})
    frames = [p["args"][0] for p in events if p["name"] == "frame"]
    assert [(f["label"], f["seq"]) for f in frames] == [(GAUSSIAN, 3)]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(frames[0]["data"])).convert("RGB")), PICTURES[3])
    lists = [p["args"][0] for p in events if p["name"] == "predictions"]
    shown = {panel: (message["step"], top) for message in lists for panel, top in message["tops"].items()}
    assert shown == {
        "gaussian · a": (3, GA3),
        "gaussian · b": (0, GB0),
        "stripes · a": (1, SA1),
        "stripes · b": (1, SB1),
        "summary": (4, SUMMARY4),
    }
    assert len(lists) == 4, "one message a step"


def test_a_late_viewer_gets_the_32_labels_whose_newest_frames_are_newest(
    app, client, socket_client, extra_methods
):
    # 40 labels, label 0 shown again after label 20: labels 1 to 8 have the oldest newest frames.
    order = [*range(21), 0, *range(21, 40)]

    def run(ctx):
        for step, label in enumerate(order):
            yield Frame(np.full((2, 2, 3), step, dtype=np.uint8), step=step, label=f"label {label}")
        yield Result()

    extra_methods(Method(name="many_labels", title="Many labels", topic="Tests", run=run))
    job_id = start(client, "many_labels", {})
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id, "format": "png"}, callback=True)["ok"] is True
    frames = [p["args"][0] for p in socket_client.get_received() if p["name"] == "frame"]
    kept = [0, *range(9, 40)]
    assert [frame["label"] for frame in frames] == [f"label {label}" for label in kept]
    newest = {label: step for step, label in enumerate(order)}
    assert [frame["step"] for frame in frames] == [newest[label] for label in kept]
