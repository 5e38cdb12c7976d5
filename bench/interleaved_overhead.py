"""Per-step overhead of convlens's optimisation methods, with the bare loop's steps interleaved on the job's thread.

The other overhead benches (``deepdream_overhead.py``, ``optimisation_overhead.py``) set whole convlens jobs
against whole bare runs a few seconds apart. This machine's speed drifts by 10-30% over seconds, so their
pooled medians move by ±2-3% between runs: as much as the overhead they measure. Here the two sides take turns
every few steps (``--block``, 8), a fraction of a second, so drift falls on both alike.

The server is the real one, ``python -m convlens serve`` in its own process, watched over a websocket by one
viewer (or nobody, ``--no-viewer``). This bench puts ``interleave/sitecustomize.py`` on the server's path. That
file wraps ``convlens.runner.iterate``: after every 8th step of the job (or the next without a send), once
the job manager has handled the step's ``Progress`` event, it runs as many steps of the bare loop on the job's
thread, with the same model object. These are the loops ``deepdream_overhead.py`` and ``optimisation_overhead.py`` write out in plain
torch. The wrapper times both sides:

- each bare step is timed alone;
- the job's steps are timed from one ``Progress`` event handled to the next, less any bare steps between. So
  they hold the plugin's step, turning its events into frames, metrics and progress, and the sends to the
  viewer.

The job manager's clock leaves the bare steps out as well. Sends are then paced per job step (``STREAM_HZ``,
``STREAM_BUDGET``) as in a job that runs alone.

Where the sides change matters:

- Five of the methods yield a step's frame between its forward and its backward pass. A bare step run there
  (the first version of this bench) evicted the job's saved activations from the caches and made its backward
  pass slower: feature inversion measured 0.953 there and 0.989 at step boundaries.
- A send's work on the sockets' threads and in the viewer goes on after the send (which the job manager makes
  at the end of a step). Were the bare steps to start then, that work would fall on them. So a block of the
  job's steps ends at the first step from the 8th on without a send, and that work falls on the job's own
  next step.

Jobs run 200 steps (``--steps``), about as many as the methods' defaults. A job's first steps cost more than
its later ones (the viewer subscribing, the first sends), so shorter jobs show more overhead per step: with
40-step jobs feature_vis measured 4-6%, with 200-step ones 3-4%.

Per job, the ratio is (mean bare step) / (mean job step) over steps 2..N, which is convlens's it/s over the
bare loop's. The job's final image is compared with the bare loop's; they are the same computation, so the
difference should be 0/255. The bench prints medians and quartiles per case and all cases pooled.
Run: ``.venv/bin/python bench/interleaved_overhead.py [--methods deepdream,class_model --repeats 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIR_ENV = "CONVLENS_BENCH_INTERLEAVE_DIR"
"""Where the wrapped server writes each job's step times (``<job id>.json``); set by the driver."""
BLOCK_ENV = "CONVLENS_BENCH_INTERLEAVE_BLOCK"
"""How many steps each side runs before the other takes its turn; set by the driver (``--block``)."""
METHODS = ("deepdream", "class_model", "style_transfer", "activation_max", "inversion", "feature_vis")


# -- in the server (imported by interleave/sitecustomize.py) ---------------------------------------------
class JobClock:
    """``time.perf_counter`` less the time spent in bare steps: the job manager's clock in the server."""

    def __init__(self) -> None:
        self.bare_s = 0.0
        self.sent_at = float("-inf")
        """When the job manager last sent something to the viewers, on this clock."""

    def __call__(self) -> float:
        return time.perf_counter() - self.bare_s


@contextmanager
def captured_step(module) -> Iterator[dict]:
    """While open, ``module.timed_loop`` keeps its ``step`` and ``image`` callables in ``got`` instead of
    running the loop."""
    got: dict = {}
    original = module.timed_loop
    module.timed_loop = lambda step, steps, image, final=None: got.update(step=step, image=image)
    try:
        yield got
    finally:
        module.timed_loop = original


