"""Issue 23's load: two web processes, two workers and a real ``redis-server`` on loopback; ten jobs submitted at
once by four clients, fifty real Socket.IO viewers spread over both web processes. Every viewer sees its own
job's frames in order and its final event; nobody is sent a frame they did not ask for; both workers run jobs.
Also the queue limits in worker mode: a client's waiting jobs are counted over both web processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import socketio

from cluster_fixtures import ALICE, BOB, ENDS_S, PREFIX, SHORT, Cluster, Viewer, Web, ended, running_cluster

CLIENTS = [{"convlens_client": letter * 32} for letter in "abcd"]
JOBS = 10
VIEWERS_PER_JOB = 5
BODY = {**SHORT, "params": {"steps": 5, "every": 1}}
"""Six frames a job (steps 0 to 5), about 2 s of model load and a few of steps in a worker's work horse."""
MIME = {"png": "image/png", "jpeg": "image/jpeg"}


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, two web processes over one data folder, two workers."""
    with running_cluster(models_dir, tmp_path_factory.mktemp("load")) as cluster:
        yield cluster


class Bystander:
    """A connected Socket.IO client that subscribes to nothing and keeps every event it is sent."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, object]] = []
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", lambda name, message: self.events.append((name, message)))
        self.client.connect(url, transports=["websocket"], headers={"Cookie": "convlens_client=" + "e" * 32})


class Unsubscriber(Viewer):
    """A viewer that holds its acknowledgement of each frame until :meth:`leave_after_first_frame` is done with
    it, so that no frame is on its way to it when it unsubscribes."""

    def __init__(self, url: str, job_id: str) -> None:
        self.arrived = threading.Event()
        self.holding = True
        super().__init__(url, job_id)

    def _frame(self, message: dict) -> None:
        self.events.append(("frame", message))
        self.arrived.set()
        if not self.holding:
            self.client.emit("frame_ack", {"job": message["job"], "seq": message["seq"]})

    def leave_after_first_frame(self) -> int:
        """Unsubscribe once a frame came, then acknowledge that frame (a page drawing it as it leaves); the
        number of frames it had when the server acknowledged the unsubscribe."""
        assert self.arrived.wait(ENDS_S), "no frame came"
        answer = self.client.call("unsubscribe", {"job": self.job_id}, timeout=60)
        assert answer["ok"], answer
        had = len(self.frames())
        self.holding = False
        frame = self.frames()[-1]
        self.client.emit("frame_ack", {"job": frame["job"], "seq": frame["seq"]})
        return had


def test_fifty_viewers_on_ten_jobs_see_their_own_frames_in_order_and_both_workers_run_jobs(cluster):
    webs: list[Web] = cluster.webs
    bystanders = [Bystander(web.url) for web in webs]
    with ThreadPoolExecutor(JOBS) as pool:
        job_ids = list(
            pool.map(
                lambda i: webs[i % 2].submit({**BODY, "seed": i}, cookies=CLIENTS[i % len(CLIENTS)]),
                range(JOBS),
            )
        )
    assert len(set(job_ids)) == JOBS
    # Viewer k of job j on web process (j + k) % 2, so each job is watched from both; every other one in PNG.
    places = [
        (job_id, webs[(j + k) % 2].url, "png" if k % 2 == 0 else "jpeg")
        for j, job_id in enumerate(job_ids)
        for k in range(VIEWERS_PER_JOB)
    ]
    with ThreadPoolExecutor(10) as pool:
        viewers = list(pool.map(lambda place: (Viewer(place[1], place[0], place[2]), place[2]), places))
    queued = [job_id for job_id in job_ids if webs[0].get(f"/api/jobs/{job_id}")["state"] == "queued"]
    assert queued, "every job started before the viewers were connected: too few jobs to load the workers"
    leaving_job = queued[-1]
    leaving = Unsubscriber(webs[1].url, leaving_job)
    had = leaving.leave_after_first_frame()

    jobs = {job_id: webs[0].wait_for(job_id, ended, "ended") for job_id in job_ids}
    # The frames each job made, as the worker that ran it saved its record.
    made = {
        job_id: json.loads(cluster.redis.client().hget(f"{PREFIX}job:{job_id}", "record"))["frames"]
        for job_id in job_ids
    }
    for viewer, _ in viewers:
        assert viewer.wait_end() == "done"
    for viewer, fmt in viewers:
        frames = viewer.frames()
        seqs = [frame["seq"] for frame in frames]
        assert seqs, f"a viewer of {viewer.job_id} saw no frame"
        assert seqs == sorted(set(seqs)), seqs
        assert {frame["job"] for frame in frames} == {viewer.job_id}, "a frame of another job"
        assert {frame["mime"] for frame in frames} == {MIME[fmt]}
        assert seqs[-1] <= made[viewer.job_id] - 1, (seqs, made[viewer.job_id])

    # The job went on making frames after the unsubscribe (its other viewers saw them); none came to it.
    others = [viewer for viewer, _ in viewers if viewer.job_id == leaving_job]
    assert max(viewer.frames()[-1]["seq"] for viewer in others) > leaving.frames()[had - 1]["seq"]
    assert len(leaving.frames()) == had, [frame["seq"] for frame in leaving.frames()]
    assert not leaving.ended.is_set(), "its final event went to the job's room, which it left"
    for bystander in bystanders:
        assert [name for name, _ in bystander.events] == [], "sent to a client that subscribed to nothing"

    for job_id, job in jobs.items():
        assert job["state"] == "done", job
        assert (cluster.data / "results" / job_id / "result.json").is_file()
        for url in job["result"]["images"].values():
            assert requests.get(webs[1].url + url, timeout=60).status_code == 200
    assert {cluster.worker_of(webs[0], job_id) for job_id in job_ids} == {"w1", "w2"}
    for client in (
        [leaving.client] + [viewer.client for viewer, _ in viewers] + [b.client for b in bystanders]
    ):
        client.disconnect()


