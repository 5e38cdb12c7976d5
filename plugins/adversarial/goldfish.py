""" "Mix in a tiny bit of goldfish weights": a linear softmax classifier fooled along the difference of two templates.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015 (arXiv:1412.6572),
section 3, as the lecture deck (004) shows it: each class of a linear softmax classifier has a weight template;
adding ε·sign(w_target − w_true) to an input raises the target's logit minus the true class's by
ε‖w_target − w_true‖₁, so a small ε flips the prediction to the target.

Differences from the deck: the classifier is trained here, on scikit-learn's 8×8 digits (pixels scaled to
[0, 1]; the first 1,500 to train, the other 297 held out and nudged) by minimising C·Σ cross-entropy + ½‖W‖²
(scikit-learn's ``LogisticRegression`` objective, the bias not penalised) with SciPy's L-BFGS, not on ImageNet;
the nudged digit is clipped to [0, 1], so a pixel already at the edge cannot move; ε is swept from 0 to the
chosen value, and ``data["flipped_at"]`` is the first swept ε at which the target wins. The model and picture a
job names are not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
from scipy.optimize import minimize

from convlens.errors import BadInput
from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Float, Int

from .classes import log_softmax

REFERENCE = (
    "Goodfellow, Shlens, Szegedy 2015, Explaining and Harnessing Adversarial Examples, arXiv:1412.6572, §3"
)
TRAINING_DIGITS = 1500
"""The first 1,500 of the 1,797 digits train the classifier; the rest are held out."""
C = 1.0
"""Inverse strength of the L2 penalty, as scikit-learn's ``C``."""
CLASSES = 10
ZOOM = 16
GAP = 4


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as N×64 float64 in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data / 16.0, data.target.astype(np.int64)


