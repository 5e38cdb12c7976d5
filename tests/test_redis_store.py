"""Job records in Redis (``CONVLENS_REDIS_URL``): the same store contract as SQLite's, and web processes sharing one
Redis: each lists and serves the other's jobs, a killed one's jobs are failed naming it, and Redis restarts."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from convlens.job_db import SqliteJobStore
from convlens.jobs import Job
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.redis_store import HEARTBEAT_TTL_S, RedisJobStore, order_key
from local import Served, start_serve
from redis_fixtures import RedisServer

ENDS_S = 240
"""Seconds a job is given to end, or a lost one to be failed: a hang guard, never reached when it works."""


def record(job_id: str, created: float, owner: str | None = "alice", state: str = "done", **fields) -> dict:
    job = Job(job_id, "predict", "m", "chelsea", {"k": 1}, 7, state=state, created=created, owner=owner)
    job.metrics_history = [{"step": 0, "values": {"loss": 1.5}}]
    job.add_log("info", f"ran {job_id}")
    for name, value in fields.items():
        setattr(job, name, value)
    return job.record()


@pytest.fixture(params=["sqlite", "redis"])
def opener(request, tmp_path: Path) -> Iterator[Callable[[], object]]:
    """``open()``: a store on one backing (a SQLite file, or a Redis key prefix of its own), opened as often as a
    test likes, as a new process would; each is closed at the end."""
    opened = []
    prefix = f"test-{secrets.token_hex(4)}:"

    def open_store():
        if request.param == "sqlite":
            store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        else:
            store = RedisJobStore(request.getfixturevalue("redis_server").url + f"?prefix={prefix}")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def walk(store, limit: int, owner: str | None = None) -> list[str]:
    ids, cursor = [], None
    while True:
        page = store.page(limit, cursor, owner)
        assert len(page) <= limit
        assert all("metrics_history" not in entry and "logs" not in entry for entry in page)
        ids += [entry["id"] for entry in page]
        assert len(ids) <= store.count(), f"a walk past every job: {ids}"
        if len(page) < limit:
            return ids
        cursor = page[-1]["id"]


def test_a_saved_record_loads_whole_and_a_replaced_one_is_listed_once(opener):
    store = opener()
    saved = record("a1", 100.0, state="running")
    store.save(saved)
    assert store.load("a1") == saved
    assert store.load("nosuch") is None
    moved = record("a1", 50.0, owner="bob", state="done", finished=120.0)
    store.save(moved)
    assert store.load("a1") == moved
    assert [entry["id"] for entry in store.page(10)] == ["a1"]
    assert store.count() == 1 and store.count("bob") == 1 and store.count("alice") == 0
    assert store.page(10, owner="alice") == []


def test_paging_walks_every_job_once_newest_first_ties_by_id_and_by_owner(opener):
    store = opener()
    made = []
    for n in range(13):
        created = 8.0 + n // 3  # three jobs share each moment; 8 to 12 s: numbers whose text sorts otherwise
        owner = "alice" if n % 2 else "bob"
        job_id = secrets.token_hex(6)
        store.save(record(job_id, created, owner=owner))
        made.append((created, job_id, owner))
    store.save(record("z-early", -5.0, owner=None))
    made.append((-5.0, "z-early", None))
    newest_first = sorted(made, reverse=True)
    for limit in (1, 3, 4, 20):
        assert walk(store, limit) == [job_id for _, job_id, _ in newest_first]
        for owner in ("alice", "bob"):
            assert walk(store, limit, owner) == [job_id for _, job_id, who in newest_first if who == owner]
    assert store.count() == 14 and store.count("alice") == 6 and store.count("bob") == 7
    assert store.page(2, newest_first[0][1]) == [
        {
            k: v
            for k, v in record(job_id, created, owner=owner).items()
            if k not in ("metrics_history", "logs")
        }
        for created, job_id, owner in newest_first[1:3]
    ]


def test_an_unknown_cursor_is_a_key_error(opener):
    store = opener()
    store.save(record("b1", 10.0))
    with pytest.raises(KeyError):
        store.page(5, "nosuchjob")


def test_a_deleted_job_is_gone_from_every_list(opener):
    store = opener()
    store.save(record("c1", 10.0, finished=11.0))
    store.save(record("c2", 12.0, state="running"))
    store.delete("c1")
    store.delete("c2")
    store.delete("never-was")
    assert store.load("c1") is None and store.page(10) == [] and store.count() == store.count("alice") == 0
    assert store.finished_before(1e12) == []
    assert opener().unfinished() == []


def test_unfinished_and_finished_before_as_a_new_process_finds_them(opener):
    store = opener()
    for job_id, state, finished in [
        ("q", "queued", None), ("r", "running", None), ("p", "paused", None),
        ("d", "done", 20.0), ("f", "failed", 30.0), ("s", "stopped", 40.0),
    ]:  # fmt: skip
        store.save(record(job_id, 1.0, state=state, finished=finished))
    store.close()  # the process that ran them ended
    again = opener()
    assert sorted(entry["id"] for entry in again.unfinished()) == ["p", "q", "r"]
    assert again.load("r") in again.unfinished(), "whole records"
    assert sorted(again.finished_before(30.0)) == ["d"]
    assert sorted(again.finished_before(40.5)) == ["d", "f", "s"]


def test_order_keys_sort_as_created_then_id():
    values = [-1e9, -2.5, -0.0, 0.0, 1e-300, 0.5, 1.0, 1_700_000_000.123456, 1_700_000_000.1234561, 1e12]
    keys = [order_key(value, "x") for value in values]
    assert keys == sorted(keys)
    assert order_key(5.0, "a") < order_key(5.0, "b") < order_key(5.000001, "a")


def test_a_live_process_jobs_are_not_lost_and_a_dead_ones_are_failed_naming_it(redis_server):
    url = redis_server.url + f"?prefix=test-{secrets.token_hex(4)}:"
    alive, dead, other = (RedisJobStore(url, heartbeat_ttl_s=60) for _ in range(3))
    alive.start()
    dead.start()
    try:
        alive.save(record("mine", 1.0, state="running"))
        dead.save(record("theirs", 2.0, state="paused"))
        assert other.unfinished() == [] and other.reap() == []
        alive.save(alive.load("theirs"))  # as a pause asked of another process saves it: still dead's job
        dead.close()  # its heartbeat ends
        assert [entry["id"] for entry in other.unfinished()] == ["theirs"]
        assert other.reap() == ["theirs"]
        failed = other.load("theirs")
        assert failed["state"] == "failed" and failed["finished"] >= failed["created"]
        assert failed["error"]["error"] == (
            f"the web process {dead.instance} that ran this job is gone (its heartbeat stopped while the job was "
            "paused)"
        )
        assert other.reap() == [] and other.load("mine")["state"] == "running"
    finally:
        alive.close()
        other.close()


# -- two web processes, one Redis --------------------------------------------------------------------------

DREAM = {
    "method": "deepdream",
    "model": DEFAULT_MODEL_ID,
    "image": "chelsea",
    "params": {"steps": 3, "octaves": 1},
}
LONG_DREAM = {**DREAM, "params": {"steps": 500, "octaves": 3}}
BROWSER = {"convlens_client": "e" * 32}
"""The one browser both processes' requests come from (behind one address, as a load balancer makes them)."""


