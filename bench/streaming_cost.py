"""What watching a job costs its steps: a job nobody watches, one watched at the server's send rate (10/s, within
its send budget), one watched with no budget, one watched at 20 sends a second, against the bare loop, in one run.

Each variant is one long job (2000 steps; DeepDream: 500 in one octave, at the picture's 448x298) on its own
``convlens serve``, paused between its windows with
``POST /api/jobs/<id>/pause`` and ``resume``. The run alternates: bare, variant A for a window, bare, variant B,
bare, ...; each window's step rate is set against the mean of the bare runs on either side of it. A window's
rate is read from the job itself: ``GET /api/jobs/<id>`` shortly after it resumes and again a window later, the
steps done between the two ``progress`` records over the server's clock between them, so the variants without
a viewer are timed the same way as the watched ones. The windows are ~1 s (bare runs as many steps as one
second of them took at the start), so the machine's drift over seconds falls on both sides.

The viewer is ``live.Viewer`` at niceness 19 with its lean client, acknowledging every frame at once: the
server sends as much as its send rate allows, as to the page. On a machine whose cores all run the job, the
viewer's own work is part of what watching costs; on a viewer's own machine it is not.

Run: ``.venv/bin/python bench/streaming_cost.py [--method style_transfer --format pt --windows 10]``
(``--variants unwatched,watched`` for some of them).
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import requests
from deepdream_overhead import FORMATS, LAYER, bare_deepdream, deepdream_body, layer_function
from live import (
    Viewer,
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    http,
    in_fresh_thread,
    machine_note,
    median,
    quartiles,
    submit,
)
from live import write_summary as write_json
from optimisation_overhead import bare_runner, chelsea_input, job_body

JOB_STEPS = 2000
DEEPDREAM_STEPS = 500
"""DeepDream's most steps an octave."""
SETTLE_S = 0.15
"""After ``resume``, how long before the window's first reading: the step that was under way at the pause ends
then, and the first step after it is not a fair sample of either side."""

VARIANTS = {
    "unwatched": ({}, False),
    "watched": ({}, True),
    "no budget": ({"CONVLENS_STREAM_BUDGET": "0"}, True),
    "watched, 20/s": ({"CONVLENS_STREAM_HZ": "20"}, True),
}
"""Name → the server's extra environment and whether a viewer subscribes."""


@dataclass
class PausedJob:
    """One long job on one server, run a window at a time."""

    url: str
    job: str
    viewer: Viewer | None
    steps: int = JOB_STEPS
    client: requests.Session = field(default_factory=http)

    def state(self) -> dict:
        answer = self.client.get(f"{self.url}/api/jobs/{self.job}", timeout=30)
        answer.raise_for_status()
        return answer.json()

    def act(self, action: str) -> None:
        self.client.post(f"{self.url}/api/jobs/{self.job}/{action}", timeout=30).raise_for_status()

    def pause(self) -> None:
        self.act("pause")
        while (state := self.state())["state"] != "paused":
            if state["state"] not in ("running", "queued"):
                raise RuntimeError(f"job {self.job} is {state['state']}: {state.get('error')}")
            time.sleep(0.05)

    def window(self, seconds: float) -> tuple[float, float]:
        """Run the job for a window of ``seconds``: its steps a second and the frames a second its viewer got."""
        self.act("resume")
        time.sleep(SETTLE_S)
        first, frames = self.state()["progress"], self.frames_received()
        time.sleep(seconds)
        last, frames = self.state()["progress"], self.frames_received() - frames
        self.pause()
        if last["step"] >= self.steps:
            raise RuntimeError(f"job {self.job} ran out of steps; use fewer or shorter windows")
        return (last["step"] - first["step"]) / (last["time"] - first["time"]), frames / seconds

    def frames_received(self) -> int:
        return len(self.viewer.record.frames) if self.viewer is not None else 0


