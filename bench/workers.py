"""Jobs a minute and time to the first frame: jobs handed to ``convlens worker`` processes over Redis and RQ
(``CONVLENS_JOB_QUEUE=rq``) against the embedded server running them in-process.

Each round (N = 1, 2, 4 by default) starts, side by side, a plain ``convlens serve`` (no Redis) with
``CONVLENS_MAX_RUNNING_JOBS=N`` (N = 2 is its default, so that round's in-process side is the default server),
and a ``convlens serve`` with ``CONVLENS_JOB_QUEUE=rq`` on a real ``redis-server`` (one for the run, a key prefix
a round) with N ``convlens worker`` processes. Every process gets the Procfile's malloc settings. Each side first
runs one job unmeasured (the in-process server loads the model then; a work horse loads it for every job).

Throughput: a batch of short jobs (``class_model``, 2 steps, Chelsea, the default model; it yields a frame a
step) POSTed at once by one client; jobs a minute = batch / (first POST → the last job's ``finished``, the
server's clock, the same machine's). The sides take turns going first, round by round.

Latency (the first round only, on idle sides): one job at a time, a Socket.IO viewer (``bench/live.py``'s
python-socketio ``Viewer``, connected beforehand) subscribing right after the POST answers; the time from the
POST to the first frame it receives (a frame sent before the subscription is replayed to it on subscribing).
The sides alternate job by job; medians.

``--preload MODULES`` adds a third side, ``queue+preload``: another queue web process with N workers that
import the named modules before they fork, so their work horses do not import them for each job (an experiment
on what a horse's model load costs; it showed onnx2torch's import to be most of it, which ``convlens worker``
now imports before forking).

Run: ``.venv/bin/python bench/workers.py [--workers 1,2,4] [--jobs 12] [--latency-jobs 5] [--quick]
[--preload MODULES]``. Not in ``bench/run.py``: the default run takes 5–11 minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from live import (
    LOCAL,
    REPO,
    Server,
    Viewer,
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    http,
    machine_note,
    median,
    rate,
    submit,
    write_summary,
)

sys.path.insert(0, str(REPO / "tests"))
from redis_fixtures import RedisServer  # noqa: E402 (tests/ is not a package)

MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
ROOMY = {"CONVLENS_MAX_QUEUED_PER_CLIENT": "1000", "CONVLENS_MAX_QUEUED_JOBS": "1000"}
"""The whole batch waits at once: the per-client queue limit (20) must not refuse it."""
ENDS_S = 600
"""A hang guard for a batch or a job to end: never reached when things work."""
REGISTERS_S = 180
FINAL = ("done", "failed", "stopped")
PRELOADED = (
    "import importlib, runpy, sys; [importlib.import_module(name) for name in sys.argv.pop(1).split(',')]; "
    "runpy.run_module('convlens', run_name='__main__', alter_sys=True)"
)
"""``python -m convlens`` after importing the modules named in its first argument."""
PRELOAD_SIDE = "queue+preload"


def job_body(steps: int) -> dict:
    from convlens.models.default import DEFAULT_MODEL_ID

    return {
        "method": "class_model",
        "model": DEFAULT_MODEL_ID,
        "image": "chelsea",
        "params": {"steps": steps},
    }


@contextmanager
def workers(
    server: Server, env: dict[str, str], count: int, redis_port: int, round_name: str, preload: str = ""
) -> Iterator[None]:
    """``count`` ``convlens worker`` processes over the web process's data folder, registered with RQ; each
    imports the modules named in ``preload`` (comma-separated) first, so its work horses inherit them."""
    import redis
    from rq import Worker

    data = server.log_path.parent / "data"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "CONVLENS_DATA_DIR": str(data), **env}
    names = [f"{round_name}-{index}" for index in range(count)]
    processes = []
    try:
        for name in names:
            command = [sys.executable, "-m", "convlens"]
            if preload:
                command = [sys.executable, "-c", PRELOADED, preload]
            # The workers share the cores, as `convlens cluster` gives them (their OpenMP pools would fight).
            threads = str(max(1, (os.cpu_count() or 1) // count))
            command += ["--models-dir", str(ensure_models()), "worker", "--threads", threads]
            with open(server.log_path.parent / f"worker-{name}.log", "w") as log:
                processes.append(
                    subprocess.Popen(
                        [*command, "--name", name],
                        env=environment,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=REPO,
                    )
                )
        connection = redis.Redis(host=LOCAL, port=redis_port)
        deadline = time.monotonic() + REGISTERS_S
        while not set(names) <= {worker.name for worker in Worker.all(connection=connection)}:
            for name, process in zip(names, processes, strict=True):
                if process.poll() is not None:
                    log = (server.log_path.parent / f"worker-{name}.log").read_text()
                    raise RuntimeError(f"worker {name} exited with {process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not register with RQ within {REGISTERS_S} s")
            time.sleep(0.2)
        connection.close()
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def wait_ended(url: str, job_ids: list[str]) -> list[dict]:
    """The records of ``job_ids`` once every one has ended, read every 0.2 s; an error if one did not finish."""
    session, deadline = http(), time.monotonic() + ENDS_S
    records: dict[str, dict] = {}
    while len(records) < len(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids) - len(records)} jobs not ended within {ENDS_S} s")
        for job_id in job_ids:
            if job_id not in records:
                answer = session.get(f"{url}/api/jobs/{job_id}", timeout=60)
                answer.raise_for_status()
                if answer.json()["state"] in FINAL:
                    records[job_id] = answer.json()
        time.sleep(0.2)
    failed = [job for job in records.values() if job["state"] != "done"]
    if failed:
        raise RuntimeError(
            f"{len(failed)} jobs did not finish: {failed[0]['state']} {failed[0].get('error')}"
        )
    return [records[job_id] for job_id in job_ids]


def jobs_a_minute(url: str, body: dict, count: int) -> tuple[float, float]:
    """``count`` jobs POSTed at once, run to their ends: jobs a minute from the first POST to the last end, and
    the median seconds a job ran (``started`` → ``finished``: in a work horse, its model load included)."""
    started = time.time()
    jobs = wait_ended(url, [submit(url, body) for _ in range(count)])
    ended = max(job["finished"] for job in jobs)
    return 60 * rate(count, ended - started), median([job["finished"] - job["started"] for job in jobs])


def first_frame_s(url: str, viewer: Viewer, body: dict) -> float:
    """Seconds from the POST of one job to its first frame at a viewer subscribing right after the POST."""
    started = time.time()
    record = viewer.watch(submit(url, body))
    viewer.wait(ENDS_S)
    if not record.frames:
        raise RuntimeError(f"job {record.job_id} sent no frame")
    return record.frames[0][0] - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="the rounds' worker counts (and in-process slots)")
    parser.add_argument("--jobs", type=int, default=12, help="the batch of each throughput run")
    parser.add_argument("--latency-jobs", type=int, default=5, help="single jobs a side for the latency")
    parser.add_argument("--steps", type=int, default=2, help="class_model's steps in each job")
    parser.add_argument("--quick", action="store_true", help="--workers 1,2 --jobs 4 --latency-jobs 3")
    parser.add_argument(
        "--preload",
        default="",
        help="modules (comma-separated) a third side's workers import before forking, e.g. onnx2torch",
    )
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.jobs, args.latency_jobs = "1,2", 4, 3
    exit_on_sigterm()
    counts = [int(count) for count in args.workers.split(",")]
    body = job_body(args.steps)
    models_dir = ensure_models()
    started = time.monotonic()
    print(f"{machine_note()}; {args.jobs} jobs a batch, class_model {args.steps} steps", flush=True)

    throughput: dict[int, dict[str, float]] = {}
    run_s: dict[int, dict[str, float]] = {}
    latency: dict[str, list[float]] = {}
    redis_folder = Path(tempfile.mkdtemp(prefix="convlens-bench-redis-"))
    redis_server = RedisServer(redis_folder)
    redis_server.start()
    try:
        for index, count in enumerate(counts):
            slots = {} if count == 2 else {"CONVLENS_MAX_RUNNING_JOBS": str(count)}
            with ExitStack() as stack:
                plain = stack.enter_context(convlens_server(models_dir, env={**MALLOC, **ROOMY, **slots}))
                sides = {"in-process": plain.url}
                for side, preload in [("queue", ""), (PRELOAD_SIDE, args.preload)][
                    : 2 if args.preload else 1
                ]:
                    queued = {
                        **MALLOC,
                        **ROOMY,
                        "CONVLENS_REDIS_URL": f"{redis_server.url}?prefix=bench{count}{len(sides)}:",
                        "CONVLENS_JOB_QUEUE": "rq",
                    }
                    web = stack.enter_context(convlens_server(models_dir, env=queued))
                    name = f"n{count}s{len(sides)}"
                    stack.enter_context(workers(web, queued, count, redis_server.port, name, preload))
                    sides[side] = web.url
                for url in sides.values():  # the unmeasured first job of each side
                    wait_ended(url, [submit(url, body)])
                order = list(sides) if index % 2 == 0 else list(sides)[::-1]
                throughput[count], run_s[count] = {}, {}
                for side in order:
                    throughput[count][side], run_s[count][side] = jobs_a_minute(sides[side], body, args.jobs)
                    print(
                        f"N={count} {side}: {throughput[count][side]:.1f} jobs/min, "
                        f"a job ran {run_s[count][side]:.2f} s (median)",
                        flush=True,
                    )
                if index == 0:
                    viewers = {side: Viewer(url) for side, url in sides.items()}
                    try:
                        for repeat in range(args.latency_jobs):
                            for side in order if repeat % 2 == 0 else order[::-1]:
                                seconds = first_frame_s(sides[side], viewers[side], body)
                                latency.setdefault(side, []).append(seconds)
                    finally:
                        for viewer in viewers.values():
                            viewer.close()
    finally:
        redis_server.kill()
        shutil.rmtree(redis_folder, ignore_errors=True)

    rows = report(throughput, run_s, latency, args, counts[0])
    print(f"\n{time.monotonic() - started:.0f} s in all", flush=True)
    write_summary(args.json, rows, {"throughput": throughput, "run_s": run_s, "latency": latency})
    return 0


def report(
    throughput: dict[int, dict[str, float]],
    run_s: dict[int, dict[str, float]],
    latency: dict[str, list[float]],
    args: argparse.Namespace,
    latency_count: int,
) -> list[dict]:
    """Print the tables; the summary rows for ``bench/run.py``."""
    queues = [side for side in next(iter(throughput.values())) if side != "in-process"]
    default = throughput.get(2, {}).get("in-process", float("nan"))
    print(f"\nJobs a minute ({args.jobs} jobs of class_model {args.steps} steps; {machine_note()})")
    print(
        "| N | in-process (N slots) | " + " | ".join(f"{side} (N workers) | / in-process" for side in queues),
        end="",
    )
    print(
        " | queue / in-process default (2) | a job ran (median s): "
        + " / ".join(["in-process", *queues])
        + " |"
    )
    print("| --- " * (4 + 2 * len(queues)) + "|")
    rows = []
    for count, sides in throughput.items():
        cells = [f"{count}", f"{sides['in-process']:.1f}"]
        for side in queues:
            cells += [f"{sides[side]:.1f}", f"{sides[side] / sides['in-process']:.3f}"]
            rows.append(
                {
                    "figure": f"jobs/min, {count} workers ({side}) vs {count} in-process slots",
                    "convlens": sides[side],
                    "reference": sides["in-process"],
                    "ratio": sides[side] / sides["in-process"],
                    "unit": "jobs/min",
                }
            )
        cells.append(f"{sides['queue'] / default:.3f}")
        cells.append(" / ".join(f"{run_s[count][side]:.2f}" for side in ["in-process", *queues]))
        print("| " + " | ".join(cells) + " |")
    plain_s = median(latency["in-process"])
    print(
        f"\nPOST to first frame, median of {args.latency_jobs} single jobs on idle sides (N={latency_count})"
    )
    for side, values in latency.items():
        queue_s = median(values)
        added = "" if side == "in-process" else f": +{queue_s - plain_s:.2f} s, {queue_s / plain_s:.1f}x"
        print(f"{side}: {queue_s:.2f} s{added} (each: {' '.join(f'{value:.2f}' for value in values)})")
        if side != "in-process":
            rows.append(
                {
                    "figure": f"POST to first frame (s), {side}",
                    "convlens": queue_s,
                    "reference": plain_s,
                    "ratio": plain_s / queue_s,
                    "unit": "s",
                }
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
