"""``Points`` events (an embedding's positions while it moves) through Flask-SocketIO's test client."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from convlens.events import Points, Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL

START = np.array([[0.0, 0.0], [1.0, -2.0], [3.5, 4.25], [-1e6, 1e-6]])
STEPS = 5


ENDS = 120.0
"""Seconds a job of a few steps is given to end: a hang guard, never reached when the job works."""


def start(client, method: str) -> str:
    body = {"method": method, "model": DEFAULT_MODEL, "image": "chelsea", "params": {}}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def ended(app, job_id: str):
    """The server's record of the job, once it has ended and its final events were sent."""
    job = app.extensions["convlens"].jobs.get(job_id)
    assert job.ended.wait(ENDS), f"job {job_id} did not end within {ENDS} s (state {job.state})"
    return job


def collect(sio, until: set[str]) -> list[dict]:
    """Received events until one named in ``until`` arrives."""
    received: list[dict] = []
    deadline = time.monotonic() + ENDS
    while time.monotonic() < deadline:
        batch = sio.get_received()
        received += batch
        if any(p["name"] in until for p in batch):
            return received
        time.sleep(0.02)
    raise AssertionError(f"none of {until} within {ENDS} s; got {[p['name'] for p in received]}")


def decoded(message: dict) -> np.ndarray:
    """The positions of a ``points`` message, read as the page reads them: little-endian float32 pairs."""
    return np.frombuffer(message["data"], dtype="<f4").reshape(message["n"], 2)


def expected_at(step: int) -> np.ndarray:
    return (START + step).astype(np.float32)


def moving_points(gate: threading.Event):
    """A method that waits for ``gate``, then moves its points by 1 a step in its own array, in place."""

    def run(ctx):
        assert gate.wait(60), "the viewer never subscribed"
        positions = START.copy()
        for step in range(STEPS):
            yield Points(positions, step=step)
            yield Points(positions[:2] * -1, step=step, label="other")
            positions += 1  # after the yield: what was yielded must not move with it
        yield Result(data={})

    return run


def test_a_viewer_gets_the_points_as_yielded_and_the_newest_last(app, client, socket_client, extra_methods):
    gate = threading.Event()
    extra_methods(Method(name="moving", title="Moving", topic="Tests", run=moving_points(gate)))
    job_id = start(client, "moving")
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    gate.set()
    events = collect(socket_client, {"done", "failed"})
    assert "failed" not in [p["name"] for p in events]
    main = [p["args"][0] for p in events if p["name"] == "points" and p["args"][0]["label"] == "main"]
    assert main, "at least one points event reaches the viewer"
    for message in main:
        assert message["job"] == job_id and message["n"] == len(START)
        np.testing.assert_array_equal(decoded(message), expected_at(message["step"]))
    assert main[-1]["step"] == STEPS - 1, "the newest positions are sent before the job ends"
    other = [p["args"][0] for p in events if p["name"] == "points" and p["args"][0]["label"] == "other"]
    np.testing.assert_array_equal(decoded(other[-1]), -expected_at(STEPS - 1)[:2])


def test_a_late_viewer_gets_the_newest_points_of_each_label(app, client, socket_client, extra_methods):
    gate = threading.Event()
    gate.set()
    extra_methods(Method(name="moving", title="Moving", topic="Tests", run=moving_points(gate)))
    job_id = start(client, "moving")
    ended(app, job_id)
    assert socket_client.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True
    received = [p["args"][0] for p in socket_client.get_received() if p["name"] == "points"]
    assert sorted(message["label"] for message in received) == ["main", "other"]
    newest = {message["label"]: message for message in received}
    assert newest["main"]["step"] == newest["other"]["step"] == STEPS - 1
    np.testing.assert_array_equal(decoded(newest["main"]), expected_at(STEPS - 1))
    np.testing.assert_array_equal(decoded(newest["other"]), -expected_at(STEPS - 1)[:2])


@pytest.mark.parametrize(
    ("positions", "error", "says"),
    [
        (np.zeros((4, 3)), ValueError, r"N x 2 .*got shape \[4, 3\]"),
        (np.zeros(8), ValueError, r"N x 2 .*got shape \[8\]"),
        (np.zeros((0, 2)), ValueError, r"N >= 1, got shape \[0, 2\]"),
        (np.zeros((2, 2, 2)), ValueError, r"got shape \[2, 2, 2\]"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]]), ValueError, "finite; 2 are not"),
        (np.array([["a", "b"]]), TypeError, "real numbers, got dtype <U1"),
        ("0,1", TypeError, "an N x 2 array, got str"),
        (None, TypeError, "an N x 2 array, got NoneType"),
    ],
)
def test_points_that_are_not_n_by_2_numbers_say_what_is_wrong(positions, error, says):
    with pytest.raises(error, match=says):
        Points(positions)


def test_a_job_yielding_bad_points_fails_with_what_was_wrong(app, client, socket_client, extra_methods):
    def run(ctx):
        yield Points(np.zeros((4, 3)))

    extra_methods(Method(name="bad_points", title="Bad points", topic="Tests", run=run))
    job = ended(app, start(client, "bad_points"))
    assert job.state == "failed"
    assert "N x 2" in job.error["error"] and "[4, 3]" in job.error["error"]
