"""The stronger references: Carlini–Wagner L2 and DeepFool, as states of the attack on a batch of pictures.

Carlini–Wagner: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
(arXiv:1608.04644), section V.A (the L2 attack): the picture is written ``½(tanh w + 1)`` so that it stays in
[0, 1], and Adam minimises ``‖½(tanh w + 1) − x‖² + c·f`` over ``w``, with ``f`` the margin of section IV's
objective 6: ``max(Z_y − max_{i≠y} Z_i, −κ)`` away from the true class ``y`` (untargeted) or
``max(max_{i≠t} Z_i − Z_t, −κ)`` toward the target ``t``; the smallest L2 that succeeds is kept.
DeepFool: Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016 (arXiv:1511.04599), Algorithm 2: at each step the classifier is linearised around the
picture and the picture moved onto the nearest linearised boundary between the true class and another,
``|f_l − f_y| (w_l − w_y) / ‖w_l − w_y‖²``, until the top class changes.

Differences from the papers, mostly as torchattacks (Kim 2020, arXiv:2010.01950) does it, which the tests compare
against: CW runs one ``c`` (no binary search over it) and all its steps: neither the paper's code (which stops
when the loss has not fallen over a tenth of its 10,000 steps) nor torchattacks (the same check every tenth of
the steps asked for, which at a few hundred steps stops while Adam's first steps still raise the distance: on
chelsea with c = 1 and 100 steps, at step 10 with an L2 of 320/255 where all 100 reach 168/255) stops early; a
state succeeds when its class wins by more than 0 and by at least κ (the paper's code; torchattacks: top-1
alone); pixels exactly at 0 or 1 start at ``w = ±atanh(1 − 1e-6)``, as the paper's code does, where torchattacks'
``w`` is infinite and those pixels can never move. DeepFool linearises over the picture's ``candidates`` most
probable classes (the paper's code: 10; torchattacks: all), scales each step by ``1 + overshoot`` and clips the
picture to [0, 1] at each step (the paper's code scales the sum of the steps and does not clip).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from convlens.models.base import Model

State = tuple[int, torch.Tensor, torch.Tensor]
"""``(step, adversarial Nx3xHxW, its logits NxK)``."""
EDGE = 1.0 - 1e-6
"""``2x − 1`` is kept within ±EDGE before ``atanh``, so a pixel at 0 or 1 has a finite ``w`` (the paper's code)."""


def to_tanh_space(images: torch.Tensor) -> torch.Tensor:
    """``w`` with ``½(tanh w + 1) = images`` (pixels in [0, 1]; 0 and 1 within 5e-7).

    ``atanh`` written out as torchattacks writes it, so that the tests compare the two bit for bit.
    """
    centred = (images * 2 - 1).clamp(-EDGE, EDGE)
    return 0.5 * torch.log((1 + centred) / (1 - centred))


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


def lead(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """By how much each row's target leads every other class (targeted), or another class leads ``labels``."""
    own = logits.gather(1, labels[:, None])[:, 0]
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
    other = logits.masked_fill(mask, float("-inf")).amax(dim=1)
    return own - other if targeted else other - own


def cw_steps(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    targeted: bool,
    c: float,
    kappa: float,
    lr: float,
    steps: int,
) -> Iterator[State]:
    """Carlini–Wagner L2: the picture at each Adam step (0 to ``steps − 1``), then the best as step ``steps``.

    The best of each image is its successful state of smallest L2 distance, or the image itself if none
    succeeded. ``labels`` are the classes fled (untargeted) or sought (``targeted``).
    """
    w = to_tanh_space(images).requires_grad_(True)
    optimiser = torch.optim.Adam([w], lr=lr)
    best = images.clone()
    best_distance = torch.full((images.shape[0],), float("inf"), dtype=images.dtype)
    for index in range(steps):
        adversarial = from_tanh_space(w)
        distance = (adversarial - images).pow(2).flatten(1).sum(dim=1)
        logits = model.forward(adversarial).logits
        margin = lead(logits, labels, targeted)
        cost = distance.sum() + c * torch.clamp(-margin, min=-kappa).sum()
        optimiser.zero_grad(set_to_none=True)
        cost.backward()
        optimiser.step()
        adversarial, logits = adversarial.detach(), logits.detach()
        yield index, adversarial, logits
        succeeded = (margin.detach() > 0) & (margin.detach() >= kappa)
        better = succeeded & (distance.detach() < best_distance)
        best_distance = torch.where(better, distance.detach(), best_distance)
        best = torch.where(better.view(-1, 1, 1, 1), adversarial, best)
    with torch.no_grad():
        yield steps, best, model.forward(best).logits.detach()


def deepfool_steps(
    model: Model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    overshoot: float,
    candidates: int,
    steps: int,
) -> Iterator[State]:
    """DeepFool: the picture before each step (0 to at most ``steps``), ending once no image has ``labels`` on top.

    Each image is linearised over ``labels`` and its original's ``candidates − 1`` most probable other classes;
    an image whose top class is no longer its label stays where it is.
    """
    adversarial = images.clone()
    classes = None
    for index in range(steps + 1):
        pixels = adversarial.clone().requires_grad_(True)
        logits = model.forward(pixels).logits
        active = logits.detach().argmax(dim=1) == labels
        yield index, adversarial, logits.detach()
        if index == steps or not bool(active.any()):
            return
        if classes is None:
            classes = candidate_classes(logits.detach(), labels, candidates)
        scores = logits.gather(1, classes)
        gradients = torch.stack(
            [
                torch.autograd.grad(scores[:, k].sum(), pixels, retain_graph=k + 1 < classes.shape[1])[0]
                for k in range(classes.shape[1])
            ],
            dim=1,
        )
        scores = scores.detach()
        gaps = scores[:, 1:] - scores[:, :1]
        directions = gradients[:, 1:] - gradients[:, :1]
        lengths = directions.flatten(2).norm(dim=2)
        nearest = (gaps.abs() / lengths).argmin(dim=1)
        rows = torch.arange(images.shape[0])
        gap, direction, length = gaps[rows, nearest], directions[rows, nearest], lengths[rows, nearest]
        delta = (gap.abs() / length**2).view(-1, 1, 1, 1) * direction
        moved = torch.clamp(adversarial + (1 + overshoot) * delta, min=0, max=1)
        adversarial = torch.where(active.view(-1, 1, 1, 1), moved, adversarial).detach()


def candidate_classes(logits: torch.Tensor, labels: torch.Tensor, candidates: int) -> torch.Tensor:
    """N×K class indices: each row's label first, then its ``K − 1`` highest-scoring other classes."""
    count = min(candidates, logits.shape[1])
    others = logits.scatter(1, labels[:, None], float("-inf")).topk(count - 1, dim=1).indices
    return torch.cat([labels[:, None], others], dim=1)
