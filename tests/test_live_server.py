"""A real `convlens serve` on 127.0.0.1, driven by a real Socket.IO client over a websocket."""

from __future__ import annotations

import threading

import requests
import socketio

from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.streaming import ACK_TIMEOUT_S


class Viewer:
    """A Socket.IO client that acknowledges each frame at once, or (``holding``) only when told to."""

    def __init__(self, url: str, job_id: str, holding: bool = False) -> None:
        self.frames: list[dict] = []
        self.frame_arrived = threading.Event()
        self.events: list[str] = []
        self.finished = threading.Event()
        self.client = socketio.Client()
        self.client.on("frame", self.on_frame)
        for name in ("job", "progress", "metrics"):
            self.client.on(name, lambda data, name=name: self.events.append(name))
        self.client.on("done", lambda data: self.finish("done"))
        self.client.on("failed", lambda data: self.finish("failed"))
        self.holding = holding
        self.job_id = job_id
        self.client.connect(url, transports=["websocket"])
        assert self.client.call("subscribe", {"job": job_id}, timeout=30)["ok"]

    def on_frame(self, data: dict) -> None:
        self.frames.append(data)
        self.frame_arrived.set()
        if not self.holding:
            self.ack()

    def ack(self) -> None:
        self.client.emit("frame_ack", {"job": self.job_id, "seq": self.frames[-1]["seq"]})

    def finish(self, name: str) -> None:
        self.events.append(name)
        self.finished.set()


def test_real_server_streams_to_fast_and_slow_viewers(live_server):
    models = requests.get(f"{live_server}/api/models", timeout=30).json()
    assert DEFAULT_MODEL in {m["id"] for m in models}
    job = requests.post(
        f"{live_server}/api/jobs",
        json={
            "method": "deepdream",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"steps": 40, "octaves": 1},
        },
        timeout=60,
    ).json()
    fast = Viewer(live_server, job["id"])
    slow = Viewer(live_server, job["id"], holding=True)
    try:
        assert fast.finished.wait(300) and slow.finished.wait(60)
        state = requests.get(f"{live_server}/api/jobs/{job['id']}", timeout=30).json()
        assert state["state"] == "done" and state["frames"] == 40, (
            "the job never waited for the viewer that held"
        )
        assert "failed" not in fast.events + slow.events
        # Unacknowledged, a viewer gets one frame, plus one per lost-ack timeout (by the server's clock, while
        # the job ran) so it cannot freeze.
        running = state["finished"] - state["started"]
        assert 1 <= len(slow.frames) <= 2 + running / ACK_TIMEOUT_S < len(fast.frames)
        slow.frame_arrived.clear()
        slow.ack()
        assert slow.frame_arrived.wait(30), "an ack brings the frame kept for the viewer"
        assert slow.frames[-1]["seq"] == 39, "an ack brings the newest frame, not a backlog"
        seqs = [frame["seq"] for frame in fast.frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "frames arrive in order, never repeated"
        assert all(frame["data"][:2] == b"\xff\xd8" for frame in fast.frames), "frames are JPEG bytes"
    finally:
        fast.client.disconnect()
        slow.client.disconnect()


def test_real_server_answers_bad_input_and_stays_up(live_server):
    answer = requests.post(
        f"{live_server}/api/jobs", json={"method": "deepdream", "model": "nope"}, timeout=30
    )
    assert answer.status_code == 404 and answer.json()["field"] == "model"
    answer = requests.post(
        f"{live_server}/api/images", files={"file": ("x.png", b"GIF89a-broken")}, timeout=30
    )
    assert answer.status_code == 400 and answer.json()["field"] == "file"
    assert requests.get(f"{live_server}/api/methods", timeout=30).ok
