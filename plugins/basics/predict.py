"""Top-k predictions: the model's most probable classes for the image, with their softmax probabilities."""

from __future__ import annotations

from collections.abc import Iterator

from convlens.events import Event, Frame, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Int


def run_predict(ctx: RunContext) -> Iterator[Event]:
    image = ctx.model_input()
    yield Frame(to_image(image), step=0, label="input")
    predictions = ctx.model.predict(image, k=ctx.params["k"])
    yield Progress(1, 1)
    yield Result(images={"input": to_image(image)}, data={"predictions": predictions})


PREDICT = Method(
    name="predict",
    title="Predictions",
    topic="Basics",
    run=run_predict,
    params=(Int("k", 5, minimum=1, maximum=50, title="Top k", help="How many classes to list."),),
    description="The model's k most probable classes for the image (softmax of the logits), "
    "on the image resized to the model's input size.",
)
