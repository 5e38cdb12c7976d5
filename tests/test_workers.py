"""Jobs run by ``convlens worker`` processes over RQ (``CONVLENS_JOB_QUEUE=rq``): two real web processes, two real
workers and a real ``redis-server`` on loopback; viewers are real Socket.IO clients; faults are real SIGKILLs and
a real Redis restart."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from cluster_fixtures import ALICE, BOB, LONG, SHORT, Cluster, Viewer, ended, running_cluster, stepping
from convlens.models.default import DEFAULT_MODEL_ID
from local import REPO


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, two web processes over one data folder, two workers."""
    with running_cluster(models_dir, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_worker_runs_a_job_as_the_cli_does_and_viewers_on_both_web_processes_watch_it(cluster, tmp_path):
    a, b = cluster.webs
    job_id = a.submit({**SHORT, "seed": 7})
    viewers = [Viewer(a.url, job_id), Viewer(b.url, job_id, "png")]
    for viewer in viewers:
        assert viewer.wait_end() == "done"
        seqs = [frame["seq"] for frame in viewer.frames()]
        assert seqs and seqs == sorted(set(seqs)), seqs
        viewer.close()
    job = b.get(f"/api/jobs/{job_id}")
    assert job["state"] == "done" and job == a.get(f"/api/jobs/{job_id}")
    assert cluster.worker_of(a, job_id) in ("w1", "w2")
    # The same runner: the CLI, in this process's way of running a method, makes the very same picture.
    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "convlens", "--models-dir", str(cluster.models_dir), "run", "class_model",
         "--image", "chelsea", "--param", "steps=6", "--seed", "7", "--out", str(out), "--quiet"],
        check=True, cwd=REPO, env={**os.environ, "CONVLENS_DATA_DIR": str(tmp_path / "cli-data")},
    )  # fmt: skip
    served = cluster.data / "results" / job_id / "class_model.png"
    assert np.array_equal(pixels(served), pixels(out / "class_model.png"))
    # Frames leave the worker as pixels: the last one (PNG, lossless) is the result's very picture.
    last = viewers[1].frames()[-1]
    assert last["seq"] == job["frames"] - 1 and last["mime"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(last["data"])).convert("RGB")), pixels(served))


def test_pause_resume_and_stop_from_the_other_web_process_reach_the_worker(cluster):
    a, b = cluster.webs
    job_id = a.submit(LONG)
    a.wait_for(job_id, stepping, "stepping")
    assert b.control(job_id, "pause")["state"] == "paused"
    step = b.get(f"/api/jobs/{job_id}")["progress"]["step"]
    time.sleep(1.5)
    assert a.get(f"/api/jobs/{job_id}")["progress"]["step"] == step, "a paused job makes no step"
    assert b.control(job_id, "resume")["state"] == "running"
    a.wait_for(job_id, lambda job: job["progress"]["step"] > step, "stepping again")
    assert b.control(job_id, "stop")["state"] == "stopped"
    assert a.get(f"/api/jobs/{job_id}")["state"] == "stopped"


def test_queued_jobs_wait_in_their_client_line_and_a_free_worker_serves_the_client_running_fewest(cluster):
    a, b = cluster.webs
    running = [a.submit(LONG), b.submit(LONG)]
    for job_id in running:
        a.wait_for(job_id, stepping, "running")
    waiting = [a.submit(LONG), b.submit(LONG)]  # Alice's third and fourth, from either process
    bobs = a.submit(LONG, cookies=BOB)
    for job_id in [*waiting, bobs]:
        assert a.get(f"/api/jobs/{job_id}")["state"] == "queued"
    assert b.control(waiting[0], "pause")["state"] == "paused", "at once: no worker holds it"
    assert a.control(waiting[1], "stop")["state"] == "stopped"
    assert b.control(waiting[0], "resume")["state"] == "queued"
    a.control(running[0], "stop")
    # A free worker: Bob runs none, Alice one, so Bob's job goes first although Alice's was queued before it.
    a.wait_for(bobs, lambda job: job["state"] == "running", "started")
    assert a.get(f"/api/jobs/{waiting[0]}")["state"] == "queued"
    for job_id in (running[1], bobs):
        a.control(job_id, "stop", cookies=BOB if job_id == bobs else ALICE)
    a.wait_for(waiting[0], stepping, "started last")
    a.control(waiting[0], "stop")
    assert a.get(f"/api/jobs/{waiting[1]}")["started"] is None, "a job stopped in its line never ran"
    for job_id in [*running, *waiting, bobs]:
        assert a.wait_for(job_id, ended, "ended")["state"] == "stopped"


def test_a_job_asking_for_a_gpu_waits_for_a_gpu_worker_while_cpu_workers_run_the_others(cluster):
    a, b = cluster.webs
    gpu = a.submit({**SHORT, "device": "gpu"})
    cpu = b.submit({**SHORT, "device": "cpu"})
    anything = b.submit(SHORT)
    for job_id in (cpu, anything):
        assert a.wait_for(job_id, ended, "ended")["state"] == "done"
    assert a.get(f"/api/jobs/{gpu}")["state"] == "queued", "two CPU workers were free, and neither took it"
    assert b.control(gpu, "stop")["state"] == "stopped"