def train_softmax(features: np.ndarray, labels: np.ndarray, c: float = C) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K×D) and bias (K) minimising ``c·Σ cross-entropy + ½‖W‖²`` of a softmax over K = 10 classes."""
    count, dims = features.shape
    onehot = np.eye(CLASSES)[labels]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[: CLASSES * dims].reshape(CLASSES, dims), theta[CLASSES * dims :]
        log_p = log_softmax(features @ weights.T + bias)
        loss = (-c * (onehot * log_p).sum() + 0.5 * (weights**2).sum()) / count
        error = c * (np.exp(log_p) - onehot)
        gradient = np.concatenate([(error.T @ features + weights).ravel(), error.sum(axis=0)]) / count
        return loss, gradient

    theta = minimize(
        objective,
        np.zeros(CLASSES * (dims + 1)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "gtol": 1e-10, "ftol": 1e-15},
    ).x
    return theta[: CLASSES * dims].reshape(CLASSES, dims), theta[CLASSES * dims :]


def nudge(digit: np.ndarray, weights: np.ndarray, label: int, target: int, epsilon: float) -> np.ndarray:
    """``digit + epsilon·sign(w_target − w_label)``, clipped to [0, 1]."""
    return np.clip(digit + epsilon * np.sign(weights[target] - weights[label]), 0.0, 1.0)


def templates_picture(weights: np.ndarray) -> np.ndarray:
    """The ten 8×8 templates in two rows of five, red positive, blue negative, white 0, one scale for all."""
    scaled = weights / np.abs(weights).max()
    tile = ZOOM * 8 // 2
    picture = np.ones((2 * tile + GAP, 5 * tile + 4 * GAP, 3))
    for index, template in enumerate(scaled):
        values = np.kron(template.reshape(8, 8), np.ones((ZOOM // 2, ZOOM // 2)))
        colour = np.stack(
            [1 - np.maximum(-values, 0), 1 - np.abs(values), 1 - np.maximum(values, 0)], axis=-1
        )
        top, left = (index // 5) * (tile + GAP), (index % 5) * (tile + GAP)
        picture[top : top + tile, left : left + tile] = colour
    return picture


def nudge_picture(digit: np.ndarray, nudged: np.ndarray) -> np.ndarray:
    """Grey HxW: the digit | the perturbation (mid-grey is 0) | the nudged digit, each 8×8 enlarged ZOOM times."""
    panels = [digit, 0.5 + 0.5 * (nudged - digit), nudged]
    side = 8 * ZOOM
    picture = np.ones((side, 3 * side + 2 * GAP))
    for index, panel in enumerate(panels):
        left = index * (side + GAP)
        picture[:, left : left + side] = np.kron(panel.reshape(8, 8), np.ones((ZOOM, ZOOM)))
    return np.clip(picture, 0.0, 1.0)


@cache
def trained_classifier() -> tuple[np.ndarray, np.ndarray]:
    """The classifier of the training digits, trained once per process (its data never change)."""
    features, labels = digits()
    return train_softmax(features[:TRAINING_DIGITS], labels[:TRAINING_DIGITS])


def run_goldfish_weights(ctx: RunContext) -> Iterator[Event]:
    features, labels = digits()
    weights, bias = trained_classifier()
    held_out, held_out_labels = features[TRAINING_DIGITS:], labels[TRAINING_DIGITS:]
    digit, label = held_out[ctx.params["index"]], int(held_out_labels[ctx.params["index"]])
    probabilities = np.exp(log_softmax(digit @ weights.T + bias))
    target = ctx.params["target"]
    if target is None:
        target = int(
            np.argsort(probabilities)[-2] if probabilities.argmax() == label else probabilities.argmax()
        )
    if target == label:
        raise BadInput("params.target", f"is the digit's own label ({label}); choose another class")
    epsilon, steps = ctx.params["epsilon"], ctx.params["steps"]
    yield Frame(templates_picture(weights), step=0, label="templates")
    flipped_at = None
    for step in range(steps + 1):
        nudged = nudge(digit, weights, label, target, epsilon * step / steps)
        moved = np.exp(log_softmax(nudged @ weights.T + bias))
        if flipped_at is None and moved.argmax() == target:
            flipped_at = epsilon * step / steps
        yield Metrics(
            {
                "epsilon": epsilon * step / steps,
                "p_true": float(moved[label]),
                "p_target": float(moved[target]),
            },
            step=step,
        )
        yield Frame(nudge_picture(digit, nudged), step=step, label="nudge")
        yield Progress(step + 1, steps + 1)
    accuracy = float((np.argmax(held_out @ weights.T + bias, axis=1) == held_out_labels).mean())
    yield Result(
        images={"templates": templates_picture(weights), "nudge": nudge_picture(digit, nudged)},
        arrays={
            "weights": weights.astype(np.float32),
            "digit": digit.reshape(8, 8),
            "nudged": nudged.reshape(8, 8),
        },
        data={
            "label": label,
            "target": target,
            "epsilon": epsilon,
            "flipped_at": flipped_at,
            "prediction": int(probabilities.argmax()),
            "prediction_nudged": int(moved.argmax()),
            "p_true": float(probabilities[label]),
            "p_target": float(probabilities[target]),
            "p_true_nudged": float(moved[label]),
            "p_target_nudged": float(moved[target]),
            "held_out_accuracy": accuracy,
            "bias": bias.tolist(),
        },
    )


GOLDFISH_WEIGHTS = Method(
    name="goldfish_weights",
    title="Goldfish weights: fooling a linear classifier",
    topic="How easily it is fooled",
    run=run_goldfish_weights,
    params=(
        Int("index", 1, minimum=0, maximum=1797 - TRAINING_DIGITS - 1, title="Held-out digit"),
        Int(
            "target",
            None,
            minimum=0,
            maximum=CLASSES - 1,
            nullable=True,
            title="Target digit",
            help="Empty: the runner-up class.",
        ),
        Float(
            "epsilon", 0.2, minimum=0.0, maximum=1.0, title="ε", help="Step along sign(w_target − w_true)."
        ),
        Int(
            "steps", 20, minimum=1, maximum=200, title="Sweep steps", help="Points of the sweep from 0 to ε."
        ),
    ),
    needs=frozenset(),
    description="A linear softmax classifier trained on scikit-learn's digits: its ten weight templates, and a "
    "held-out digit nudged by ε·sign(w_target − w_true) until the target wins; the model and picture are not used.",
    reference=REFERENCE,
)
