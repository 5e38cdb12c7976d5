"""The linear nudge on a deep net: one gradient of the margin, then a scan of ε along its sign.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015 (arXiv:1412.6572),
section 3, "The linear explanation of adversarial examples": for a linear score w·x, moving every one of n
inputs by ε·sign(w) raises it by ε‖w‖₁, which grows with n while ε stays below what a picture's pixels can
show; the paper argues deep nets are "too linear" to resist this. Here ``w`` is the gradient g = ∇ₓ(z_target −
z_true) of the model's margin at the picture (the linear model a first-order Taylor expansion gives), taken
once; the picture is then moved to x + ε·sign(g), clipped to [0, 1], for each ε of a scan, by forward passes
only, in batches. Each ε gives the actual change of z_target − z_true beside the linear model's prediction
g·(x̃ − x) (ε‖g‖₁ where no pixel is clipped; the two changes are equal for a linear net), the target's
probability and the top-1, and the first ε at which the top-1 changes and at which it becomes the target.

Differences from the paper: the paper's linear argument is about a network's weights and its FGSM moves along
the sign of the loss's gradient (untargeted); this moves along the sign of the gradient of the target's logit
minus the true class's (targeted, so the prediction of the linear model is exact in the linear case), at the
picture resized to the model's input size, in [0, 1] pixels (the model normalises inside); the "true" class is
the model's top-1 for the picture (no label is known) and the default target its runner-up; ε is in units of
1/255 of the pixel range; the predicted change is g·(x̃ − x), the first-order term of the move actually made,
which is smaller than ε‖g‖₁ where clipping holds a pixel at 0 or 1 (``data["scan"]`` gives both).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Predictions, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Choice, ClassIndex, Float, Int

from .attacks import PIXEL, refuse_non_finite, side_by_side
from .classes import top_classes

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Goodfellow, Shlens, Szegedy 2015, Explaining and Harnessing Adversarial Examples, arXiv:1412.6572, §3"
)
FRAME_LABEL = "original | sign(g) | nudged"
"""Every frame's label: three panels of equal width; sign(g) black (−1), grey (0), white (+1) per channel."""
SPACINGS = ("geometric", "linear")
BATCH = 16
"""Nudged pictures per forward pass."""
LINEAR_TOLERANCE = 0.1
"""``data["linear_up_to"]``: the largest ε up to which each actual change is within 10 % of the prediction."""


def epsilon_scan(spacing: str, max_epsilon: float, points: int, min_epsilon: float) -> list[float]:
    """0, then ``points`` values of ε (any unit) up to ``max_epsilon``: equal ratios from ``min_epsilon``
    (geometric) or equal steps of ``max_epsilon / points`` (linear)."""
    if spacing == "linear":
        return [0.0] + [max_epsilon * k / points for k in range(1, points + 1)]
    if points == 1:
        return [0.0, max_epsilon]
    ratio = math.log(max_epsilon / min_epsilon) / (points - 1)
    return [0.0] + [min_epsilon * math.exp(ratio * k) for k in range(points - 1)] + [max_epsilon]


