"""Gradient-sign attacks: FGSM, BIM and PGD (L∞ and L2) on the picture the model sees.

FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(arXiv:1412.6572), section 4: one step of ``epsilon × sign(∇ loss)``. BIM: Kurakin, Goodfellow & Bengio,
"Adversarial Examples in the Physical World", 2016 (arXiv:1607.02533), section 2.1: ``steps`` such steps of
``step``, each clipped back into the ``epsilon`` L∞ ball around the picture and into [0, 1]. PGD: Madry et al.,
"Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (arXiv:1706.06083), section 2.1:
BIM from a uniformly random start in the ball (L∞), or with steps along the normalised gradient projected onto
the L2 ball. The loss is the cross-entropy of the logits with the top class of the picture (untargeted: climbed,
away from it) or with ``target`` (targeted: descended, toward it); the updates and projections are those of
torchattacks (Kim 2020, arXiv:2010.01950), which the tests compare against.

Differences from the papers: the attack works on the picture resized to the model's input size, in [0, 1]
pixels (the model normalises inside); ``epsilon`` and ``step`` are in units of 1/255 of that range (8 means
8/255), and for L2 they are the L2 norm over all pixels and channels of the [0, 1] image, × 255 (so 255 is an
L2 norm of 1); FGSM uses ``epsilon`` as its step and ignores ``steps`` and ``step``; BIM's step count is
``steps``, not the paper's ``min(ε + 4, 1.25 ε)``; PGD's random start (L∞: uniform in the cube; L2: a
Gaussian direction scaled by a uniform fraction of ``epsilon``, as torchattacks draws it) comes from the
run's seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, ClassIndex, Float, Int

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Goodfellow, Shlens, Szegedy 2015, Explaining and Harnessing Adversarial Examples, arXiv:1412.6572; "
    "Kurakin, Goodfellow, Bengio 2016, Adversarial Examples in the Physical World, arXiv:1607.02533; "
    "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks, arXiv:1706.06083"
)
ATTACKS = ("fgsm", "bim", "pgd")
NORMS = ("linf", "l2")
PIXEL = 1.0 / 255.0
"""The unit of ``epsilon`` and ``step``: one grey level of the [0, 1] picture."""
DIVISION_GUARD = 1e-10
"""Added to the gradient's L2 norm before dividing by it (torchattacks' ``eps_for_division``): a zero gradient."""
FRAME_WIDTH = 512
"""The streamed frame's three panels are shrunk to fit this width."""
TOP = 5