def bare_loop(method: str, model, params: dict) -> dict:
    """``method``'s bare loop on ``model``, set up as the job's parameters say (the driver submits the
    bench's bodies, whose settings the bare loops share): ``step()`` runs one step, ``image()`` is its
    picture now."""
    import deepdream_overhead as dd
    import optimisation_overhead as oo

    if method == "deepdream":
        forward = dd.layer_function(model, dd.LAYER)
        with captured_step(dd) as got:
            dd._bare_deepdream(model, forward, params["steps"], params["octaves"])
        return got
    run = oo.bare_loop(method, model, params.get("target"), params.get("size"))
    with captured_step(oo) as got:
        run(params["steps"])
    return got


def install(out_dir: str, block: int) -> None:
    """Wrap ``convlens.runner.iterate`` and the job manager's clock in this (server) process: ``block`` job
    steps, then as many bare ones, and so on."""
    from convlens import jobs, runner
    from convlens.events import Progress, Result, to_uint8
    from convlens.images import to_pixels

    clock, current = JobClock(), threading.local()
    original_iterate, original_init = runner.iterate, jobs.JobManager.__init__
    original_execute, original_send = jobs.JobManager._execute, jobs.JobManager._send

    def init(self, *args, **kwargs) -> None:
        original_init(self, *args, **{**kwargs, "clock": clock})

    def execute(self, job) -> None:
        current.job_id = job.id
        original_execute(self, job)

    def send(self, job) -> bool:
        sent = original_send(self, job)
        if sent:
            clock.sent_at = clock()
        return sent

    def iterate(method, ctx):
        loop = bare_loop(method.name, ctx.model, ctx.params)
        marks, bare, difference, due = [], [], None, False
        for event in original_iterate(method, ctx):
            if isinstance(event, Result):  # the job's final image against the bare loop's
                final = to_uint8(event.images[method.name if method.name != "deepdream" else "dream"])
                difference = int(np.abs(final.astype(int) - to_pixels(loop["image"]()).astype(int)).max())
            yield event
            if isinstance(event, Progress):  # handled by the job manager by now
                marks.append(clock())
                due = due or event.step % block == 0
                # A send in this step: its after-work is the job's, so the bare steps wait for the next.
                sent = len(marks) > 1 and clock.sent_at > marks[-2]
                if (due and not sent) or event.step >= event.total:
                    due = False
                    while len(bare) < event.step:  # the bare loop catches up: as many steps as the job's
                        started = time.perf_counter()
                        loop["step"]()
                        bare.append(time.perf_counter() - started)
                        clock.bare_s += bare[-1]
        times = {"marks": marks, "bare": bare, "difference": difference}
        Path(out_dir, f"{current.job_id}.json").write_text(json.dumps(times))

    runner.iterate = iterate
    jobs.JobManager.__init__ = init
    jobs.JobManager._execute = execute
    jobs.JobManager._send = send


