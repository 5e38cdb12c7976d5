"""Runs kept across restarts (SQLite records, results folders) and bounded memory (finished jobs leave it)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import socketio

from convlens.events import Log, Result
from convlens.jobs import MAX_LOG_LINES
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID
from local import start_serve

ENDS_S = 240
"""Seconds a short job is given to end (or a long one to start): a hang guard, never reached when it works."""
DREAM = {
    "method": "deepdream",
    "model": DEFAULT_MODEL_ID,
    "image": "chelsea",
    "params": {"steps": 3, "octaves": 1},
}
LONG_DREAM = {**DREAM, "params": {"steps": 500, "octaves": 3}}
BROWSER_ID = "f" * 32
"""The ``convlens_client`` cookie the servers' requests carry: one browser, whose runs the page lists."""


class Server:
    """``convlens serve`` on a free port over one data folder, started again as often as a test likes."""

    def __init__(self, models_dir: Path, data_dir: Path) -> None:
        self.models_dir = models_dir
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        served = start_serve(self.models_dir, self.data_dir, hang_s=120)
        self.process, self.url = served.process, served.url
        return self.url

    def end(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, cookies={"convlens_client": BROWSER_ID}, timeout=60)

    def submit(self, body: dict) -> str:
        answer = requests.post(
            f"{self.url}/api/jobs", json=body, cookies={"convlens_client": BROWSER_ID}, timeout=60
        )
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def wait_for(self, job_id: str, states: tuple[str, ...]) -> dict:
        deadline = time.monotonic() + ENDS_S
        while (job := self.get(f"/api/jobs/{job_id}").json())["state"] not in states:
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {ENDS_S} s"
            time.sleep(0.2)
        return job


def downloads(server: Server, job: dict) -> dict[str, tuple[int, bytes]]:
    """The status and bytes of every image and the GIF the job's result names (none without a result)."""
    result = job.get("result") or {"images": {}, "animation": None}
    urls = [*result["images"].values(), result["animation"]]
    return {url: (answer.status_code, answer.content) for url in urls if url for answer in [server.get(url)]}


def late_view(url: str, job_id: str) -> list[tuple[str, dict]]:
    """What a viewer subscribing to the ended job over a real Socket.IO connection receives, until its end."""
    received: list[tuple[str, dict]] = []
    client = socketio.Client(reconnection=False)
    for name in ("job", "metrics_history", "log", "frame", "predictions", "done", "failed", "stopped"):
        client.on(name, lambda data, name=name: received.append((name, data)))
    client.connect(url, transports=["websocket"])
    try:
        answer = client.call("subscribe", {"job": job_id, "format": "png"}, timeout=60)
        if not answer["ok"]:
            return [("refused", answer)]
        deadline = time.monotonic() + 60
        while not any(name in ("done", "failed", "stopped") for name, _ in received):
            assert time.monotonic() < deadline, [name for name, _ in received]
            time.sleep(0.05)
    finally:
        client.disconnect()
    return received


