"""The fair queue and the limits of a shared server (issue 21), through the REST API of an app with one slot.

Its extra method ``gated`` takes one step, waits for its gate's ``go``, then takes a second: a test knows where
each job is without sleeping, and every wait is a hang guard. Clients are told apart by their bearer tokens
(no ``CONVLENS_TOKEN`` is set, so any token is only a name). The last check runs on a real ``convlens serve``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from convlens.app import create_app
from convlens.config import Config
from convlens.events import Progress, Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.params import Param

HANG_S = 60
"""The longest any wait here may take before the test fails as hung."""


@dataclass
class Gate:
    entered: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)


GATES: dict[str, Gate] = {}
STARTS: list[str] = []
"""The gates of the jobs that began, in the order they began."""


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(HANG_S), f"hung: {what} within {HANG_S} s"


def run_gated(ctx):
    name = ctx.params["gate"]
    STARTS.append(name)
    GATES[name].entered.set()
    yield Progress(1, 2)
    wait(GATES[name].go, f"the test to open gate {name!r}")
    yield Progress(2, 2)
    yield Result(data={"gate": name})


def run_endless(ctx):
    """Steps of 10 ms until it is stopped (10 minutes at most)."""
    for step in range(1, 60_001):
        time.sleep(0.01)
        yield Progress(step, 60_000)


class Inside:
    """How many jobs are inside a step of ``counted`` now, and the most there ever were at once."""

    lock = threading.Lock()
    now = 0
    most = 0


def run_counted(ctx):
    """Thirty steps of 2 ms, each counted in :class:`Inside` while it runs."""
    for step in range(1, 31):
        with Inside.lock:
            Inside.now += 1
            Inside.most = max(Inside.most, Inside.now)
        time.sleep(0.002)
        with Inside.lock:
            Inside.now -= 1
        yield Progress(step, 30)


METHODS = {
    "gated": Method(
        name="gated", title="Gated", topic="tests", run=run_gated, params=(Param("gate", "string", ""),)
    ),
    "endless": Method(name="endless", title="Endless", topic="tests", run=run_endless),
    "counted": Method(name="counted", title="Counted", topic="tests", run=run_counted),
}


@pytest.fixture(scope="module")
def app(models_dir, tmp_path_factory):
    """An app made as ``convlens serve`` makes it, with one slot, that also offers ``gated`` and ``endless``."""
    app = create_app(
        Config(models_dirs=[models_dir], data_dir=tmp_path_factory.mktemp("one-slot"), max_running_jobs=1)
    )
    app.config["TESTING"] = True
    jobs = app.extensions["convlens"].jobs
    installed = jobs.get_method
    jobs.get_method = lambda name: METHODS.get(name) or installed(name)
    return app


@pytest.fixture
def jobs(app):
    return app.extensions["convlens"].jobs


@pytest.fixture
def client(app, jobs):
    """The app's test client; after the test, every job it left is let go and stopped, so the slot is free."""
    GATES.clear()
    STARTS.clear()
    yield app.test_client()
    for gate in GATES.values():
        gate.go.set()
    for job in list(jobs.store.live.values()):
        jobs.stop(job.id)
        assert job.ended.wait(HANG_S), f"job {job.id} left by the test did not end"


def as_client(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


def post_gated(client, who: str, gate: str):
    GATES[gate] = Gate()
    body = {"method": "gated", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"gate": gate}}
    return client.post("/api/jobs", json=body, headers=as_client(who))


def queue(client, who: str, gate: str) -> str:
    """``who`` submits a ``gated`` job with its own new gate; the job's id."""
    answer = post_gated(client, who, gate)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def act(client, job_id: str, action: str) -> dict:
    answer = client.post(f"/api/jobs/{job_id}/{action}")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def record(client, job_id: str) -> dict:
    return client.get(f"/api/jobs/{job_id}").get_json()


def ended(client, jobs, job_id: str) -> dict:
    """The job as the API answers once it has ended."""
    assert jobs.get(job_id).ended.wait(HANG_S), f"job {job_id} did not end within {HANG_S} s"
    return record(client, job_id)