def start_paused(url: str, body: dict, watched: bool, steps: int) -> PausedJob:
    """Submit ``body`` (a job of ``steps`` steps), watched by a lean viewer or not; paused once its first step
    is done."""
    job = PausedJob(url, submit(url, body), None, steps)
    if watched:
        job.viewer = Viewer(url, nice=19, lean=True)
        job.viewer.watch(job.job)
    while not (state := job.state()).get("progress"):
        if state["state"] not in ("running", "queued"):
            raise RuntimeError(
                f"job {job.job} is {state['state']} before its first step: {state.get('error')}"
            )
        time.sleep(0.05)
    job.pause()
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method", choices=("class_model", "style_transfer", "deepdream"), default="style_transfer"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="pt")
    parser.add_argument("--windows", type=int, default=10, help="windows per variant")
    parser.add_argument("--window-s", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--size", type=int, default=128, help="style transfer's working size")
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.models.store import ModelStore
    from convlens.runtime import configure_threads, tune_malloc

    tune_malloc()  # as `convlens serve` does
    configure_threads()
    models_dir = ensure_models()
    model = in_fresh_thread(lambda: ModelStore([models_dir]).get(FORMATS[args.format]))
    target = in_fresh_thread(lambda: model.predict(chelsea_input(model), k=1)[0]["index"])
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    if args.method == "deepdream":
        # One octave at the picture's 448x298: every frame the size of the last octave's.
        body, steps = deepdream_body(FORMATS[args.format], DEEPDREAM_STEPS, 1), DEEPDREAM_STEPS
        layer = in_fresh_thread(lambda: layer_function(model, LAYER))

        def bare(n: int) -> dict:
            return bare_deepdream(model, layer, n, 1)

    else:
        body, steps = job_body(args.method, FORMATS[args.format], JOB_STEPS, target, args.size), JOB_STEPS
        bare = bare_runner(args.method, model, target, args.size)
    window_steps = max(10, round(bare(20)["per_step_its"] * args.window_s))
    print(
        f"streaming_cost: {args.method}, {args.format}; {args.windows} windows of {args.window_s:g} s per variant,"
        f" bare runs of {window_steps} steps; {machine_note()}",
        flush=True,
    )
    bare_rates: list[float] = []
    frame_rates: dict[str, list[float]] = {}  # frames/s each variant's viewer got, per window
    windows: list[
        tuple[str, float]
    ] = []  # (variant, its rate), in the order run; bare_rates[i], [i + 1] beside
    with ExitStack() as stack:
        jobs: dict[str, PausedJob] = {}
        for name, (env, watched) in variants.items():
            server = stack.enter_context(convlens_server(models_dir, env))
            jobs[name] = start_paused(server.url, body, watched, steps)
            if jobs[name].viewer is not None:
                stack.callback(jobs[name].viewer.close)
        bare_rates.append(bare(window_steps)["per_step_its"])
        for window in range(args.windows):
            for name, job in jobs.items():
                rate, fps = job.window(args.window_s)
                windows.append((name, rate))
                frame_rates.setdefault(name, []).append(fps)
                bare_rates.append(bare(window_steps)["per_step_its"])
                print(
                    f"  window {window + 1} {name:<13} {rate:7.2f} it/s, {fps:5.1f} frames/s received,"
                    f" bare after {bare_rates[-1]:7.2f}",
                    flush=True,
                )
        for job in jobs.values():
            job.act("stop")

    ratios: dict[str, list[float]] = {name: [] for name in variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for (name, rate), before, after in zip(windows, bare_rates, bare_rates[1:], strict=False):
        rates[name].append(rate)
        ratios[name].append(rate / ((before + after) / 2))
    print(
        f"\nit/s per step, medians; ratio: each window over the bare runs beside it (bare {median(bare_rates):.2f} it/s)"
    )
    print(f"{'variant':<14} {'it/s':>7} {'ratio':>7} {'quartiles':>13} {'frames/s':>9}")
    rows = []
    for name in variants:
        low, high = quartiles(ratios[name])
        ratio = median(ratios[name])
        fps = median(frame_rates[name])
        print(f"{name:<14} {median(rates[name]):7.2f} {ratio:7.3f} {low:6.3f}-{high:.3f} {fps:9.1f}")
        rows.append(
            {
                "figure": f"{args.method} {args.format} it/s, {name} / bare",
                "convlens": median(rates[name]),
                "reference": median(bare_rates),
                "ratio": ratio,
                "unit": "it/s",
            }
        )
    write_json(args.json, rows, {"ratios": ratios, "rates": rates, "bare": bare_rates})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