@pytest.fixture(scope="module")
def restarts(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One data folder through three servers: the first runs a short DeepDream to its end and is stopped; the
    second finds it, starts a long one and is killed (SIGKILL) in its middle; the third is left running."""
    server = Server(models_dir, tmp_path_factory.mktemp("persisted"))
    seen: dict = {"server": server}
    server.start()
    done_id = server.submit(DREAM)
    seen["done"] = server.wait_for(done_id, ("done", "failed"))
    seen["files"] = downloads(server, seen["done"])
    assert len(seen["files"]) == 2 and all(status == 200 for status, _ in seen["files"].values())
    seen["late"] = late_view(server.url, done_id)
    server.end(signal.SIGTERM)

    server.start()
    seen["after_restart"] = server.get(f"/api/jobs/{done_id}").json()
    seen["files_after_restart"] = downloads(server, seen["after_restart"])
    seen["late_after_restart"] = late_view(server.url, done_id)
    seen["listed_after_restart"] = server.get("/api/jobs").json()
    long_id = server.submit(LONG_DREAM)
    deadline = time.monotonic() + ENDS_S
    while not (server.get(f"/api/jobs/{long_id}").json().get("progress") or {}).get("step"):
        assert time.monotonic() < deadline, "the long job made no step"
        time.sleep(0.2)
    seen["long_id"] = long_id
    server.end(signal.SIGKILL)

    server.start()
    yield seen
    server.end()


def test_a_restarted_server_lists_yesterdays_run_and_serves_its_images_and_gif(restarts):
    done = restarts["done"]
    assert done["state"] == "done", done["error"]
    assert restarts["after_restart"] == done
    assert restarts["files_after_restart"] == restarts["files"], "the very bytes, from the results folder"
    listed = restarts["listed_after_restart"]
    assert [job["id"] for job in listed["jobs"]] == [done["id"]] and listed["next"] is None
    assert listed["jobs"][0]["animation"] == done["result"]["animation"]


def test_a_late_viewer_after_a_restart_sees_what_one_before_it_saw(restarts):
    before, after = restarts["late"], restarts["late_after_restart"]
    assert [name for name, _ in after] == [name for name, _ in before]
    frames = [data for name, data in after if name == "frame"]
    assert frames and frames == [data for name, data in before if name == "frame"], "the same PNG frames"
    assert [data for name, data in after if name == "metrics_history"][0]["history"]


def test_a_job_killed_with_its_server_is_failed_naming_the_restart_and_nothing_else_is_lost(restarts):
    server = restarts["server"]
    killed = server.get(f"/api/jobs/{restarts['long_id']}").json()
    assert killed["state"] == "failed"
    assert killed["error"] == {
        "error": "the server restarted while this job was running (its process ended with it)",
        "field": None,
    }
    assert killed["started"] <= killed["finished"]
    done = restarts["done"]
    assert server.get(f"/api/jobs/{done['id']}").json() == done
    assert downloads(server, done) == restarts["files"]
    listed = server.get("/api/jobs").json()
    assert [job["id"] for job in listed["jobs"]] == [killed["id"], done["id"]]
    assert listed["jobs"][0]["error"].startswith("the server restarted")


# -- in one process ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_app(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An app on a data folder of its own, so its job list holds only this module's jobs."""
    from convlens.app import create_app
    from convlens.config import Config

    config = Config(models_dirs=[models_dir], data_dir=tmp_path_factory.mktemp("own-jobs"))
    return create_app(config)


def run_to_end(client, body: dict) -> dict:
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    job = client.application.extensions["convlens"].jobs.get(job_id)
    assert job.ended.wait(ENDS_S), f"job {job_id} did not end"
    return client.get(f"/api/jobs/{job_id}").get_json()


def test_an_ended_job_leaves_memory_and_is_served_from_its_record(own_app):
    client = own_app.test_client()
    job = run_to_end(client, DREAM)
    jobs = own_app.extensions["convlens"].jobs
    assert job["state"] == "done" and job["files"] == "kept"
    assert job["id"] not in jobs.store.live, "an ended job is not kept in memory"
    with sqlite3.connect(own_app.extensions["convlens"].config.data_dir / "jobs.sqlite3") as db:
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert state == "done"
    assert client.get(f"/api/jobs/{job['id']}/result").get_json() == job["result"]
    assert client.get(job["result"]["animation"]).mimetype == "image/gif"


def test_the_job_list_walks_page_by_page_giving_every_job_once(own_app):
    client = own_app.test_client()
    made = [run_to_end(client, {**DREAM, "method": "predict", "params": {}})["id"] for _ in range(5)]
    total = client.get("/api/jobs").get_json()["total"]
    walked, cursor, pages = [], None, 0
    while True:
        query = "/api/jobs?limit=2" + (f"&before={cursor}" if cursor else "")
        page = client.get(query).get_json()
        assert len(page["jobs"]) <= 2 and page["total"] == total
        walked += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert len(walked) == len(set(walked)) == total and pages == (total + 1) // 2
    assert walked[:5] == made[::-1], "newest first"
    summary = client.get("/api/jobs?limit=1").get_json()["jobs"][0]
    assert set(summary) == {
        "id", "method", "model", "image", "state", "created", "started", "finished", "error", "thumbnail",
        "animation", "files",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"), ("before=nosuchjob", "before")],
)
def test_a_bad_page_request_is_a_400_naming_the_field(own_app, query, field):
    answer = own_app.test_client().get(f"/api/jobs?{query}")
    assert answer.status_code == 400 and answer.get_json()["field"] == field, answer.get_json()


def test_a_run_whose_files_were_deleted_by_hand_says_so_and_its_files_are_410(own_app):
    import shutil

    client = own_app.test_client()
    job = run_to_end(client, DREAM)
    shutil.rmtree(own_app.extensions["convlens"].config.results_dir / job["id"])
    now = client.get(f"/api/jobs/{job['id']}").get_json()
    assert now["files"] == "deleted" and now["state"] == "done"
    (name, url), *_ = job["result"]["images"].items()
    for path, field in ((url, "image"), (job["result"]["animation"], "animation")):
        answer = client.get(path)
        assert answer.status_code == 410 and answer.get_json()["field"] == field, answer.get_json()
        assert "deleted" in answer.get_json()["error"]
    assert client.get("/api/jobs?limit=200").get_json()["jobs"][0]["files"] == "deleted"


def test_old_runs_are_pruned_at_start_up_when_a_retention_is_set(models_dir, tmp_path):
    from convlens.app import create_app
    from convlens.config import Config

    config = Config(models_dirs=[models_dir], data_dir=tmp_path)
    client = create_app(config).test_client()
    old, recent = (run_to_end(client, DREAM)["id"] for _ in range(2))
    with sqlite3.connect(config.jobs_db) as db:
        db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time() - 3 * 86400, old))
    kept = create_app(Config(models_dirs=[models_dir], data_dir=tmp_path)).test_client()
    assert kept.get(f"/api/jobs/{old}").status_code == 200, "no retention: every run is kept"
    pruning = create_app(
        Config(models_dirs=[models_dir], data_dir=tmp_path, keep_results_days=2)
    ).test_client()
    assert pruning.get(f"/api/jobs/{old}").status_code == 404
    assert not (config.results_dir / old).exists()
    assert pruning.get(f"/api/jobs/{recent}").get_json()["files"] == "kept"


