"""Class model visualisation: the image a classifier finds most typical of a class.

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image Classification Models
and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034), section 2. Gradient ascent on the image ``I`` to
maximise ``S_c(I) - λ‖I‖²``, where ``S_c`` is the unnormalised score (logit) of class ``c``, not its softmax
probability: raising a probability can be done by lowering the other classes, raising the score cannot.

As in the paper, ``I`` is measured in the network's input space, where the dataset mean image is zero: the
model normalises ``(pixels - mean) / std`` inside, so the ``"mean"`` start is the card's mean colour in
pixels (zero once normalised), and the L2 term is taken on the normalised input. Differences from the paper:

- the L2 term is the *mean* of the squared normalised input over its elements, not the sum, so ``l2_weight``
  means the same for every input size (the paper's ``λ`` is this weight divided by 3·H·W);
- the image is updated with Adam on its [0, 1] pixels and clipped to [0, 1] after each step, so it stays a
  picture a person can see; ``lr`` is therefore a change per step in [0, 1] pixel units. The paper takes
  plain gradient steps on unbounded inputs; Adam reaches a high class probability in tens of steps on any
  model without tuning the step size to the scale of its gradients;
- besides the zero (mean) image, a run can start from seeded noise around the mean colour, or from the
  chosen picture, to see which class evidence the network adds to it.

With no ``target``, the class is the model's top prediction for the chosen picture (what an empty class means
everywhere in convlens), so the method works for any label set; the starting image plays no part in it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from convlens.events import Event, Log, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Choice, ClassIndex, Float

from .common import (
    EVERY,
    adam_step,
    is_shown,
    lr_param,
    mean_start,
    non_finite,
    refuse,
    snapshot,
    steps_param,
)

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Simonyan, Vedaldi, Zisserman 2014, Deep Inside Convolutional Networks: Visualising Image Classification "
    "Models and Saliency Maps (arXiv:1312.6034), section 2"
)
INITS = ("mean", "noise", "image")


def start_image(ctx: RunContext, init: str) -> torch.Tensor:
    """The 1x3xHxW pixels at the model's input size the ascent starts from: ``mean``, ``noise`` or ``image``."""
    if init == "image":
        return ctx.model_input().clone()
    return mean_start(ctx, tuple(ctx.model.input_size), noise=init == "noise")


def class_objective(
    model: Model, image: torch.Tensor, target: int, l2_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """``S_c(I) - λ·mean(I²)`` on the normalised input, differentiable, and its parts as numbers.

    The parts: ``score`` (the logit of ``target``), ``probability`` (its softmax), ``l2`` (the mean square of
    the normalised input, unweighted) and ``objective``.
    """
    logits = model.forward(image).logits[0].float()
    score = logits[target]
    l2 = model.normalise(image).float().pow(2).mean()
    objective = score - l2_weight * l2
    parts = {
        "score": float(score.detach()),
        "probability": float(torch.softmax(logits.detach(), dim=0)[target]),
        "l2": float(l2.detach()),
        "objective": float(objective.detach()),
    }
    return objective, parts


def check_finite(model: Model, target: int, step: int, parts: dict[str, float]) -> None:
    """Refuse to go on once the objective is not a finite number, naming why and what to change."""
    if bad := non_finite(parts):
        refuse(
            "class_model",
            model,
            step,
            start=f"a non-finite output for class {target} on the starting image ({bad})",
            what=f"{bad} for class {target}",
            advice="another start",
        )


def run_class_model(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    target = params["target"]
    if target is None:
        target = model.predict(ctx.model_input(), k=1)[0]["index"]
    steps, every, l2_weight = params["steps"], params["every"], params["l2_weight"]
    label = model.label(target)
    yield Log(f"class model of {target} ({label}), starting from {params['init']!r}")

    image = start_image(ctx, params["init"]).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=params["lr"])
    for step in range(steps + 1):
        objective, parts = class_objective(model, image, target, l2_weight)
        check_finite(model, target, step, parts)
        if is_shown(step, every, steps):
            yield from snapshot(image, parts, step, "class model")
        if step == steps:
            break
        if not adam_step(optimiser, -objective, image):
            check_finite(model, target, step, {"gradient": math.nan})
        yield Progress(step + 1, steps)

    final = to_image(image)
    yield Result(
        images={"class_model": final},
        arrays={"image": final},
        data={
            "target": target,
            "label": label,
            "steps": steps,
            "init": params["init"],
            **parts,
        },
    )


CLASS_MODEL = Method(
    name="class_model",
    title="Class model",
    topic="What a unit wants to see",
    run=run_class_model,
    params=(
        ClassIndex(
            "target", help="The class whose score is maximised; empty: the top prediction for the picture."
        ),
        steps_param(100),
        lr_param(0.02),
        Float(
            "l2_weight",
            1.0,
            minimum=0.0,
            maximum=1000.0,
            title="L2 weight",
            help="λ: weight of the mean square of the normalised image, which keeps it close to the mean colour.",
        ),
        Choice(
            "init",
            "mean",
            INITS,
            title="Start from",
            help="mean: the dataset's mean colour (the paper's zero image); noise: seeded noise around it; "
            "image: the chosen picture.",
        ),
        EVERY,
    ),
    needs=frozenset({"gradients"}),
    description="Gradient ascent on the image, from the mean colour, to maximise one class's score minus an L2 "
    "penalty: the picture the network finds most typical of the class.",
    reference=REFERENCE,
)
