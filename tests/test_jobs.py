"""How a running job paces what it sends: ``STREAM_HZ`` sends a second at most, and no more of the job's time
than ``stream_budget`` on sends that cost much (big frames on a slow machine).

The job manager runs a real job here, on a clock the test moves: each step of the method takes 1/64 s, and the
sink (where the server emits to viewers) says how long a send takes. So what is checked is the pacing itself,
exactly, whatever the machine's speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from convlens.config import Config
from convlens.events import Frame, Metrics, Progress
from convlens.jobs import JobManager
from convlens.methods import Method
from convlens.streaming import SLOWEST_SEND_S

STEPS = 500
STEP_S = 1 / 64
"""Seconds a step takes on the test's clock; a power of two, so that sums of them are exact."""


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TimedSink:
    """Records what a job sends; a send of a frame takes ``frame_s`` on the job's clock, the rest nothing."""

    clock: Clock
    frame_s: float
    frames: list[int] = field(default_factory=list)
    points: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    progress_at_frames: list[int | None] = field(default_factory=list)
    """The job's step when each frame was sent (``None`` before its first ``Progress``)."""
    busy_s: float = 0.0

    def state(self, job) -> None:
        pass

    def frame(self, job, frame) -> None:
        self.frames.append(frame.step)
        self.progress_at_frames.append(job.progress["step"] if job.progress else None)
        self.clock.now += self.frame_s
        self.busy_s += self.frame_s

    def progress(self, job) -> None:
        self.steps.append(job.progress["step"])

    def metrics(self, job, points) -> None:
        self.points.extend(point["step"] for point in points)

    def log(self, job, level, message) -> None:
        pass


def run_job(
    tmp_path, default_model, sample_image, *, frame_s: float, stream_hz: float, budget: float, progress=True
):
    """A job of ``STEPS`` steps of ``STEP_S`` each, a frame, metrics and (unless not ``progress``) progress at
    every one; its sink and how long it ran on the clock. Each step yields its frame and metrics halfway, as
    the optimisation methods do between a step's forward and backward passes."""
    clock = Clock()

    def run(ctx):
        for step in range(1, STEPS + 1):
            clock.now += STEP_S / 2
            yield Frame(np.full((8, 8, 3), step % 256, np.uint8), step=step)
            yield Metrics({"value": float(step)}, step=step)
            clock.now += STEP_S / 2
            if progress:
                yield Progress(step, STEPS)

    sink = TimedSink(clock, frame_s)
    started = clock.now
    run_on_clock(
        tmp_path, default_model, sample_image, run, sink, clock, stream_hz=stream_hz, stream_budget=budget
    )
    return sink, clock.now - started


def run_on_clock(tmp_path, model, image, run, sink, clock, **options) -> None:
    """Runs a job of the method ``run`` to its end, here and now, with a ``JobManager(**options)`` on ``clock``."""
    method = Method(name="on_clock", title="On the clock", topic="tests", run=run)
    jobs = JobManager(
        get_model=lambda _: model,
        get_method=lambda _: method,
        get_image=lambda _: image,
        sink=sink,
        start_task=lambda task, job: task(job),  # run the job here, now
        results_dir=tmp_path,
        clock=clock,
        **options,
    )
    job = jobs.submit({"method": method.name, "model": model.id, "image": "chelsea"})
    assert job.state == "done", job.error


def test_costly_sends_take_at_most_the_budgets_share_of_the_job(tmp_path, default_model, sample_image):
    # 1/32 s a frame, sent at every step if nothing paced it, would take 2/3 of the job.
    sink, elapsed = run_job(tmp_path, default_model, sample_image, frame_s=1 / 32, stream_hz=0, budget=0.1)
    # Each send and the steps to the next take 10 s for each 1 s of sending; the first frame, before the send's
    # cost is known, and the last step's go out whatever they cost.
    assert sink.busy_s <= 0.1 * elapsed + 2 / 32
    assert len(sink.frames) >= 10, "it still streams"
    assert sink.frames[-1] == STEPS and sink.steps[-1] == STEPS
    assert sink.points == list(range(1, STEPS + 1)), "a send carries every metrics point since the last"