def test_a_stop_kills_a_worker_stuck_inside_a_step_and_the_worker_goes_on(cluster):
    a, b = cluster.webs
    job_id = a.submit(
        {"method": "stuck", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {"seconds": 600}}
    )
    viewer = Viewer(b.url, job_id)
    viewer.wait_frames(1)
    worker = cluster.worker_of(a, job_id)
    b.control(job_id, "stop")
    assert a.wait_for(job_id, ended, "stopped")["state"] == "stopped"
    assert viewer.wait_end() == "stopped"
    viewer.close()
    assert cluster.workers[worker].poll() is None, "only its work horse was killed"
    again = b.submit(SHORT)
    assert a.wait_for(again, ended, "ended")["state"] == "done"


def test_a_worker_killed_mid_job_fails_its_job_naming_it(cluster):
    a, b = cluster.webs
    job_id = a.submit(LONG)
    a.wait_for(job_id, stepping, "stepping")
    name = cluster.worker_of(a, job_id)
    (line,) = [line["message"] for line in cluster.record_logs(job_id) if "run by worker" in line["message"]]
    horse = int(line.split("(pid ")[1].split(")")[0])
    cluster.workers[name].send_signal(signal.SIGKILL)
    cluster.workers[name].wait(30)
    failed = b.wait_for(job_id, ended, "ended")
    assert failed["state"] == "failed"
    assert "worker worker:" in failed["error"]["error"] and "is gone" in failed["error"]["error"], failed[
        "error"
    ]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{horse}").exists() and Path(f"/proc/{horse}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the work horse outlived its worker"
        time.sleep(0.1)
    cluster.start_worker(name)


def test_a_killed_web_process_viewer_catches_up_on_the_other(cluster):
    a, b = cluster.webs
    job_id = b.submit(LONG)
    watching = Viewer(a.url, job_id)
    watching.wait_frames(3)
    seen = watching.frames()[-1]["seq"]
    a.kill()
    cluster.webs.remove(a)
    again = Viewer(b.url, job_id)
    again.wait_frames(1)
    caught_up = again.frames()[0]
    assert caught_up["seq"] >= seen, "the newest frame at once, not the first"
    history = next(message for name, message in again.events if name == "metrics_history")["history"]
    assert len(history) >= 2, "the chart's points so far"
    again.wait_frames(3)
    assert [f["seq"] for f in again.frames()] == sorted({f["seq"] for f in again.frames()})
    b.control(job_id, "stop")
    assert again.wait_end() == "stopped"
    again.close()
    cluster.start_web()


def test_a_redis_restart_under_load_ends_every_job_and_loses_no_result(cluster):
    a, b = cluster.webs
    jobs = [a.submit({**SHORT, "params": {"steps": 40}}), b.submit({**SHORT, "params": {"steps": 40}})]
    for job_id in jobs:
        a.wait_for(job_id, stepping, "stepping")
    cluster.redis.kill()
    time.sleep(2)
    cluster.redis.start()
    for job_id in jobs:
        job = a.wait_for(job_id, ended, "ended")
        assert job["state"] in ("done", "failed"), job
        if job["state"] == "done":
            assert (cluster.data / "results" / job_id / "result.json").is_file()
            for url in job["result"]["images"].values():
                assert requests.get(b.url + url, timeout=60).status_code == 200
        else:
            assert job["error"]["error"], "a failure says why"
    after = b.submit(SHORT)
    assert a.wait_for(after, ended, "ended")["state"] == "done", "web processes and workers reconnected"


@pytest.mark.parametrize(
    ("command", "env", "field"),
    [
        (["worker"], {"CONVLENS_REDIS_URL": ""}, "CONVLENS_REDIS_URL"),
        (["worker"], {"CONVLENS_REDIS_URL": "redis://127.0.0.1:1/0"}, "CONVLENS_REDIS_URL"),
        (["worker", "--device", "tpu"], {"CONVLENS_REDIS_URL": "redis://127.0.0.1:1/0"}, "device"),
        (["worker", "--device", "cuda:٣"], {"CONVLENS_REDIS_URL": "redis://127.0.0.1:1/0"}, "device"),
        (["worker", "--threads", "0"], {"CONVLENS_REDIS_URL": "redis://127.0.0.1:1/0"}, "threads"),
        (["serve", "--port", "1"], {"CONVLENS_JOB_QUEUE": "celery"}, "CONVLENS_JOB_QUEUE"),
        (
            ["serve", "--port", "1"],
            {"CONVLENS_JOB_QUEUE": "rq", "CONVLENS_REDIS_URL": ""},
            "CONVLENS_JOB_QUEUE",
        ),
    ],
)
def test_a_worker_or_web_process_set_up_wrong_exits_2_naming_the_setting(command, env, field, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "convlens", *command],
        env={**os.environ, "CONVLENS_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"convlens: error: {field}: " in done.stderr, done.stderr
