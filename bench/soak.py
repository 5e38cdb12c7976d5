"""Soak: does a server's memory level off over many jobs and large uploads? (issue 21: it grew 2.8 MB a job)

One ``python -m convlens serve`` on 127.0.0.1 with a throwaway data folder and the Procfile's malloc settings;
over HTTP, ``--jobs`` short jobs (``predict`` and ``saliency`` in turn on the default model and chelsea; each
draws a frame, which a finished job used to keep), ``--parallel`` at a time, each polled to its end; then
``--uploads`` large uploads (a ``--side`` x ``--side`` PNG of skimage's astronaut, a different picture each time)
each followed by a ``predict`` job on it. The server's RSS (psutil) is sampled every ``--every`` jobs and every
10 uploads. Printed: each phase's RSS after its warm-up (the first ``--warm-up`` jobs, the first 10 uploads) and
at its end, the growth between, and its slope; and the size of ``GET /api/jobs`` at the end (a page, not the
whole history).

Run: ``.venv/bin/python bench/soak.py [--jobs 1000] [--uploads 100] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
from live import convlens_server, ensure_models, exit_on_sigterm, http, machine_note, write_summary
from PIL import Image

from convlens.models.default import DEFAULT_MODEL_ID

MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
"""The Procfile's (and the Makefile's): without them glibc keeps freed arenas and RSS says little."""
JOB_S = 300
MB = 2**20


def run_job(url: str, body: dict) -> dict:
    """POST the job and poll it to its end; its final JSON (a failed job is an error)."""
    session = http()
    answer = session.post(f"{url}/api/jobs", json=body, timeout=120)
    if answer.status_code != 202:
        raise RuntimeError(f"POST /api/jobs answered {answer.status_code}: {answer.text}")
    job_id, deadline = answer.json()["id"], time.monotonic() + JOB_S
    while (job := session.get(f"{url}/api/jobs/{job_id}", timeout=60).json())["state"] not in (
        "done",
        "failed",
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end in {JOB_S} s")
        time.sleep(0.05)
    if job["state"] != "done":
        raise RuntimeError(f"job {job_id} failed: {job['error']}")
    return job


def short_job(number: int) -> dict:
    method = ("predict", "saliency")[number % 2]
    return {"method": method, "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {}, "seed": number}


def large_picture(photo: Image.Image, number: int) -> bytes:
    """The photo as PNG, its first rows noise seeded by ``number``, so no two uploads are the same picture."""
    pixels = np.asarray(photo).copy()
    pixels[:4] = np.random.default_rng(number).integers(0, 256, pixels[:4].shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def growth(samples: list[tuple[int, float]], warm_up: int) -> dict:
    """RSS after ``warm_up`` (the first sample at or past it) and at the end; growth and its slope per 100."""
    after = [(count, mb) for count, mb in samples if count >= warm_up]
    (start, start_mb), (end, end_mb) = after[0], after[-1]
    counts, mbs = np.array([c for c, _ in after], float), np.array([m for _, m in after])
    slope = float(np.polyfit(counts, mbs, 1)[0] * 100) if len(after) > 2 else float("nan")
    return {"from": start, "to": end, "rss_from_mb": start_mb, "rss_to_mb": end_mb, "growth_mb": end_mb - start_mb,
            "slope_mb_per_100": slope}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--every", type=int, default=50, help="jobs between two RSS samples")
    parser.add_argument("--warm-up", type=int, default=100, help="jobs before growth is counted")
    parser.add_argument(
        "--upload-warm-up",
        type=int,
        default=20,
        help="uploads before growth is counted (the image cache fills)",
    )
    parser.add_argument("--json", help="write the summary here (bench/run.py's format)")
    args = parser.parse_args()
    exit_on_sigterm()
    from skimage import data

    models_dir = ensure_models()
    photo = Image.fromarray(data.astronaut()).resize((args.side, args.side), Image.BILINEAR)
    with convlens_server(models_dir, env=MALLOC) as server:
        url, pid = server.url, server.pid
        job_samples = [(0, rss_mb(pid))]
        started = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            done = 0
            for first in range(0, args.jobs, args.every):
                batch = range(first, min(first + args.every, args.jobs))
                list(pool.map(lambda number: run_job(url, short_job(number)), batch))
                done += len(batch)
                job_samples.append((done, rss_mb(pid)))
                print(
                    f"jobs {done:5d}  RSS {job_samples[-1][1]:7.1f} MB  {time.monotonic() - started:6.0f} s"
                )
        upload_samples = [(0, rss_mb(pid))]
        session = http()
        for number in range(1, args.uploads + 1):
            files = {"file": (f"large-{number}.png", large_picture(photo, number), "image/png")}
            answer = session.post(f"{url}/api/images", files=files, timeout=300)
            if answer.status_code != 201:
                raise RuntimeError(f"upload {number} answered {answer.status_code}: {answer.text}")
            run_job(url, {**short_job(0), "image": answer.json()["id"]})
            if number % 10 == 0:
                upload_samples.append((number, rss_mb(pid)))
                print(f"uploads {number:4d}  RSS {upload_samples[-1][1]:7.1f} MB")
        listing = session.get(f"{url}/api/jobs", timeout=60)
        page = listing.json()
        if isinstance(page, list):  # a server from before the list had pages (issue 21)
            page = {"jobs": page, "total": len(page)}
        listed = {"bytes": len(listing.content), "jobs": len(page["jobs"]), "total": page["total"]}
    jobs = growth(job_samples, args.warm_up)
    uploads = growth(upload_samples, args.upload_warm_up) if args.uploads > args.upload_warm_up else None
    print(f"\n{machine_note()}; {args.jobs} jobs, {args.uploads} uploads of {args.side}x{args.side}")
    for name, figures in (("jobs", jobs), ("uploads", uploads)):
        if figures is None:
            continue
        print(
            f"{name:8s} RSS {figures['rss_from_mb']:.1f} MB after {figures['from']} -> {figures['rss_to_mb']:.1f} MB"
            f" after {figures['to']}: growth {figures['growth_mb']:+.1f} MB"
            f" ({figures['slope_mb_per_100']:+.2f} MB per 100)"
        )
    print(f"GET /api/jobs: {listed['bytes']} bytes for {listed['jobs']} of {listed['total']} jobs")
    rows = [
        {"figure": f"RSS growth after warm-up, {name}", "convlens": figures["growth_mb"], "reference": 50.0,
         "ratio": figures["growth_mb"] / 50.0, "unit": "MB (reference: the issue's target)"}
        for name, figures in (("jobs", jobs), ("uploads", uploads)) if figures is not None
    ]  # fmt: skip
    details = {"jobs": jobs, "uploads": uploads, "job_samples": job_samples, "upload_samples": upload_samples}
    write_summary(args.json, rows, {**details, "listing": listed, "machine": machine_note()})


if __name__ == "__main__":
    main()
