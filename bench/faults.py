"""How long each fault of a cluster takes to be dealt with: Redis, two web processes handing jobs to two workers
(``tests/cluster_fixtures.py``'s real processes), faults made with real SIGKILLs and a real Redis restart.

- *worker killed*: a running job's worker SIGKILLed → the job ``failed`` naming it (its heartbeat's expiry, found
  by a live process's reaper: ``HEARTBEAT_TTL_S`` + up to ``REAP_EVERY_S``).
- *stuck stop*: a job stuck inside a step (``tests/stuck_plugin``) is stopped → ``stopped`` (``STOP_GRACE_S``, then
  RQ's stop command kills its work horse).
- *web process killed*: its viewer's job watched again from the other web process: subscribe → the catch-up
  frame.
- *Redis restarted* (2 s down, append-only file): restart → a job accepted again (202), and → a running job's
  viewer on a web process gets frames again (Socket.IO's listener re-subscribing, after 1 s then doubling).

Each round ends with every job in a final state and every done job's ``result.json`` on disk (checked, printed).
Run: ``.venv/bin/python bench/faults.py [--rounds 3]`` (about 1–2 minutes a round on 2 CPUs).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import requests
from live import REPO, ensure_models, median

sys.path.insert(0, str(REPO / "tests"))
from cluster_fixtures import LONG, PREFIX, SHORT, Viewer, running_cluster, stepping  # noqa: E402

STUCK = {"method": "stuck", "model": SHORT["model"], "image": "chelsea", "params": {"seconds": 600}}


def until(check, what: str, limit_s: float = 300) -> float:
    """Seconds until ``check()`` is true (polled every 20 ms); ``RuntimeError`` past ``limit_s``."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > limit_s:
            raise RuntimeError(f"{what}: not within {limit_s} s")
        time.sleep(0.02)
    return time.monotonic() - began


def state(web, job_id: str) -> str:
    return web.get(f"/api/jobs/{job_id}")["state"]


def worker_killed(cluster) -> float:
    a, _ = cluster.webs
    job_id = a.submit(LONG)
    a.wait_for(job_id, stepping, "stepping")
    name = cluster.worker_of(a, job_id)
    cluster.workers[name].send_signal(signal.SIGKILL)
    cluster.workers[name].wait(30)
    seconds = until(lambda: state(a, job_id) == "failed", "the lost worker's job failed")
    cluster.start_worker(name)
    return seconds


def stuck_stop(cluster) -> float:
    a, b = cluster.webs
    job_id = a.submit(STUCK)
    a.wait_for(job_id, lambda job: job["frames"] >= 1, "stuck")
    began = time.monotonic()
    requests.post(f"{b.url}/api/jobs/{job_id}/stop", cookies={"convlens_client": "a" * 32}, timeout=60)
    until(lambda: state(a, job_id) == "stopped", "the stuck job stopped")
    return time.monotonic() - began


def web_killed(cluster) -> float:
    a, b = cluster.webs
    job_id = b.submit(LONG)
    watching = Viewer(a.url, job_id)
    watching.wait_frames(2)
    a.kill()
    cluster.webs.remove(a)
    began = time.monotonic()
    again = Viewer(b.url, job_id)
    again.wait_frames(1)
    seconds = time.monotonic() - began
    b.control(job_id, "stop")
    again.close()
    cluster.start_web()
    return seconds


def redis_restarted(cluster) -> tuple[float, float]:
    a, b = cluster.webs
    job_id = a.submit({**LONG, "params": {"steps": 60}})
    viewer = Viewer(b.url, job_id)
    viewer.wait_frames(2)
    cluster.redis.kill()
    time.sleep(2)
    seen = len(viewer.frames())
    cluster.redis.start()
    restarted = time.monotonic()

    def accepted() -> bool:
        answer = requests.post(
            f"{a.url}/api/jobs", json=SHORT, cookies={"convlens_client": "c" * 32}, timeout=60
        )
        return answer.status_code == 202

    to_accept = until(accepted, "a job accepted again")
    until(lambda: len(viewer.frames()) > seen, "frames again")
    to_frames = time.monotonic() - restarted
    viewer.close()
    return to_accept, to_frames


def check_ends(cluster) -> str:
    """Every job final (waited for), every done job's result.json on disk: the round's verdict, from Redis."""
    store = cluster.redis.client()
    keys = store.keys(f"{PREFIX}job:*")
    for key in keys:
        until(lambda key=key: store.hget(key, "state") in ("done", "failed", "stopped"), f"{key} ended")
    states = {key.split(":")[-1]: store.hget(key, "state") for key in keys}
    done = [job_id for job_id, job_state in states.items() if job_state == "done"]
    missing = [job_id for job_id in done if not (cluster.data / "results" / job_id / "result.json").is_file()]
    counts = ", ".join(f"{sorted(states.values()).count(s)} {s}" for s in sorted(set(states.values())))
    return f"{len(states)} jobs, all final ({counts}); {len(missing)} done without result.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="convlens-faults-") as folder:
        with running_cluster(ensure_models(), Path(folder)) as cluster:
            for round_ in range(args.rounds):
                figures.setdefault("worker killed → job failed", []).append(worker_killed(cluster))
                figures.setdefault("stuck job: stop → stopped", []).append(stuck_stop(cluster))
                figures.setdefault("web killed: other's subscribe → catch-up frame", []).append(
                    web_killed(cluster)
                )
                accept, frames = redis_restarted(cluster)
                figures.setdefault("Redis restart → a job accepted", []).append(accept)
                figures.setdefault("Redis restart → frames again on a web process", []).append(frames)
                print(f"round {round_ + 1}: {check_ends(cluster)}", flush=True)
    print("| fault | median s | each |\n| --- | --- | --- |")
    for what, values in figures.items():
        print(f"| {what} | {median(values):.2f} | {' '.join(f'{v:.2f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