def test_a_second_clients_first_job_starts_before_the_first_clients_backlog(client, jobs):
    alice = [queue(client, "alice", f"a{number}") for number in range(1, 6)]
    wait(GATES["a1"].entered, "alice's first job to start")
    bob = queue(client, "bob", "b1")
    assert [record(client, job_id)["state"] for job_id in [*alice[1:], bob]] == ["queued"] * 5
    for gate in GATES.values():
        gate.go.set()
    for job_id in [*alice, bob]:
        assert ended(client, jobs, job_id)["state"] == "done"
    # Once alice's first job ends, bob has had no turn and alice one: bob's job goes next.
    assert STARTS == ["a1", "b1", "a2", "a3", "a4", "a5"]


def test_a_paused_job_gives_its_slot_to_another_and_resumes_after_it(client, jobs):
    paused = queue(client, "alice", "paused")
    wait(GATES["paused"].entered, "the job to start")
    assert act(client, paused, "pause")["state"] == "paused"
    other = queue(client, "bob", "other")
    GATES["other"].go.set()
    GATES[
        "paused"
    ].go.set()  # the method yields its second step, and there the paused job gives its slot back
    assert ended(client, jobs, other)["state"] == "done", "another job ran while the first was paused"
    held = record(client, paused)
    assert held["state"] == "paused" and held["progress"]["step"] == 1, (
        "no step was taken while it was paused"
    )
    assert act(client, paused, "resume")["state"] == "running", "the slot was free again"
    finished = ended(client, jobs, paused)
    assert finished["state"] == "done" and finished["progress"]["step"] == 2
    assert STARTS == ["paused", "other"]


def test_a_job_resumed_while_the_slot_is_taken_waits_queued_and_a_stop_there_ends_it(client, jobs):
    paused = queue(client, "alice", "paused")
    wait(GATES["paused"].entered, "the job to start")
    act(client, paused, "pause")
    taker = queue(client, "bob", "taker")
    GATES["paused"].go.set()
    wait(GATES["taker"].entered, "the other job to take the paused job's slot")
    assert act(client, paused, "resume")["state"] == "queued", "no slot is free"
    assert record(client, paused)["state"] == "queued"
    act(client, paused, "stop")
    assert ended(client, jobs, paused)["state"] == "stopped", "it ended without a slot"
    GATES["taker"].go.set()
    assert ended(client, jobs, taker)["state"] == "done"
    later = queue(client, "carol", "later")
    GATES["later"].go.set()
    assert ended(client, jobs, later)["state"] == "done", "the stopped job left no slot taken"
    assert STARTS == ["paused", "taker", "later"]


def test_pause_and_stop_take_effect_at_once_on_a_queued_job(app, client, jobs):
    first = queue(client, "alice", "first")
    wait(GATES["first"].entered, "the first job to start")
    held, dropped = queue(client, "alice", "held"), queue(client, "alice", "dropped")
    viewer = app.extensions["socketio"].test_client(app, flask_test_client=client)
    assert viewer.emit("subscribe", {"job": dropped}, callback=True)["ok"] is True
    viewer.get_received()

    assert act(client, held, "pause")["state"] == "paused"
    assert record(client, held)["state"] == "paused"
    stopped = act(client, dropped, "stop")
    assert stopped["state"] == "stopped" and stopped["finished"] is not None
    assert record(client, dropped)["state"] == "stopped"
    assert "stopped" in [packet["name"] for packet in viewer.get_received()], "its viewers were told"
    viewer.disconnect()

    after = queue(client, "bob", "after")
    GATES["first"].go.set()
    GATES["after"].go.set()
    GATES["held"].go.set()
    assert ended(client, jobs, first)["state"] == "done"
    assert ended(client, jobs, after)["state"] == "done", "the paused job was passed over"
    assert record(client, held)["state"] == "paused"
    assert record(client, held)["started"] is None, "it was never given a slot"
    assert act(client, held, "resume")["state"] == "running"
    assert ended(client, jobs, held)["state"] == "done"
    assert STARTS == ["first", "after", "held"], "the stopped job never started"


