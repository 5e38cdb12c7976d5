"""Transfer: does an adversarial image made on one model fool the others?

Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical Black-Box Attacks against Machine Learning",
ASIA CCS 2017 (arXiv:1602.02697), section 5 and after Szegedy et al. 2014: adversarial examples crafted on one
model are often misclassified by another, so an attacker who can only query a model can craft on a stand-in.
Here the picture an attack made on the run's model is shown, forward only, to each other chosen model, with the
original beside it: its top-1 before and after, whether the top-1 changed ("fooled") and, for a targeted attack,
whether the target became the top-1.

Differences from the paper: there is no substitute training (the paper's Jacobian-based data augmentation that
queries the target's labels); the crafting model is the run's model as it is, and the other models are those
the server has loaded. "Fooled" is a changed top-1 against the model's own top-1 on the original, not against a
true label. A model whose input size differs sees both pictures resized by bilinear interpolation with
antialiasing in float (no rounding to 8 bits, which would blur a perturbation of a few grey levels); one of the
same size sees the very pixels. ``target_reached`` is ``None`` for an untargeted attack and for a model whose
labels are not the crafting model's (a class index means another thing there).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.events import Log
from convlens.params import Models

from .classes import top_classes

if TYPE_CHECKING:
    from convlens.methods import RunContext
    from convlens.models.base import Model

REFERENCE = (
    "Papernot, McDaniel, Goodfellow, Jha, Celik, Swami 2017, Practical Black-Box Attacks against Machine "
    "Learning, arXiv:1602.02697"
)


def at_size(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nx3xHxW ``images`` at ``size`` (bilinear, antialiased, in float, clipped to [0, 1]); as they are when
    already that size."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    resized = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0, 1)


def transfer_rows(
    original: torch.Tensor,
    adversarial: torch.Tensor,
    models: Sequence[Model],
    *,
    source: Model,
    target: int | None = None,
) -> list[dict[str, Any]]:
    """How each of ``models`` classifies the 1x3xHxW ``original`` and the ``adversarial`` made from it on
    ``source``: one row a model, ``{"model", "before", "after", "fooled", "target_reached"}`` (forward only)."""
    pair = torch.cat([original.detach(), adversarial.detach()]).float()
    rows = []
    for model in models:
        before, after = model.logits(at_size(pair, model.input_size))
        first, then = top_classes(model, before, k=1)[0], top_classes(model, after, k=1)[0]
        same_labels = list(model.labels) == list(source.labels)
        rows.append(
            {
                "model": model.id,
                "before": first,
                "after": then,
                "fooled": then["class"] != first["class"],
                "target_reached": (then["class"] == target) if target is not None and same_labels else None,
            }
        )
    return rows


def transfer_line(row: dict[str, Any]) -> str:
    """One row as a log line: the model, its top-1 before → after, and whether it was fooled."""
    before, after = row["before"], row["after"]
    verdict = "fooled" if row["fooled"] else "not fooled"
    if row["target_reached"]:
        verdict += ", target reached"
    return (
        f"transfer to {row['model']}: {before['label']} ({before['probability']:.1%}) → "
        f"{after['label']} ({after['probability']:.1%}), {verdict}"
    )


def transfer_report(
    ctx: RunContext, original: torch.Tensor, adversarial: torch.Tensor, target: int | None
) -> Generator[Log, None, list[dict[str, Any]]]:
    """Yields a log line a model of ``ctx.models["transfer"]`` (and one a model left out) and returns the rows of
    :func:`transfer_rows`: ``rows = yield from transfer_report(ctx, image, adversarial, target)``."""
    for model_id, reason in ctx.models_left_out.items():
        yield Log(f"transfer: {model_id} left out, it cannot be loaded ({reason})", level="warning")
    models = ctx.models.get("transfer", [])
    rows = transfer_rows(original, adversarial, models, source=ctx.model, target=target)
    for row in rows:
        yield Log(transfer_line(row))
    return rows


TRANSFER = Models(
    "transfer",
    None,
    run_model="excluded",
    title="Transfer to",
    help='Other models to show the adversarial to (forward only): none, some, or "*" every other model the '
    "server has; a table of which are fooled.",
)
"""The parameter an attack adds to evaluate its adversarial on other models (``ctx.models["transfer"]``)."""