def random_start(image: torch.Tensor, norm: str, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """A random point of the ``epsilon`` ball (``epsilon`` in [0, 1] units) around ``image``, clipped to [0, 1]."""
    if norm == "linf":
        delta = torch.empty_like(image).uniform_(-epsilon, epsilon, generator=generator)
    else:
        delta = torch.empty_like(image).normal_(generator=generator)
        length = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        fraction = torch.zeros_like(length).uniform_(0, 1, generator=generator)
        delta = delta * (fraction / length * epsilon)
    return (image + delta).clamp(0, 1)


def project(adversarial: torch.Tensor, image: torch.Tensor, norm: str, epsilon: float) -> torch.Tensor:
    """``adversarial`` moved into the ``epsilon`` ball around ``image`` (L∞: clipped; L2: scaled), then into [0, 1].

    Clipping to [0, 1] moves every pixel toward the picture's, so the result stays in the ball.
    """
    delta = adversarial - image
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        length = delta.flatten(1).norm(dim=1)
        delta = delta * torch.clamp(epsilon / length, max=1.0).view(-1, 1, 1, 1)
    return (image + delta).clamp(0, 1)


def attack_steps(
    model: Model,
    image: torch.Tensor,
    *,
    attack: str,
    norm: str,
    epsilon: float,
    step: float,
    steps: int,
    label: int,
    targeted: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Each state of the attack on the 1x3xHxW ``image`` in [0, 1]: ``(step, adversarial, its logits)``.

    ``epsilon`` and ``step`` are in [0, 1] units. Step 0 is the start (the picture, or PGD's random start when a
    ``generator`` is given); FGSM has one more, BIM and PGD ``steps`` more. ``label`` is the class whose
    cross-entropy is climbed (untargeted) or descended (``targeted``).
    """
    image = image.detach()
    if attack == "fgsm":
        step, steps = epsilon, 1
    adversarial = image.clone()
    if attack == "pgd" and generator is not None:
        adversarial = random_start(image, norm, epsilon, generator)
    labels = torch.tensor([label])
    for index in range(steps + 1):
        pixels = adversarial.clone().requires_grad_(index < steps)
        with torch.set_grad_enabled(index < steps):
            logits = model.forward(pixels).logits
        yield index, adversarial, logits.detach()
        if index == steps:
            return
        loss = F.cross_entropy(logits, labels)
        (gradient,) = torch.autograd.grad(-loss if targeted else loss, pixels)
        if norm == "linf":
            moved = adversarial + step * gradient.sign()
        else:
            length = gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + DIVISION_GUARD
            moved = adversarial + step * gradient / length
        adversarial = project(moved, image, norm, epsilon).detach()


def top_classes(model: Model, logits: torch.Tensor) -> list[dict[str, Any]]:
    """The ``TOP`` most probable classes of one image's logits, with their probabilities."""
    probabilities = logits[0].double().softmax(0)
    values, indices = probabilities.topk(min(TOP, probabilities.numel()))
    return [
        {"class": int(index), "label": model.label(int(index)), "probability": float(value)}
        for value, index in zip(values, indices, strict=True)
    ]


def perturbation_view(delta: torch.Tensor, scale: float) -> torch.Tensor:
    """The signed ``delta`` shown as grey 0.5 plus ``scale`` × itself, clipped to [0, 1]."""
    return (0.5 + scale * delta).clamp(0, 1)


def side_by_side(*panels: torch.Tensor) -> torch.Tensor:
    """1x3xHxW panels joined left to right, shrunk (area) so that the row is at most ``FRAME_WIDTH`` wide."""
    row = torch.cat(panels, dim=3)
    if row.shape[3] > FRAME_WIDTH:
        height = max(1, round(row.shape[2] * FRAME_WIDTH / row.shape[3]))
        row = F.interpolate(row, size=(height, FRAME_WIDTH), mode="area")
    return row.detach().clone()


def norms(delta: torch.Tensor) -> dict[str, float]:
    """The L∞ and L2 norms of ``delta`` in units of 1/255."""
    return {"linf": float(delta.abs().max()) / PIXEL, "l2": float(delta.double().norm()) / PIXEL}


def check_params(params: dict[str, Any], model: Model) -> None:
    if params["norm"] == "l2" and params["attack"] != "pgd":
        raise BadInput("params.norm", f"{params['attack']} takes steps along the gradient's sign: linf only")


def run_attack(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    attack, norm = params["attack"], params["norm"]
    epsilon, step = params["epsilon"] * PIXEL, params["step"] * PIXEL
    image = ctx.model_input()
    with torch.no_grad():
        original = ctx.model.forward(image).logits.detach()
    true_class = int(original[0].argmax())
    target = params["target"]
    targeted = target is not None
    label = target if targeted else true_class
    total = 1 if attack == "fgsm" else params["steps"]
    shown = f"{'target' if targeted else 'true class'} probability"
    scale = 0.5 / epsilon if norm == "linf" and epsilon > 0 else None
    flipped_at = reached_at = None
    generator = ctx.generator if attack == "pgd" and params["random_start"] else None
    for index, adversarial, logits in attack_steps(
        ctx.model,
        image,
        attack=attack,
        norm=norm,
        epsilon=epsilon,
        step=step,
        steps=params["steps"],
        label=label,
        targeted=targeted,
        generator=generator,
    ):
        delta = adversarial - image
        amplification = scale or 0.5 / max(float(delta.abs().max()), PIXEL)
        view = perturbation_view(delta, amplification)
        yield Frame(
            side_by_side(image, view, adversarial),
            step=index,
            label=f"original | perturbation ×{amplification:.3g} | adversarial",
        )
        probabilities = logits[0].double().softmax(0)
        top = int(logits[0].argmax())
        yield Metrics(
            {
                shown: float(probabilities[label]),
                "true class probability": float(probabilities[true_class]),
                **{f"{name} (/255)": value for name, value in norms(delta).items()},
            },
            step=index,
        )
        if flipped_at is None and top != true_class:
            flipped_at = index
            yield Log(
                f"step {index}: top-1 flipped from {ctx.model.label(true_class)} to {ctx.model.label(top)}"
            )
        if targeted and reached_at is None and top == target:
            reached_at = index
            yield Log(f"step {index}: the target {ctx.model.label(target)} is top-1")
        yield Progress(index, total)
    perturbation = np.ascontiguousarray(delta[0].permute(1, 2, 0).numpy(), dtype=np.float32)
    yield Result(
        images={"adversarial": to_image(adversarial), "perturbation": to_image(view)},
        arrays={"adversarial": to_image(adversarial), "perturbation": perturbation},
        data={
            "attack": attack,
            "norm": norm,
            "epsilon": params["epsilon"],
            "step": params["epsilon"] if attack == "fgsm" else params["step"],
            "steps": total,
            "target": target,
            "true_class": true_class,
            "top5_before": top_classes(ctx.model, original),
            "top5_after": top_classes(ctx.model, logits),
            "flipped_at": flipped_at,
            "reached_target_at": reached_at,
            "perturbation_scale": amplification,
            **norms(delta),
        },
    )


ADVERSARIAL_ATTACK = Method(
    name="adversarial_attack",
    title="Adversarial attack (FGSM, BIM, PGD)",
    topic="How easily it is fooled",
    run=run_attack,
    params=(
        Choice(
            "attack",
            "pgd",
            ATTACKS,
            title="Attack",
            help="fgsm: one step of epsilon; bim: steps from the "
            "picture; pgd: steps from a random start (if chosen).",
        ),
        Choice(
            "norm",
            "linf",
            NORMS,
            title="Norm",
            help="linf: each pixel within epsilon; l2 (pgd only): the "
            "whole perturbation's L2 norm within epsilon.",
        ),
        Float(
            "epsilon",
            8.0,
            minimum=0.0,
            maximum=255.0,
            title="Epsilon (/255)",
            help="The largest "
            "perturbation, in grey levels of the [0, 1] picture (8 means 8/255); for l2, its L2 norm × 255.",
        ),
        Float(
            "step",
            2.0,
            minimum=0.0,
            maximum=255.0,
            title="Step (/255)",
            help="Each step's size in the same units (bim, pgd; fgsm steps by epsilon).",
        ),
        Int("steps", 10, minimum=1, maximum=1000, title="Steps", help="bim and pgd; fgsm takes one."),
        ClassIndex(
            "target",
            title="Target class",
            help="Empty: untargeted, away from the top class; else toward this class.",
        ),
        Bool(
            "random_start",
            True,
            title="Random start",
            help="pgd: start from a seeded random point of the epsilon ball.",
        ),
    ),
    needs=frozenset({"gradients"}),
    check=check_params,
    description="Adversarial examples by the gradient of the cross-entropy w.r.t. the pixels: FGSM (Goodfellow "
    "et al. 2015), BIM (Kurakin et al. 2016) or PGD (Madry et al. 2018), within an L∞ or L2 ball of epsilon/255.",
    reference=REFERENCE,
)