def run_chatty(ctx):
    for line in range(MAX_LOG_LINES + 50):
        yield Log(f"line {line}")
    yield Result(data={})


def test_a_jobs_log_keeps_its_newest_lines_and_says_how_many_went(app, client, extra_methods):
    extra_methods(Method(name="very_chatty", title="Very chatty", topic="Tests", run=run_chatty))
    job = run_to_end(client, {"method": "very_chatty", "model": DEFAULT_MODEL_ID, "image": "chelsea"})
    record = app.extensions["convlens"].jobs.store.records.load(job["id"])
    assert len(record["logs"]) == MAX_LOG_LINES + 1
    assert record["logs"][0]["message"] == "… 50 earlier lines dropped"
    assert [line["message"] for line in record["logs"][1:]] == [
        f"line {n}" for n in range(50, MAX_LOG_LINES + 50)
    ]


def test_the_pages_recent_runs_list_the_runs_from_before_the_restart(restarts, browser):
    from local import REPO

    assert (REPO / "web" / "dist" / "index.html").is_file(), "the page is not built: make web"
    server, done = restarts["server"], restarts["done"]
    context = browser.new_context(base_url=server.url)
    context.add_cookies(
        [{"name": "convlens_client", "value": BROWSER_ID, "url": server.url}]
    )  # the same browser
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto("/")
        runs = page.locator(".recent-run")
        runs.nth(1).wait_for(timeout=60_000)
        shown = [(run.get_attribute("data-job"), run.locator(".badge").text_content()) for run in runs.all()]
    finally:
        context.close()
    assert shown == [(restarts["long_id"], "failed"), (done["id"], "done")]
    assert not errors


# -- whose runs --------------------------------------------------------------------------------------------


def browser_client(app, browser_id: str):
    """A test client that is one browser: its ``convlens_client`` cookie, as the page's first load sets it."""
    client = app.test_client()
    client.set_cookie("convlens_client", browser_id)
    return client


def test_each_browser_lists_its_own_runs_and_a_link_shares_one_with_another(own_app):
    alice, bob = browser_client(own_app, "a" * 32), browser_client(own_app, "b" * 32)
    alices = run_to_end(alice, DREAM)
    bobs = run_to_end(bob, DREAM)
    for client, own, other in ((alice, alices, bobs), (bob, bobs, alices)):
        listed = client.get("/api/jobs?limit=200").get_json()
        assert own["id"] in [job["id"] for job in listed["jobs"]]
        assert other["id"] not in [job["id"] for job in listed["jobs"]], "another browser's run is not listed"
        assert listed["total"] == len(listed["jobs"])
        shared = client.get(f"/api/jobs/{other['id']}")  # the link works for anyone who has it
        assert shared.status_code == 200 and shared.get_json()["result"] == other["result"]


def test_a_run_is_deleted_by_its_owner_only_with_its_files(own_app):
    alice, bob = browser_client(own_app, "c" * 32), browser_client(own_app, "d" * 32)
    job = run_to_end(alice, DREAM)
    folder = own_app.extensions["convlens"].jobs.results_dir / job["id"]
    assert folder.is_dir()

    refused = bob.delete(f"/api/jobs/{job['id']}")
    assert refused.status_code == 403 and refused.get_json()["field"] == "job"
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 200 and folder.is_dir(), "nothing went"

    assert alice.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not folder.exists()
    gone = alice.get(f"/api/jobs/{job['id']}")
    assert gone.status_code == 404 and gone.get_json()["field"] == "job"
    assert job["id"] not in [entry["id"] for entry in alice.get("/api/jobs").get_json()["jobs"]]
    assert alice.delete(f"/api/jobs/{job['id']}").status_code == 404


def test_a_run_under_way_is_not_deleted_until_stopped(own_app):
    alice = browser_client(own_app, "e" * 32)
    answer = alice.post("/api/jobs", json=LONG_DREAM)
    job_id = answer.get_json()["id"]
    try:
        refused = alice.delete(f"/api/jobs/{job_id}")
        assert refused.status_code == 409 and "stop it" in refused.get_json()["error"]
    finally:
        alice.post(f"/api/jobs/{job_id}/stop")
        assert own_app.extensions["convlens"].jobs.get(job_id).ended.wait(ENDS_S)
    assert alice.delete(f"/api/jobs/{job_id}").status_code == 204
