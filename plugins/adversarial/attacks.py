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
run's seeded generator. On the CPU the network is fed the pixels in channels-last order, which is faster
(:func:`network_layout`) and changes the logits by float noise only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Predictions, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, ClassIndex, Float, Int

from .classes import top_classes
from .strong import cw_steps, deepfool_steps
from .transfer import TRANSFER, transfer_report

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Goodfellow, Shlens, Szegedy 2015, Explaining and Harnessing Adversarial Examples, arXiv:1412.6572; "
    "Kurakin, Goodfellow, Bengio 2016, Adversarial Examples in the Physical World, arXiv:1607.02533; "
    "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks, arXiv:1706.06083"
)
ATTACKS = ("fgsm", "bim", "pgd", "cw", "deepfool")
STRONG = {"cw": ("c", "kappa", "lr"), "deepfool": ("overshoot", "candidates")}
"""The minimal-perturbation attacks (L2, no ball) and the parameters only they take."""
FRAME_LABEL = "original | perturbation | adversarial"
"""Every frame's label: three panels of equal width, the perturbation amplified by the run's one scale."""
NORMS = ("linf", "l2")
PIXEL = 1.0 / 255.0
"""The unit of ``epsilon`` and ``step``: one grey level of the [0, 1] picture."""
DIVISION_GUARD = 1e-10
"""Added to the gradient's L2 norm before dividing by it (torchattacks' ``eps_for_division``): a zero gradient."""
FRAME_WIDTH = 512
"""The streamed frame's three panels are shrunk to fit this width."""


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
    label: int | torch.Tensor,
    targeted: bool,
    generator: torch.Generator | None = None,
    c: float = 1.0,
    kappa: float = 0.0,
    lr: float = 0.01,
    overshoot: float = 0.02,
    candidates: int = 10,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Each state of the attack on the Nx3xHxW ``image`` in [0, 1]: ``(step, adversarial, its logits)``.

    ``label`` is one class for every image or a tensor of N, the class whose cross-entropy is climbed
    (untargeted) or descended (``targeted``). ``epsilon`` and ``step`` are in [0, 1] units. Step 0 is the start
    (the picture, or PGD's random start when a ``generator`` is given); FGSM has one more, BIM and PGD ``steps``
    more. CW (``c``, ``kappa``, ``lr``) and DeepFool (``overshoot``, ``candidates``) are :mod:`.strong`'s; they
    ignore ``norm``, ``epsilon`` and ``step``. A state whose picture or logits are not finite is refused with a
    ``BadInput`` naming the model and the step.
    """
    image = image.detach()
    labels = torch.as_tensor(label, dtype=torch.long).reshape(-1).expand(image.shape[0])
    if attack == "cw":
        states = cw_steps(model, image, labels, targeted=targeted, c=c, kappa=kappa, lr=lr, steps=steps)
    elif attack == "deepfool":
        states = deepfool_steps(model, image, labels, overshoot=overshoot, candidates=candidates, steps=steps)
    else:
        states = gradient_sign_steps(
            model, image, labels, attack, norm, epsilon, step, steps, targeted, generator
        )
    for state in states:
        refuse_non_finite(model, *state)
        yield state


def refuse_non_finite(model: Model, index: int, adversarial: torch.Tensor, logits: torch.Tensor) -> None:
    """A ``BadInput`` (422, naming the model) saying at which step the picture or the logits went non-finite."""
    if not bool(torch.isfinite(adversarial).all()):
        raise BadInput(
            "model",
            f"the attacked picture became non-finite at step {index} (the gradient of model {model.id!r} was "
            "not finite); stopped",
            status=422,
        )
    if not bool(torch.isfinite(logits).all()):
        raise BadInput(
            "model",
            f"model {model.id!r} gave non-finite logits at step {index} for a finite picture in [0, 1]; stopped",
            status=422,
        )


def gradient_sign_steps(
    model: Model,
    image: torch.Tensor,
    labels: torch.Tensor,
    attack: str,
    norm: str,
    epsilon: float,
    step: float,
    steps: int,
    targeted: bool,
    generator: torch.Generator | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """FGSM, BIM and PGD (see :func:`attack_steps`)."""
    if attack == "fgsm":
        step, steps = epsilon, 1
    adversarial = image.clone()
    if attack == "pgd" and generator is not None:
        adversarial = random_start(image, norm, epsilon, generator)
    layout = network_layout(image)
    for index in range(steps + 1):
        pixels = adversarial.detach().requires_grad_(index < steps)
        with torch.set_grad_enabled(index < steps):
            logits, layout = logits_in_layout(model, pixels, layout)
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


def network_layout(image: torch.Tensor) -> torch.memory_format:
    """The memory order the network is fed the pixels in: channels-last for a 4-D batch on the CPU.

    Decided from the batch alone, never by timing: no forward is spent probing, and a seeded run gives the same
    floats each time on a machine. A forward and backward of EfficientNet-Lite0 ran 1.13× (batch 1) and
    1.25-1.38× (batch 16) faster channels-last on 2 CPUs, eager, ONNX, TorchScript and torch.export alike.
    Channels-last weights would add about 1.06×, but the weights are the caller's module's or the loaded
    file's, which every method shares, and stay as they are. Not measured on a GPU, so a GPU batch stays
    contiguous.
    """
    if image.dim() == 4 and image.device.type == "cpu":
        return torch.channels_last
    return torch.contiguous_format


def logits_in_layout(
    model: Model, pixels: torch.Tensor, layout: torch.memory_format
) -> tuple[torch.Tensor, torch.memory_format]:
    """``pixels``' logits, the network fed them in ``layout``, and the layout to feed the next forward.

    A network that cannot take channels-last pixels (an eager module that ``.view``s a 4-D tensor raises a
    ``RuntimeError``) is fed them contiguous, from then on.
    """
    if layout != torch.contiguous_format:
        try:
            return model.forward(pixels.contiguous(memory_format=layout)).logits, layout
        except RuntimeError:
            layout = torch.contiguous_format
    return model.forward(pixels.clone(memory_format=layout)).logits, layout


def perturbation_view(delta: torch.Tensor, scale: float) -> torch.Tensor:
    """The signed ``delta`` shown as grey 0.5 plus ``scale`` × itself, clipped to [0, 1]."""
    return (0.5 + scale * delta).clamp(0, 1)


def side_by_side(*panels: torch.Tensor) -> torch.Tensor:
    """1x3xHxW panels joined left to right, each shrunk (area) to the same integer width, at most
    ``FRAME_WIDTH`` / their count, so that a viewer can cut the row back into equal panels."""
    height, width = panels[0].shape[2:]
    panel_width = min(width, FRAME_WIDTH // len(panels))
    if panel_width < width:
        size = (max(1, round(height * panel_width / width)), panel_width)
        panels = tuple(F.interpolate(panel, size=size, mode="area") for panel in panels)
    return torch.cat(panels, dim=3).detach().clone()


def norms(delta: torch.Tensor) -> dict[str, float]:
    """The L∞ and L2 norms of ``delta`` in units of 1/255."""
    return {"linf": float(delta.abs().max()) / PIXEL, "l2": float(delta.double().norm()) / PIXEL}


def check_params(params: dict[str, Any], model: Model) -> None:
    attack = params["attack"]
    if params["norm"] == "l2" and attack in ("fgsm", "bim"):
        raise BadInput("params.norm", f"{attack} takes steps along the gradient's sign: linf only")
    if attack == "deepfool" and params["target"] is not None:
        raise BadInput("params.target", "deepfool is untargeted: it moves to the nearest other class")
    for name in ("c", "lr"):
        if params[name] <= 0:
            raise BadInput(f"params.{name}", f"must be greater than 0, got {params[name]}")


def perturbation_scale(attack: str, norm: str, epsilon: float, first: torch.Tensor) -> float:
    """The amplification of the perturbation view for the whole run, chosen before its first frame.

    Under L∞ the ball's edge, ±epsilon, is black and white. The L2 attacks choose from ``first``, the
    perturbation after one step: PGD's at the ball's edge, its shape kept (its largest pixel grown by
    epsilon / its L2 norm); DeepFool's first step is most of its way (× 1.5 of room); CW's Adam steps grow
    its largest pixel by about half of lr each (× ``steps`` / 4 of room).
    """
    if norm == "linf" and attack in ("fgsm", "bim", "pgd"):
        return 0.5 / max(epsilon, PIXEL)
    largest = max(float(first.abs().max()), PIXEL)
    if attack == "pgd":
        reach = largest * epsilon / max(float(first.norm()), PIXEL)
    elif attack == "deepfool":
        reach = 1.5 * largest
    else:
        reach = 4 * largest
    return 0.5 / max(reach, PIXEL)


def one_ahead(states: Iterator[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list]:
    """The picture after the first step (the start if there is none), and the states read to find it."""
    read = [next(states)]
    read.extend(itertools.islice(states, 1))
    return read[-1][1], read


def run_attack(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    attack = params["attack"]
    norm = "l2" if attack in STRONG else params["norm"]
    epsilon, step = params["epsilon"] * PIXEL, params["step"] * PIXEL
    image = ctx.model_input()
    with torch.no_grad():
        original = ctx.model.forward(image).logits.detach()
    refuse_non_finite(ctx.model, 0, image, original)
    true_class = int(original[0].argmax())
    target = params["target"]
    targeted = target is not None
    label = target if targeted else true_class
    total = 1 if attack == "fgsm" else params["steps"]
    shown = f"{'target' if targeted else 'true class'} probability"
    flipped_at = flipped_to = reached_at = None
    generator = ctx.generator if attack == "pgd" and params["random_start"] else None
    states = attack_steps(
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
        c=params["c"],
        kappa=params["kappa"],
        lr=params["lr"],
        overshoot=params["overshoot"],
        candidates=params["candidates"],
    )
    first, read = one_ahead(states)
    scale = perturbation_scale(attack, norm, epsilon, first - image)
    top5_before = top_classes(ctx.model, original)
    for index, adversarial, logits in itertools.chain(read, states):
        delta = adversarial - image
        view = perturbation_view(delta, scale)
        yield Frame(side_by_side(image, view, adversarial), step=index, label=FRAME_LABEL)
        top5 = top_classes(ctx.model, logits)
        yield Predictions({"original": top5_before, "adversarial": top5}, step=index)
        probabilities = logits[0].double().softmax(0)
        top = int(logits[0].argmax())
        yield Metrics(
            {
                shown: float(probabilities[label]),
                "true class probability": float(probabilities[true_class]),
                **{f"{name} (/255)": value for name, value in norms(delta).items()},
                "perturbation scale (×)": scale,
            },
            step=index,
        )
        if flipped_at is None and top != true_class:
            flipped_at, flipped_to = index, top
            yield Log(
                f"step {index}: top-1 flipped from {ctx.model.label(true_class)} to {ctx.model.label(top)}"
            )
        if targeted and reached_at is None and top == target:
            reached_at = index
            yield Log(f"step {index}: the target {ctx.model.label(target)} is top-1")
        yield Progress(index, total)
    if attack == "cw" and not bool(delta.any()):
        yield Log(
            "cw: no step fooled the model, so the picture is kept as it was; try a larger c or more steps"
        )
    if index < total:
        yield Log(f"{attack} ended after {index} of {total} steps: the top class changed")
        yield Progress(total, total)
    perturbation = np.ascontiguousarray(delta[0].permute(1, 2, 0).numpy(), dtype=np.float32)
    minimal = attack in STRONG
    transfer = yield from transfer_report(ctx, image, adversarial, target)
    yield Result(
        images={"adversarial": to_image(adversarial), "perturbation": to_image(view)},
        arrays={"adversarial": to_image(adversarial), "perturbation": perturbation},
        data={
            "attack": attack,
            "norm": norm,
            "epsilon": None if minimal else params["epsilon"],
            "step": None if minimal else params["epsilon"] if attack == "fgsm" else params["step"],
            "steps": total,
            "steps_run": index,
            "target": target,
            "true_class": true_class,
            "top5_before": top5_before,
            "top5_after": top_classes(ctx.model, logits),
            "flipped_at": flipped_at,
            "flipped_to": None
            if flipped_to is None
            else {"class": flipped_to, "label": ctx.model.label(flipped_to)},
            "reached_target_at": reached_at,
            "perturbation_scale": scale,
            **{name: params[name] for name in STRONG.get(attack, ())},
            **norms(delta),
            "transfer": transfer,
        },
    )


ADVERSARIAL_ATTACK = Method(
    name="adversarial_attack",
    title="Adversarial attack (FGSM, BIM, PGD, Carlini–Wagner, DeepFool)",
    topic="How easily it is fooled",
    run=run_attack,
    params=(
        Choice(
            "attack",
            "pgd",
            ATTACKS,
            title="Attack",
            help="fgsm: one step of epsilon; bim: steps from the picture; pgd: steps from a random start (if "
            "chosen); cw: Carlini–Wagner L2, the smallest L2 change that fools, by Adam; deepfool: steps onto "
            "the nearest linearised class boundary (untargeted).",
        ),
        Choice(
            "norm",
            "linf",
            NORMS,
            title="Norm",
            help="linf: each pixel within epsilon; l2 (pgd only): the whole perturbation's L2 norm within "
            "epsilon. cw and deepfool are L2 attacks without a ball and ignore it.",
        ),
        Float(
            "epsilon",
            8.0,
            minimum=0.0,
            maximum=255.0,
            title="Epsilon (/255)",
            help="fgsm, bim, pgd: the largest perturbation, in grey levels of the [0, 1] picture (8 means "
            "8/255); for l2, its L2 norm × 255.",
        ),
        Float(
            "step",
            2.0,
            minimum=0.0,
            maximum=255.0,
            title="Step (/255)",
            help="bim, pgd: each step's size in the same units (fgsm steps by epsilon).",
        ),
        Int(
            "steps",
            10,
            minimum=1,
            maximum=1000,
            title="Steps",
            help="bim, pgd: steps; cw: Adam steps at most; deepfool: steps at most; fgsm takes one.",
        ),
        ClassIndex(
            "target",
            title="Target class",
            help="Empty: untargeted, away from the top class; else toward this class (not deepfool).",
        ),
        Bool(
            "random_start",
            True,
            title="Random start",
            help="pgd: start from a seeded random point of the epsilon ball.",
        ),
        Float(
            "c",
            1.0,
            minimum=0.0,
            title="c",
            help="cw: the weight of the margin against the squared L2 distance (> 0).",
        ),
        Float(
            "kappa",
            0.0,
            minimum=0.0,
            title="κ (confidence)",
            help="cw: the logit margin by which the class must win.",
        ),
        Float(
            "lr",
            0.01,
            minimum=0.0,
            title="Learning rate",
            help="cw: Adam's step size on tanh⁻¹ pixels (> 0).",
        ),
        Float(
            "overshoot",
            0.02,
            minimum=0.0,
            maximum=1.0,
            title="Overshoot",
            help="deepfool: each step goes this fraction past the linearised boundary.",
        ),
        Int(
            "candidates",
            10,
            minimum=2,
            maximum=100_000,
            title="Candidate classes",
            help="deepfool: the true class and the picture's most probable others it linearises over.",
        ),
        TRANSFER,
    ),
    needs=frozenset({"gradients"}),
    check=check_params,
    description="Adversarial examples by the gradient w.r.t. the pixels: FGSM (Goodfellow et al. 2015), BIM "
    "(Kurakin et al. 2016) or PGD (Madry et al. 2018) within an L∞ or L2 ball of epsilon/255; Carlini–Wagner L2 "
    "(2017) and DeepFool (Moosavi-Dezfooli et al. 2016), the smallest change that fools.",
    reference=REFERENCE,
)
