"""A third party's plugin whose method can get stuck inside a step: ``stuck`` shows a frame, then computes
(sleeps) for ``seconds`` without yielding, so only killing its process stops it early. Found by its entry point
(``convlens_stuck-0.1.dist-info``) when this folder is on ``PYTHONPATH``, as an installed plugin is."""

from __future__ import annotations

import time

import numpy as np

from convlens import hookimpl
from convlens.events import Frame, Progress, Result
from convlens.methods import Method
from convlens.params import Int


def run(ctx):
    yield Frame(np.full((8, 8, 3), 200, np.uint8), step=0)
    yield Progress(0, 2)
    time.sleep(ctx.params["seconds"])  # one long step, never back in the runner's loop meanwhile
    yield Progress(2, 2)
    yield Result(data={"slept": ctx.params["seconds"]})


@hookimpl
def register_methods():
    return [
        Method(
            name="stuck",
            title="Stuck in a step",
            topic="Tests",
            run=run,
            params=(Int("seconds", 600, minimum=0, maximum=3600),),
            description="Sleeps inside one step.",
        )
    ]