def test_pauses_and_resumes_in_any_order_never_run_more_jobs_than_slots(client, jobs):
    Inside.most = 0
    body = {"method": "counted", "model": DEFAULT_MODEL, "image": "chelsea"}
    ids = []
    for who in ("alice", "bob", "carol") * 2:
        answer = client.post("/api/jobs", json=body, headers=as_client(who))
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["id"])
    rng = random.Random(21)
    for _ in range(60):
        client.post(f"/api/jobs/{rng.choice(ids)}/{rng.choice(['pause', 'resume'])}")
        time.sleep(0.01)  # a few steps, for a paused job to reach its pause
    for job_id in ids:
        client.post(f"/api/jobs/{job_id}/resume")
    assert [ended(client, jobs, job_id)["state"] for job_id in ids] == ["done"] * 6
    assert Inside.most == 1, "the one slot was held by one job at a time"


def test_each_queue_limit_is_a_429_naming_it(client, jobs, monkeypatch):
    monkeypatch.setattr(jobs.queue, "max_queued_per_client", 2)
    monkeypatch.setattr(jobs.queue, "max_queued", 3)
    queue(client, "alice", "running")
    wait(GATES["running"].entered, "the first job to start")
    queue(client, "alice", "second")
    act(client, queue(client, "alice", "third"), "pause")  # a paused job still waits for a slot

    over = post_gated(client, "alice", "fourth")
    assert over.status_code == 429
    assert over.get_json()["field"] == "max_queued_per_client"
    assert "CONVLENS_MAX_QUEUED_PER_CLIENT=2" in over.get_json()["error"]

    queue(client, "bob", "bobs")  # another client still may: 3 wait now
    full = post_gated(client, "carol", "carols")
    assert full.status_code == 429
    assert full.get_json()["field"] == "max_queued_jobs"
    assert "CONVLENS_MAX_QUEUED_JOBS=3" in full.get_json()["error"]
    assert STARTS == ["running"]


def test_a_job_past_the_run_time_limit_fails_naming_it(client, jobs, monkeypatch):
    monkeypatch.setattr(jobs, "max_run_seconds", 0.3)
    body = {"method": "endless", "model": DEFAULT_MODEL, "image": "chelsea"}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 202, answer.get_json()
    failed = ended(client, jobs, answer.get_json()["id"])
    assert failed["state"] == "failed"
    assert failed["error"]["field"] == "max_run_seconds"
    assert "CONVLENS_MAX_RUN_SECONDS" in failed["error"]["error"]
    assert failed["progress"]["step"] > 1, "it ran until the limit"


def test_time_paused_does_not_count_toward_the_run_time_limit(client, jobs, monkeypatch):
    monkeypatch.setattr(jobs, "max_run_seconds", 0.5)
    paused = queue(client, "alice", "paused")
    wait(GATES["paused"].entered, "the job to start")
    act(client, paused, "pause")
    GATES["paused"].go.set()
    other = queue(client, "bob", "other")
    GATES["other"].go.set()
    assert ended(client, jobs, other)["state"] == "done"  # so the paused job waits in its pause now
    time.sleep(1.0)  # paused for twice the limit
    act(client, paused, "resume")
    finished = ended(client, jobs, paused)
    assert finished["state"] == "done", finished["error"]


def test_a_real_server_stops_a_queued_job_at_once_and_refuses_one_over_its_limit(start_server):
    url = start_server(env={"CONVLENS_MAX_RUNNING_JOBS": "1", "CONVLENS_MAX_QUEUED_PER_CLIENT": "1"})
    body = {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": 500}}
    first = requests.post(f"{url}/api/jobs", json=body, timeout=HANG_S)
    assert first.status_code == 202, first.json()
    running = first.json()["id"]
    queued = requests.post(f"{url}/api/jobs", json=body, timeout=HANG_S).json()
    assert queued["state"] == "queued"
    refused = requests.post(f"{url}/api/jobs", json=body, timeout=HANG_S)
    assert refused.status_code == 429
    assert refused.json()["field"] == "max_queued_per_client"
    stopped = requests.post(f"{url}/api/jobs/{queued['id']}/stop", timeout=HANG_S).json()
    assert stopped["state"] == "stopped"
    again = requests.post(f"{url}/api/jobs", json=body, timeout=HANG_S)
    assert again.status_code == 202, "the stopped job's place in the queue is free"
    for job_id in (again.json()["id"], running):
        assert requests.post(f"{url}/api/jobs/{job_id}/stop", timeout=HANG_S).ok