# -- the driver -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from live import (
        add_viewer_options,
        convlens_server,
        ensure_models,
        exit_on_sigterm,
        machine_note,
        median,
        quartiles,
        stream_note,
        viewer_from_args,
        viewer_note,
        watched_job,
    )
    from live import write_summary as write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument("--formats", default="onnx,pt2,pt", help="comma-separated: onnx, pt2, pt")
    parser.add_argument(
        "--steps",
        type=int,
        default=200,
        help="steps a job, about as many as the methods' defaults (100-256); DeepDream's over its 3 octaves",
    )
    parser.add_argument("--repeats", type=int, default=4, help="jobs per case")
    parser.add_argument(
        "--block", type=int, default=8, help="steps each side runs before the other takes its turn"
    )
    parser.add_argument(
        "--size", type=int, default=128, help="style transfer's and feature_vis's working size"
    )
    add_viewer_options(parser)
    parser.add_argument("--job-timeout", type=float, default=600)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import deepdream_overhead as dd

    from convlens.models.store import ModelStore

    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    models_dir = ensure_models()
    store = ModelStore([models_dir])
    out_dir = tempfile.mkdtemp(prefix="convlens-interleave-")
    path = os.pathsep.join([str(HERE / "interleave"), str(HERE), os.environ.get("PYTHONPATH", "")])
    print(
        f"interleaved_overhead: {', '.join(methods)}; {args.steps} steps a job on {dd.IMAGE}; {machine_note()};"
        f" {stream_note()}; {viewer_note(args)}",
        flush=True,
    )

    details: dict[str, dict] = {}
    env = {"PYTHONPATH": path, DIR_ENV: out_dir, BLOCK_ENV: str(args.block)}
    with convlens_server(models_dir, env=env) as server:
        viewer = viewer_from_args(server.url, args)
        try:
            for method in methods:
                for fmt in formats:
                    body, octaves = body_maker(method, dd.FORMATS[fmt], store, args.size)

                    def run(steps: int, body=body, octaves=octaves) -> dict:
                        per_octave = max(1, steps // octaves)
                        job = watched_job(
                            server.url, viewer, body(per_octave), per_octave * octaves, args.job_timeout
                        )
                        times = json.loads(Path(out_dir, f"{job['job']}.json").read_text())
                        return {**job, **step_rates(times)}

                    run(2)  # warm-up: model load and graph building on the server
                    runs = [run(args.steps) for _ in range(args.repeats)]
                    for index, one in enumerate(runs):
                        print(
                            f"  {method:<14} {fmt:<5} job {index + 1}: convlens {one['convlens_its']:.2f} it/s,"
                            f" bare {one['bare_its']:.2f} it/s, ratio {one['ratio']:.3f},"
                            f" {one['frames_received']} frames received, final images differ by"
                            f" {one['max_pixel_difference']}/255",
                            flush=True,
                        )
                    details[f"{method} {fmt}"] = {
                        "runs": runs,
                        "ratios": {"step": [r["ratio"] for r in runs]},
                    }
        finally:
            if viewer is not None:
                viewer.close()
            shutil.rmtree(out_dir, ignore_errors=True)

    rows = []
    print(
        f"\nper step, convlens it/s / bare it/s, interleaved on the job's thread ({args.repeats} jobs a case)"
    )
    print(f"{'method':<14} {'format':<6} {'convlens':>9} {'bare':>9} {'ratio':>7} {'quartiles':>13}")
    for case, detail in details.items():
        method, fmt = case.split()
        ratios = detail["ratios"]["step"]
        low, high = quartiles(ratios)
        convlens = median([r["convlens_its"] for r in detail["runs"]])
        bare = median([r["bare_its"] for r in detail["runs"]])
        print(
            f"{method:<14} {fmt:<6} {convlens:>9.2f} {bare:>9.2f} {median(ratios):>7.3f} {low:>6.3f}-{high:<6.3f}"
        )
        rows.append(
            {
                "figure": f"{method} it/s per step, {fmt}, interleaved: convlens vs bare torch",
                "convlens": convlens,
                "reference": bare,
                "ratio": median(ratios),
            }
        )
    pooled = [ratio for detail in details.values() for ratio in detail["ratios"]["step"]]
    low, high = quartiles(pooled)
    print(
        f"all {len(pooled)} jobs pooled: median {median(pooled):.3f}, quartiles {low:.3f}-{high:.3f}:"
        f" convlens overhead {100 * (1 / median(pooled) - 1):+.1f}% time"
    )
    write_json(args.json, rows, details)
    return 0


def body_maker(method: str, model_id: str, store, size: int) -> tuple[Callable[[int], dict], int]:
    """``body(steps)``, the ``POST /api/jobs`` body of ``method`` on ``model_id`` as the other benches make it,
    and the octaves it runs (DeepDream's ``steps`` parameter counts the steps of each octave)."""
    import deepdream_overhead as dd
    import optimisation_overhead as oo
    from live import in_fresh_thread

    if method == "deepdream":
        return (lambda steps: dd.deepdream_body(model_id, steps, 3)), 3
    model = in_fresh_thread(lambda: store.get(model_id))
    # The top class of the picture, given explicitly so both sides ascend the same score.
    target = in_fresh_thread(lambda: model.predict(oo.chelsea_input(model), k=1)[0]["index"])
    return (lambda steps: oo.job_body(method, model_id, steps, target, size)), 1


def step_rates(times: dict) -> dict:
    """A job's per-step rates from the server's marks: convlens's over steps 2..N (the job clock, from the
    first step's ``Progress`` to the last's), the bare loop's over the same steps, and their ratio."""
    marks, bare = times["marks"], times["bare"][1:]
    convlens_s = (marks[-1] - marks[0]) / (len(marks) - 1)
    bare_s = sum(bare) / len(bare)
    return {
        "convlens_its": 1 / convlens_s,
        "bare_its": 1 / bare_s,
        "ratio": bare_s / convlens_s,
        "max_pixel_difference": times["difference"],
    }


if __name__ == "__main__":
    sys.exit(main())
