"""The queue limits of web processes sharing one Redis (``CONVLENS_REDIS_URL``): a client's jobs waiting for a
slot (queued or paused, not running) are counted over every process, and checked and counted in one step.

Two real ``convlens serve`` processes, one slot each, at most 2 waiting jobs per client and 5 in all. A job waits
for a slot here because another one holds it (a long DeepDream, stopped at the end) or because it is paused.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from convlens.jobs import Job
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.redis_store import RedisJobStore
from local import Served, start_serve
from redis_fixtures import RedisServer

HANG_S = 240
"""Seconds any wait here may take before the test fails as hung; never reached when it works."""
SLOT_BACK_S = 60
"""Seconds a paused job's thread is given to reach its next step and give its slot back: a hang guard."""
LONG_DREAM = {
    "method": "deepdream",
    "model": DEFAULT_MODEL_ID,
    "image": "chelsea",
    "params": {"steps": 500, "octaves": 3},
}
"""A job that holds its process's one slot until it is stopped."""


def cookie(name: str) -> dict[str, str]:
    """A browser of its own (the id a browser is given: 32 hex digits): the client the limits count."""
    return {"convlens_client": hashlib.md5(name.encode()).hexdigest()}


class Web:
    def __init__(self, served: Served) -> None:
        self.url = served.url
        self.served = served

    def post(self, body: dict, who: str) -> requests.Response:
        return requests.post(f"{self.url}/api/jobs", json=body, cookies=cookie(who), timeout=60)

    def submit(self, who: str) -> dict:
        answer = self.post(LONG_DREAM, who)
        assert answer.status_code == 202, answer.text
        return answer.json()

    def act(self, job_id: str, action: str, who: str) -> dict:
        answer = requests.post(f"{self.url}/api/jobs/{job_id}/{action}", cookies=cookie(who), timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def state(self, job_id: str) -> str:
        return requests.get(f"{self.url}/api/jobs/{job_id}", timeout=60).json()["state"]


@pytest.fixture(scope="module")
def webs(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Web, Web, RedisServer]]:
    server = RedisServer(tmp_path_factory.mktemp("limits-redis"))
    server.start()
    data = tmp_path_factory.mktemp("limits-data")
    env = {
        "CONVLENS_REDIS_URL": server.url + "?prefix=limits:",
        "CONVLENS_MAX_RUNNING_JOBS": "1",
        "CONVLENS_MAX_QUEUED_PER_CLIENT": "2",
        "CONVLENS_MAX_QUEUED_JOBS": "5",
    }
    started: list[Web] = []
    try:
        started = [Web(start_serve(models_dir, data, env=env)) for _ in range(2)]
        yield started[0], started[1], server
    finally:
        for web in started:
            web.served.process.terminate()
            web.served.process.wait(60)
        server.kill()


@pytest.fixture
def jobs(webs) -> Iterator[list[tuple[Web, str, str]]]:
    """The (process, id, client) of each job a test started, stopped at its end and awaited."""
    started: list[tuple[Web, str, str]] = []
    yield started
    for web, job_id, who in started:
        if web.state(job_id) in ("queued", "running", "paused"):
            web.act(job_id, "stop", who)
    deadline = time.monotonic() + HANG_S
    for web, job_id, _ in started:
        while web.state(job_id) not in ("done", "failed", "stopped"):
            assert time.monotonic() < deadline, f"job {job_id} did not end"
            time.sleep(0.2)


def refused_for(web: Web, who: str, field: str, jobs: list) -> requests.Response:
    """``who``'s next job on ``web``, which must be refused naming ``field`` (if not, it is stopped at the end)."""
    answer = web.post(LONG_DREAM, who)
    if answer.status_code == 202:
        jobs.append((web, answer.json()["id"], who))
    assert answer.status_code == 429, answer.text
    assert answer.json()["field"] == field, answer.text
    return answer