def test_without_a_budget_every_step_is_sent(tmp_path, default_model, sample_image):
    sink, elapsed = run_job(tmp_path, default_model, sample_image, frame_s=1 / 32, stream_hz=0, budget=0)
    assert sink.frames == list(range(1, STEPS + 1))
    assert sink.busy_s / elapsed == pytest.approx(2 / 3)


def test_cheap_sends_go_at_stream_hz(tmp_path, default_model, sample_image):
    # At 10 sends a second a send goes out at the first step 0.1 s or more after the last (the job's start
    # first): every 7th (7/64 s), and the last step's.
    sink, _ = run_job(tmp_path, default_model, sample_image, frame_s=0.0, stream_hz=10, budget=0.01)
    assert sink.frames == [*range(7, STEPS, 7), STEPS]


def test_sends_wait_for_the_end_of_a_step(tmp_path, default_model, sample_image):
    # A send halfway through a step (where the optimisation methods yield their frames) would leave the
    # caches cold for the step's backward pass: once a job reports progress, its sends go out at step ends.
    sink, _ = run_job(tmp_path, default_model, sample_image, frame_s=0.0, stream_hz=10, budget=0.01)
    assert sink.progress_at_frames == sink.frames
    assert sink.frames == [*range(7, STEPS, 7), STEPS]


def test_a_job_without_progress_sends_at_its_other_events(tmp_path, default_model, sample_image):
    sink, _ = run_job(
        tmp_path, default_model, sample_image, frame_s=0.0, stream_hz=10, budget=0.01, progress=False
    )
    assert set(sink.progress_at_frames) == {None}
    assert sink.frames == [*range(7, STEPS, 7), STEPS]
    assert sink.points == list(range(1, STEPS + 1))


def test_a_job_whose_sends_cost_more_than_the_budget_allows_still_sends_twice_a_second(
    tmp_path, default_model, sample_image
):
    # 1/32 s a send at a 1% budget would mean one every 3 s; the viewer still gets one every 0.5 s.
    sink, elapsed = run_job(tmp_path, default_model, sample_image, frame_s=1 / 32, stream_hz=10, budget=0.01)
    assert len(sink.frames) >= elapsed / SLOWEST_SEND_S - 1
    assert sink.frames[-1] == STEPS


@pytest.mark.parametrize(
    ("hz", "sent"),
    [
        ("4", [*range(16, STEPS, 16), STEPS]),  # 16 steps of 1/64 s are the 1/4 s between two sends
        ("0", list(range(1, STEPS + 1))),  # 0: a send at every step
    ],
)
def test_stream_hz_from_the_environment_spaces_a_jobs_sends(
    tmp_path, default_model, sample_image, monkeypatch, hz, sent
):
    monkeypatch.setenv("CONVLENS_STREAM_HZ", hz)
    config = Config()  # as `convlens serve` makes it
    sink, _ = run_job(
        tmp_path,
        default_model,
        sample_image,
        frame_s=0.0,
        stream_hz=config.stream_hz,
        budget=config.stream_budget,
    )
    assert sink.frames == sent
    assert sink.steps == sent


def test_between_two_steps_a_send_waits_until_it_is_twice_overdue(tmp_path, default_model, sample_image):
    # At 10 sends a second a send is due 0.1 s after the last. Once a job has reported progress, the frames it
    # yields between two steps (here 46 of them, 1/64 s apart, after step 1) go out only when a send is 0.2 s
    # overdue: at the 13th frame (13/64 s is the first multiple of 1/64 s at or past 0.2 s), the 26th, the
    # 39th. Seven frames later (7/64 s, past 0.1 s but short of 0.2 s) none is sent at a frame, but the end of
    # step 2 sends the 46th.
    clock = Clock()

    def run(ctx):
        yield Progress(1, 2)
        for frame in range(1, 47):
            clock.now += STEP_S
            yield Frame(np.full((8, 8, 3), frame, np.uint8), step=frame)
        yield Progress(2, 2)

    sink = TimedSink(clock, frame_s=0.0)
    run_on_clock(tmp_path, default_model, sample_image, run, sink, clock, stream_hz=10, stream_budget=0)
    assert sink.frames == [13, 26, 39, 46]
    assert sink.progress_at_frames == [1, 1, 1, 2], "the 46th went out with step 2"