@pytest.fixture(scope="module")
def limited(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two web processes handing jobs to workers, at most 2 waiting jobs a client, and no worker: every job
    waits."""
    folder = tmp_path_factory.mktemp("limited")
    with running_cluster(models_dir, folder, workers=(), CONVLENS_MAX_QUEUED_PER_CLIENT="2") as cluster:
        yield cluster


def test_a_client_waiting_jobs_for_workers_count_on_both_web_processes(limited):
    a, b = limited.webs

    def refused(web: Web, cookies: dict) -> None:
        answer = requests.post(f"{web.url}/api/jobs", json=SHORT, cookies=cookies, timeout=60)
        assert answer.status_code == 429, answer.text
        assert answer.json()["field"] == "max_queued_per_client", answer.text

    alices = [a.submit(SHORT), b.submit(SHORT)]
    refused(a, ALICE)
    refused(b, ALICE)
    bobs = b.submit(SHORT, cookies=BOB)  # another client is not limited by Alice's jobs
    a.control(
        alices[0], "stop"
    )  # one of Alice's leaves its line: she may queue one more, from either process
    alices.append(b.submit(SHORT))
    refused(a, ALICE)
    for job_id in alices[1:]:
        b.control(job_id, "stop")
    b.control(bobs, "stop", cookies=BOB)
    assert {a.get(f"/api/jobs/{job_id}")["state"] for job_id in [*alices, bobs]} == {"stopped"}


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two web processes handing jobs to one worker, both given one token."""
    folder = tmp_path_factory.mktemp("guarded")
    with running_cluster(models_dir, folder, workers=("t1",), CONVLENS_TOKEN=TOKEN) as cluster:
        yield cluster


TOKEN = "cluster-secret-" + "7" * 24
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_every_web_process_checks_the_token_for_requests_and_sockets(guarded):
    a, b = guarded.webs
    for web in (a, b):
        refused = requests.get(f"{web.url}/api/jobs", timeout=60)
        assert refused.status_code == 401, refused.text
        refused_socket = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            refused_socket.connect(web.url, transports=["websocket"])
    answer = requests.post(f"{a.url}/api/jobs", json=SHORT, headers=BEARER, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    viewer = socketio.Client(reconnection=False)
    ended_event = threading.Event()
    viewer.on("done", lambda message: ended_event.set())
    viewer.connect(b.url, transports=["websocket"], auth={"token": TOKEN})
    assert viewer.call("subscribe", {"job": job_id}, timeout=60)["ok"]
    assert ended_event.wait(ENDS_S), (
        "the job ran in the worker and its end reached the other process's viewer"
    )
    viewer.disconnect()
    assert requests.get(f"{b.url}/api/jobs/{job_id}", headers=BEARER, timeout=60).json()["state"] == "done"