def test_a_client_waiting_jobs_count_on_every_process_running_ones_do_not(webs, jobs):
    a, b, redis_server = webs

    def submit(web: Web, who: str) -> str:
        job = web.submit(who)
        jobs.append((web, job["id"], who))
        return job["id"]

    blocker = submit(a, "c")  # holds A's slot
    assert a.state(blocker) == "running"
    first, second = submit(a, "x"), submit(a, "x")
    assert a.state(first) == a.state(second) == "queued"
    # B's slot is free, but x has 2 jobs waiting on A.
    refused = refused_for(b, "x", "max_queued_per_client", jobs)
    assert "you have 2 jobs waiting" in refused.json()["error"]
    assert "CONVLENS_MAX_QUEUED_PER_CLIENT=2" in refused.json()["error"]
    other = submit(b, "y")  # another client is not limited by x's jobs
    assert b.state(other) == "running"
    a.act(first, "stop", "x")  # one of x's ends: x may queue again, on either process
    third = submit(b, "x")
    assert b.state(third) == "queued", "behind y's job"
    refused_for(a, "x", "max_queued_per_client", jobs)
    b.act(other, "stop", "y")  # x's job on B gets B's slot: a running job is not counted
    deadline = time.monotonic() + HANG_S
    while b.state(third) != "running":
        assert time.monotonic() < deadline, "x's job on B did not start"
        time.sleep(0.1)
    fourth = submit(a, "x")  # waiting on A beside x's second
    refused_for(b, "x", "max_queued_per_client", jobs)
    b.act(third, "pause", "x")  # a paused job waits for a slot again (never refused): x now has 3 waiting
    store = redis_server.client()
    deadline = time.monotonic() + SLOT_BACK_S
    while not store.hexists("limits:waiting", third):  # once its thread has given B's slot back
        assert time.monotonic() < deadline, f"x's paused job did not give its slot back in {SLOT_BACK_S} s"
        time.sleep(0.1)
    a.act(fourth, "stop", "x")
    refused_for(b, "x", "max_queued_per_client", jobs)


def test_concurrent_submissions_to_both_processes_take_only_the_places_there_are(webs, jobs):
    a, b, _ = webs
    for web in (a, b):  # both slots taken: every job of z's waits
        job = web.submit("d")
        jobs.append((web, job["id"], "d"))
        assert web.state(job["id"]) == "running"
    targets = [a, b] * 4
    with ThreadPoolExecutor(len(targets)) as pool:
        answers = list(pool.map(lambda web: (web, web.post(LONG_DREAM, "z")), targets))
    accepted = [(web, answer.json()["id"]) for web, answer in answers if answer.status_code == 202]
    jobs.extend((web, job_id, "z") for web, job_id in accepted)
    assert sorted(answer.status_code for _, answer in answers) == [202] * 2 + [429] * 6
    assert {answer.json()["field"] for _, answer in answers if answer.status_code == 429} == {
        "max_queued_per_client"
    }
    # The limit of all clients' waiting jobs (5) counts over both processes too.
    for who in "uv":
        job = a.submit(who)
        jobs.append((a, job["id"], who))
    fifth = b.post(LONG_DREAM, "w")
    assert fifth.status_code == 202, fifth.text
    jobs.append((b, fifth.json()["id"], "w"))
    over = refused_for(a, "t", "max_queued_jobs", jobs)
    assert "5 jobs are waiting" in over.json()["error"]


def test_an_ended_job_waits_no_more_whichever_process_saves_its_end(redis_server):
    """A job's end saved by any process (a reaper failing a dead process's queued job) frees its place."""
    store = RedisJobStore(redis_server.url + f"?prefix=ended-{secrets.token_hex(4)}:")
    try:
        assert store.claim_waiting("j1", "alice", most_own=1) == (True, 0, 0)
        assert store.claim_waiting("j2", "alice", most_own=1) == (False, 1, 1)
        assert store.claim_waiting("j3", "bob", most=2) == (True, 0, 1)
        job = Job("j1", "predict", "m", "chelsea", {}, 7, state="failed", created=1.0, owner="alice")
        job.finished = 2.0
        store.save(job.record())
        assert store.claim_waiting("j2", "alice", most_own=1) == (True, 0, 1)
        assert store.claim_waiting("j4", "carol", most=2) == (False, 0, 2)
    finally:
        store.close()
