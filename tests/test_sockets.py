"""Socket.IO events through Flask-SocketIO's test client: subscribe, frames, progress, stop."""

from __future__ import annotations

import io
import time

from PIL import Image

from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL


def start(client, method: str, params: dict, model: str = DEFAULT_MODEL) -> str:
    answer = client.post(
        "/api/jobs", json={"method": method, "model": model, "image": "chelsea", "params": params}
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def collect(sio, job_id: str, until: set[str], timeout: float = 120.0, ack: bool = True) -> list[dict]:
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


def test_a_late_viewer_first_gets_the_latest_frame(client, socket_client):
    job_id = start(client, "deepdream", {"steps": 3, "octaves": 1})
    deadline = time.monotonic() + 120
    while client.get(f"/api/jobs/{job_id}").get_json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    socket_client.emit("subscribe", {"job": job_id, "format": "png"}, callback=True)
    received = socket_client.get_received()
    names = [p["name"] for p in received]
    assert names[:2] == ["job", "metrics_history"]
    frame = next(p["args"][0] for p in received if p["name"] == "frame")
    assert frame["seq"] == 2 and frame["mime"] == "image/png"
    history = received[1]["args"][0]["history"]
    assert len(history) == 3


def test_stop_over_the_socket(client, socket_client):
    job_id = start(client, "deepdream", {"steps": 300, "octaves": 1})
    socket_client.emit("subscribe", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"frame"})
    assert socket_client.emit("stop", {"job": job_id}, callback=True)["ok"] is True
    events = collect(socket_client, job_id, {"stopped"})
    assert events[-1]["args"][0]["job"] == job_id
    assert client.get(f"/api/jobs/{job_id}").get_json()["state"] == "stopped"


def test_pause_and_resume_over_the_socket(client, socket_client):
    job_id = start(client, "deepdream", {"steps": 30, "octaves": 1})
    socket_client.emit("subscribe", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"frame"})
    socket_client.emit("pause", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"job"})
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job_id}").get_json()["state"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    frames_when_paused = client.get(f"/api/jobs/{job_id}").get_json()["frames"]
    time.sleep(1.0)
    assert client.get(f"/api/jobs/{job_id}").get_json()["frames"] <= frames_when_paused + 1
    socket_client.emit("resume", {"job": job_id}, callback=True)
    collect(socket_client, job_id, {"done"})
    assert client.get(f"/api/jobs/{job_id}").get_json()["frames"] == 30


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
