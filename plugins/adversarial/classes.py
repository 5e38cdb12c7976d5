"""How a model ranks the classes of a picture, as every adversarial method shows it: softmax in float64 and the
top classes as the page's top-5 lists take them (``{"class", "label", "probability"}``, best first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from convlens.models.base import Model

TOP = 5


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis (one row of logits, or N rows), in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (one row of logits, or N rows), in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_classes(model: Model, logits: torch.Tensor | np.ndarray, k: int = TOP) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one picture's logits (1xK or K; log-probabilities do as well), with
    their probabilities, best first."""
    probabilities = torch.as_tensor(logits).reshape(-1).double().softmax(0)
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [
        {"class": int(index), "label": model.label(int(index)), "probability": float(value)}
        for value, index in zip(values, indices, strict=True)
    ]
