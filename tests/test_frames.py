"""A plugin that yields a ``Frame`` of something that is not an image is told what is wrong with it, where it
yields it: the run stops with that reason, and a job fails with it as its error, instead of a numpy error later.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from convlens.events import Frame, Progress
from convlens.jobs import JobManager
from convlens.methods import Method

# Each: the image a plugin might yield by mistake, the error type and what the message must name.
NOT_IMAGES = {
    "a string": ("chelsea.png", TypeError, r"got str"),
    "None": (None, TypeError, r"got NoneType"),
    "objects": (np.array([[object(), object()]]), TypeError, r"dtype object"),
    "int64 pixels": (np.full((8, 8, 3), 200, np.int64), TypeError, r"uint8 \(0-255\) or float.*int64"),
    "two channels": (np.zeros((8, 8, 2), np.float32), ValueError, r"HxWx3.*\[8, 8, 2\]"),
    "a batch of arrays": (np.zeros((2, 8, 8, 3), np.float32), ValueError, r"\[2, 8, 8, 3\]"),
    "an empty array": (np.zeros((0, 8, 3), np.uint8), ValueError, r"empty"),
    "a uint8 tensor": (torch.full((1, 3, 8, 8), 200, dtype=torch.uint8), TypeError, r"float.*torch\.uint8"),
    "a grey tensor": (torch.zeros(1, 1, 8, 8), ValueError, r"1x3xHxW.*\[1, 1, 8, 8\]"),
    "a batch of tensors": (torch.zeros(2, 3, 8, 8), ValueError, r"\[2, 3, 8, 8\]"),
}


def yielding(image) -> Method:
    """A throwaway method that draws one good frame, then ``image``."""

    def run(ctx):
        yield Frame(np.zeros((8, 8, 3), np.uint8), step=1)
        yield Progress(1, 2)
        yield Frame(image, step=2)
        yield Progress(2, 2)

    return Method(name="draws_a_frame", title="Draws a frame", topic="tests", run=run)


@pytest.mark.parametrize("name", NOT_IMAGES)
def test_a_frame_of_a_non_image_stops_the_run_saying_what_is_wrong(
    name, convlens_run, tiny_model, sample_image
):
    image, error, reason = NOT_IMAGES[name]
    with pytest.raises(error, match=rf"Frame's (image|tensor).*{reason}"):
        convlens_run(yielding(image), tiny_model, sample_image)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), np.float32),
        np.ones((8, 8, 4), np.float64),
        np.zeros((8, 8, 3), bool),
        torch.rand(3, 8, 8),
        torch.rand(1, 3, 8, 8, dtype=torch.float16),
    ],
    ids=["grey", "rgba", "bool", "3xHxW", "half"],
)
def test_every_kind_of_image_the_readme_allows_is_a_frame(image, convlens_run, tiny_model, sample_image):
    frames = [
        event for event in convlens_run(yielding(image), tiny_model, sample_image) if isinstance(event, Frame)
    ]
    assert frames[-1].pixels().shape == (8, 8, 3)


class FailureSink:
    """The job's events as a viewer gets them; only the state changes matter here."""

    def __init__(self) -> None:
        self.states: list[str] = []

    def state(self, job) -> None:
        self.states.append(job.state)

    def frame(self, job, frame) -> None:
        frame.data("jpeg")  # a viewer gets every frame encoded

    def progress(self, job) -> None:
        pass

    def metrics(self, job, points) -> None:
        pass

    def log(self, job, level, message) -> None:
        pass


@pytest.mark.parametrize("name", ["a string", "objects", "a uint8 tensor"])
def test_a_job_yielding_a_non_image_fails_with_what_was_wrong(name, tmp_path, tiny_model, sample_image):
    image, error, reason = NOT_IMAGES[name]
    sink = FailureSink()
    jobs = JobManager(
        get_model=lambda _: tiny_model,
        get_method=lambda _: yielding(image),
        get_image=lambda _: sample_image,
        sink=sink,
        start_task=lambda task, job: task(job),  # run the job here, now
        results_dir=tmp_path,
        stream_hz=0,
    )
    job = jobs.submit({"method": "draws_a_frame", "model": tiny_model.id, "image": "chelsea"})
    assert job.state == "failed" and sink.states[-1] == "failed"
    assert job.error["field"] is None
    assert job.error["error"].startswith(f"{error.__name__}: a Frame's"), job.error
    assert re.search(reason, job.error["error"]), job.error
