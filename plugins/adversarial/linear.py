"""The linear explanation of adversarial examples: many small moves along sign(w) add up to a large change.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015 (arXiv:1412.6572),
section 3: for a linear score ``wᵀx``, moving every input by ε along ``sign(w)`` raises the score by ``ε‖w‖₁``,
which grows with the number of dimensions however small ε is. The numbers are the lecture deck's worked
10-dimensional logistic regression (deck 004): ``x = [2, −1, 3, −2, 2, 2, 1, −4, 5, 1]``,
``w = [−1, −1, 1, −1, 1, −1, 1, 1, −1, 1]``, score −3 and p(class 1) = σ(−3) = 0.0474; ε = 0.5 gives score 2
and p = 0.88.

Differences from the paper: no network and no image, only the deck's ten numbers (the method ignores the model
and the picture a job names); there is no bias, as in the deck; ε is swept from 0 to the chosen value in
``steps`` equal steps, a metrics point and a bar picture of the per-dimension contributions ``w_i·x_i`` (grey:
before, red: at that ε) at each, so the chart draws score and probability as functions of ε.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Float, Int

REFERENCE = (
    "Goodfellow, Shlens, Szegedy 2015, Explaining and Harnessing Adversarial Examples, arXiv:1412.6572, §3"
)
X = (2.0, -1.0, 3.0, -2.0, 2.0, 2.0, 1.0, -4.0, 5.0, 1.0)
W = (-1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0)
"""The deck's input and weights."""

BAR_HEIGHT = 240
BAR_WIDTH = 14
SLOT_WIDTH = 40
MARGIN = 10
BEFORE_COLOUR = (128, 128, 128)
AFTER_COLOUR = (214, 39, 40)
"""The bar picture: a slot per dimension holding its contribution before (left) and after (right) the move."""


def logistic(score: float) -> float:
    """σ(score) = p(class 1) of logistic regression."""
    return 1.0 / (1.0 + math.exp(-score))


def sign_step(x: np.ndarray, w: np.ndarray, epsilon: float) -> np.ndarray:
    """``x`` moved by ``epsilon`` along ``sign(w)``: the step that raises ``wᵀx`` most under an L∞ budget."""
    return x + epsilon * np.sign(w)


def contribution_bars(before: np.ndarray, after: np.ndarray, scale: float) -> np.ndarray:
    """HxWx3 uint8 bar chart of two vectors of contributions, ``scale`` reaching from the zero line to the edge.

    Dimension ``i`` is slot ``i`` from the left: ``before[i]`` a grey bar, ``after[i]`` a red one to its right,
    up for positive values, down for negative ones, on a black zero line across the middle.
    """
    width = SLOT_WIDTH * len(before)
    picture = np.full((BAR_HEIGHT, width, 3), 255, dtype=np.uint8)
    zero = BAR_HEIGHT // 2
    reach = zero - MARGIN
    for index, (first, second) in enumerate(zip(before, after, strict=True)):
        for value, left, colour in (
            (first, index * SLOT_WIDTH + (SLOT_WIDTH // 2 - BAR_WIDTH), BEFORE_COLOUR),
            (second, index * SLOT_WIDTH + SLOT_WIDTH // 2, AFTER_COLOUR),
        ):
            length = round(abs(float(value)) / scale * reach)
            rows = slice(zero - length, zero) if value > 0 else slice(zero + 1, zero + 1 + length)
            picture[rows, left : left + BAR_WIDTH] = colour
    picture[zero] = 0
    return picture


def run_linear_explanation(ctx: RunContext) -> Iterator[Event]:
    x, w = np.array(X), np.array(W)
    epsilon, steps = ctx.params["epsilon"], ctx.params["steps"]
    before = w * x
    x_adv = sign_step(x, w, epsilon)
    after = w * x_adv
    scale = float(max(np.abs(before).max(), np.abs(after).max()))
    for step in range(steps + 1):
        moved = sign_step(x, w, epsilon * step / steps)
        score = float(w @ moved)
        yield Metrics(
            {"epsilon": epsilon * step / steps, "score": score, "probability": logistic(score)}, step=step
        )
        picture = contribution_bars(before, w * moved, scale)
        yield Frame(picture, step=step, label="contributions")
        yield Progress(step + 1, steps + 1)
    score, score_adv = float(w @ x), float(w @ x_adv)
    yield Result(
        images={"contributions": picture},
        data={
            "epsilon": epsilon,
            "x": x.tolist(),
            "w": w.tolist(),
            "x_adv": x_adv.tolist(),
            "score": score,
            "p": logistic(score),
            "score_adv": score_adv,
            "p_adv": logistic(score_adv),
            "contributions": {"before": before.tolist(), "after": after.tolist()},
        },
    )


LINEAR_EXPLANATION = Method(
    name="linear_explanation",
    title="The linear explanation",
    topic="How easily it is fooled",
    run=run_linear_explanation,
    params=(
        Float(
            "epsilon",
            0.5,
            minimum=0.0,
            maximum=2.0,
            title="ε",
            help="How far every input moves along sign(w); the score rises by ε‖w‖₁ = 10ε.",
        ),
        Int(
            "steps", 20, minimum=1, maximum=200, title="Sweep steps", help="Points of the sweep from 0 to ε."
        ),
    ),
    needs=frozenset(),
    description="The lecture's 10-dimensional logistic regression: moving each input by ε along sign(w) adds "
    "ε‖w‖₁ to the score, turning p(class 1) = 0.0474 into 0.88 at ε = 0.5; the model and picture are not used.",
    reference=REFERENCE,
)