class Web:
    """One ``convlens serve`` process of the pair."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.url = served.url

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, cookies=BROWSER, timeout=60)

    def submit(self, body: dict) -> str:
        answer = requests.post(f"{self.url}/api/jobs", json=body, cookies=BROWSER, timeout=60)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def wait_for(self, job_id: str, done: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + ENDS_S
        while not done(job := self.get(f"/api/jobs/{job_id}").json()):
            assert time.monotonic() < deadline, f"job {job_id} not {what} after {ENDS_S} s: {job}"
            time.sleep(0.2)
        return job

    def worker_pid(self) -> int:
        """The gunicorn worker's process id: the process that runs the jobs and beats the heartbeat."""
        pid = self.served.process.pid
        (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(child)


@pytest.fixture(scope="module")
def pair(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Two web processes on two ports over one data folder and one Redis of this module's own (kept in an
    append-only file, as a deployment's should be, so that a restart of it loses no record)."""
    server = RedisServer(tmp_path_factory.mktemp("pair-redis"), durable=True)
    server.start()
    data = tmp_path_factory.mktemp("pair-data")
    env = {"CONVLENS_REDIS_URL": server.url + "?prefix=pair:"}
    webs = []
    try:
        webs = [Web(start_serve(models_dir, data, env=env)) for _ in range(2)]
        yield {"redis": server, "a": webs[0], "b": webs[1], "data": data}
    finally:
        for web in webs:
            if web.served.process.poll() is None:
                web.served.process.terminate()
                web.served.process.wait(60)
        server.kill()


def downloads(web: Web, job: dict) -> dict[str, tuple[int, bytes]]:
    urls = [*job["result"]["images"].values(), job["result"]["animation"]]
    return {url: (answer.status_code, answer.content) for url in urls for answer in [web.get(url)]}


def test_a_job_run_on_one_process_is_listed_read_and_served_by_the_other(pair):
    a, b = pair["a"], pair["b"]
    job_id = a.submit(DREAM)
    on_a = a.wait_for(job_id, lambda job: job["state"] in ("done", "failed"), "ended")
    assert on_a["state"] == "done", on_a["error"]
    assert b.get(f"/api/jobs/{job_id}").json() == on_a, "the whole record"
    listed = b.get("/api/jobs").json()
    assert listed == a.get("/api/jobs").json()
    assert [entry["id"] for entry in listed["jobs"]] == [job_id] and listed["total"] == 1
    files = downloads(a, on_a)
    assert len(files) == len(on_a["result"]["images"]) + 1 and all(
        status == 200 for status, _ in files.values()
    )
    assert downloads(b, on_a) == files, "the very bytes, from the shared data folder"
    assert pair["redis"].client().hget(f"pair:job:{job_id}", "state") == "done", "the record is Redis'"
    assert not (pair["data"] / "jobs.sqlite3").exists(), "and not in a SQLite file they could share too"
    pair["done"] = on_a


def test_a_redis_restart_is_a_503_while_it_is_down_and_each_process_reconnects(pair):
    a, b, redis_server = pair["a"], pair["b"], pair["redis"]
    done = pair["done"]
    redis_server.kill()
    for web in (a, b):
        for path in ("/api/jobs", f"/api/jobs/{done['id']}"):
            answer = web.get(path)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.json()["field"] == "store" and "Redis at 127.0.0.1" in answer.json()["error"]
        assert web.get("/api/models").status_code == 200, "what needs no job record still works"
        refused = requests.post(f"{web.url}/api/jobs", json=DREAM, cookies=BROWSER, timeout=60)
        assert refused.status_code == 503 and refused.json()["field"] == "store", refused.text
    redis_server.start()
    for web in (a, b):
        assert web.get(f"/api/jobs/{done['id']}").json() == done, "the next request reconnects"
        assert [entry["id"] for entry in web.get("/api/jobs").json()["jobs"]] == [done["id"]]
    again = b.submit(DREAM)
    ended = b.wait_for(again, lambda job: job["state"] in ("done", "failed"), "ended")
    assert ended["state"] == "done", ended["error"]
    assert a.get(f"/api/jobs/{again}").json() == ended
    # The jobs refused while Redis was down were never queued either: the next one did not set them off.
    for web in (a, b):
        assert [entry["id"] for entry in web.get("/api/jobs").json()["jobs"]] == [again, done["id"]]


def test_a_killed_process_jobs_are_failed_naming_it_and_the_live_ones_are_untouched(pair):
    a, b = pair["a"], pair["b"]
    mine, theirs = b.submit(LONG_DREAM), a.submit(LONG_DREAM)
    for web, job_id in ((b, mine), (a, theirs)):
        web.wait_for(job_id, lambda job: (job.get("progress") or {}).get("step"), "making steps")
    assert b.get(f"/api/jobs/{theirs}").json()["state"] == "running", "B sees A's job running"
    for action in ("pause", "resume", "stop"):
        # Not forwarded to A (yet): refused, rather than B recording a pause of a job that runs on.
        answer = requests.post(f"{b.url}/api/jobs/{theirs}/{action}", cookies=BROWSER, timeout=60)
        assert answer.status_code == 409 and answer.json()["field"] == "job", (action, answer.text)
        assert "another web process" in answer.json()["error"]
    assert b.get(f"/api/jobs/{theirs}").json()["state"] == "running"
    worker = a.worker_pid()
    for pid in (worker, a.served.process.pid):
        os.kill(pid, signal.SIGKILL)
    a.served.process.wait(60)
    killed_at = time.monotonic()
    failed = b.wait_for(theirs, lambda job: job["state"] != "running", "failed")
    print(
        f"A's job failed {time.monotonic() - killed_at:.1f} s after A was killed (heartbeat TTL {HEARTBEAT_TTL_S} s)"
    )
    assert failed["state"] == "failed"
    assert (
        f":{worker}:" in failed["error"]["error"]
        and "is gone (its heartbeat stopped" in failed["error"]["error"]
    )
    assert failed["finished"] >= failed["started"]
    own = b.get(f"/api/jobs/{mine}").json()
    assert own["state"] == "running" and own["error"] is None, "B's own job runs on"
    step = own["progress"]["step"]
    b.wait_for(mine, lambda job: job["progress"]["step"] > step, "going on")
    assert requests.post(f"{b.url}/api/jobs/{mine}/stop", cookies=BROWSER, timeout=60).status_code == 200
    assert b.wait_for(mine, lambda job: job["state"] != "running", "stopped")["state"] == "stopped"