def margin_gradient(
    model: Model, image: torch.Tensor, target: int | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(g, logits, true class, target)``: g = ∇ₓ(z_target − z_true) at the 1x3xHxW ``image`` in [0, 1],
    where the true class is the model's top-1 and ``target`` (``None``: the runner-up) any other class."""
    pixels = image.detach().clone().requires_grad_(True)
    logits = model.forward(pixels).logits
    refuse_non_finite(model, 0, image, logits.detach())
    order = logits[0].detach().argsort(descending=True)
    true_class = int(order[0])
    target = int(order[1]) if target is None else target
    if target == true_class:
        raise BadInput(
            "params.target",
            f"is the picture's top-1 class ({true_class}, {model.label(true_class)}); choose another class",
        )
    (gradient,) = torch.autograd.grad(logits[0, target] - logits[0, true_class], pixels)
    if not bool(torch.isfinite(gradient).all()):
        raise BadInput(
            "model", f"the gradient of model {model.id!r} at the picture is not finite", status=422
        )
    return gradient.detach(), logits.detach(), true_class, target


def nudged(image: torch.Tensor, sign: torch.Tensor, epsilons: list[float]) -> torch.Tensor:
    """``image + ε·sign`` clipped to [0, 1], one picture per ε ([0, 1] units)."""
    steps = torch.tensor(epsilons, dtype=image.dtype).view(-1, 1, 1, 1)
    return (image + steps * sign).clamp(0, 1)


def check_params(params: dict[str, Any], model: Model) -> None:
    if params["max_epsilon"] <= 0:
        raise BadInput("params.max_epsilon", f"must be greater than 0, got {params['max_epsilon']}")
    if params["spacing"] == "geometric":
        if params["min_epsilon"] <= 0:
            raise BadInput("params.min_epsilon", f"must be greater than 0, got {params['min_epsilon']}")
        if params["min_epsilon"] >= params["max_epsilon"] and params["points"] > 1:
            raise BadInput(
                "params.min_epsilon",
                f"must be less than max_epsilon ({params['max_epsilon']}), got {params['min_epsilon']}",
            )


def run_linear_nudge(ctx: RunContext) -> Iterator[Event]:
    params, model = ctx.params, ctx.model
    image = ctx.model_input()
    gradient, logits, true_class, target = margin_gradient(model, image, params["target"])
    sign = gradient.sign()
    sign_view = 0.5 + 0.5 * sign
    gradient_l1 = float(gradient.double().abs().sum())
    epsilons = epsilon_scan(params["spacing"], params["max_epsilon"], params["points"], params["min_epsilon"])
    if gradient_l1 == 0:
        yield Log("the margin's gradient at the picture is zero: the nudge moves no pixel")
    top5_original = top_classes(model, logits)
    rows: list[dict[str, Any]] = []
    flipped_at = flipped_to = reached_at = None
    kept: dict[str, torch.Tensor] = {}
    for start in range(0, len(epsilons), BATCH):
        chunk = epsilons[start : start + BATCH]
        pictures = nudged(image, sign, [e * PIXEL for e in chunk])
        with torch.inference_mode():
            scan = model.forward(pictures, logits=True).logits.double()
        first_order = ((pictures - image).double() * gradient.double()).flatten(1).sum(1)
        for offset, epsilon in enumerate(chunk):
            index = start + offset
            picture, scan_logits = pictures[offset : offset + 1], scan[offset : offset + 1]
            refuse_non_finite(model, index, picture, scan_logits)
            margin = float(scan_logits[0, target] - scan_logits[0, true_class])
            if index == 0:
                base_margin = margin
            probabilities = scan_logits[0].softmax(0)
            top = int(scan_logits[0].argmax())
            row = {
                "epsilon": epsilon,
                "margin_change": margin - base_margin,
                "first_order": float(first_order[offset]),
                "epsilon_l1": epsilon * PIXEL * gradient_l1,
                "target_probability": float(probabilities[target]),
                "true_probability": float(probabilities[true_class]),
                "top1": top,
                "top1_label": model.label(top),
            }
            rows.append(row)
            yield Frame(side_by_side(image, sign_view, picture), step=index, label=FRAME_LABEL)
            yield Predictions(
                {"original": top5_original, "nudged": top_classes(model, scan_logits)}, step=index
            )
            yield Metrics(
                {
                    "margin change": row["margin_change"],
                    "first-order prediction": row["first_order"],
                    "target probability": row["target_probability"],
                    "true class probability": row["true_probability"],
                    "epsilon (/255)": epsilon,
                },
                step=index,
            )
            if flipped_at is None and top != true_class:
                flipped_at, flipped_to, kept["flipped"] = epsilon, top, picture
                yield Log(
                    f"ε = {epsilon:.4g}/255: top-1 flipped from {model.label(true_class)} "
                    f"to {model.label(top)}"
                )
            if reached_at is None and top == target:
                reached_at = epsilon
                if top != flipped_to:
                    yield Log(f"ε = {epsilon:.4g}/255: the target {model.label(target)} is top-1")
            yield Progress(index + 1, len(epsilons))
    images = {"sign": to_image(sign_view), "nudged": to_image(picture)}
    if "flipped" in kept:
        images["flipped"] = to_image(kept["flipped"])
    yield Result(
        images=images,
        arrays={
            "gradient": np.ascontiguousarray(gradient[0].permute(1, 2, 0).numpy(), dtype=np.float32),
            "epsilons": np.array(epsilons),
            "margin_change": np.array([row["margin_change"] for row in rows]),
            "first_order": np.array([row["first_order"] for row in rows]),
            "target_probability": np.array([row["target_probability"] for row in rows]),
        },
        data={
            "true_class": true_class,
            "true_label": model.label(true_class),
            "target": target,
            "target_label": model.label(target),
            "margin": base_margin,
            "gradient_l1": gradient_l1,
            "spacing": params["spacing"],
            "scan": rows,
            "top5_original": top5_original,
            "top5_nudged": top_classes(model, scan_logits),
            "flipped_at": flipped_at,
            "flipped_to": flipped_to,
            "flipped_to_label": None if flipped_to is None else model.label(flipped_to),
            "reached_target_at": reached_at,
            "linear_up_to": linear_up_to(rows),
        },
    )


def linear_up_to(rows: list[dict[str, Any]]) -> float:
    """The largest scanned ε up to which each actual change is within ``LINEAR_TOLERANCE`` of g·Δx."""
    reach = 0.0
    for row in rows[1:]:
        if abs(row["margin_change"] - row["first_order"]) > LINEAR_TOLERANCE * abs(row["first_order"]):
            break
        reach = row["epsilon"]
    return reach


LINEAR_NUDGE = Method(
    name="linear_nudge",
    title="The linear nudge on a deep net",
    topic="How easily it is fooled",
    run=run_linear_nudge,
    params=(
        ClassIndex(
            "target",
            title="Target class",
            help="The class whose logit minus the top-1's is pushed up; empty: the picture's runner-up.",
        ),
        Float(
            "max_epsilon",
            8.0,
            minimum=0.0,
            maximum=255.0,
            title="Largest ε (/255)",
            help="The scan's last ε, in grey levels of the [0, 1] picture (8 means 8/255); greater than 0.",
        ),
        Int("points", 24, minimum=1, maximum=256, title="Points", help="Values of ε scanned after ε = 0."),
        Choice(
            "spacing",
            "geometric",
            SPACINGS,
            title="Spacing",
            help="geometric: equal ratios from the smallest ε to the largest (small ε show the first-order "
            "regime); linear: equal steps from 0.",
        ),
        Float(
            "min_epsilon",
            0.01,
            minimum=0.0,
            maximum=255.0,
            title="Smallest ε (/255)",
            help="geometric: the scan's first ε after 0; greater than 0 and less than the largest.",
        ),
    ),
    needs=frozenset({"gradients"}),
    check=check_params,
    description="One gradient g of the target's logit minus the top-1's at the picture (Goodfellow et al. "
    "2015, §3), then the picture moved by ε·sign(g) for a scan of ε: the actual change of the margin "
    "beside the linear prediction g·Δx, the target's probability, and the ε at which the top-1 flips.",
    reference=REFERENCE,
)
