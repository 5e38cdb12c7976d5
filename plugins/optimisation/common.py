"""What the image-optimising methods share: their step parameters, streaming, one Adam step, and refusing
to go on once the optimisation stops giving finite numbers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Metrics
from convlens.params import Float, Int, Param

if TYPE_CHECKING:
    from convlens.methods import RunContext
    from convlens.models.base import Model

ADAM_LR_HELP = "Adam's step size, in [0, 1] pixel units."
NOISE_STD = 0.1
"""Standard deviation, in [0, 1] pixel units, of a ``noise`` start around the mean colour."""


def mean_start(ctx: RunContext, size: tuple[int, int], noise: bool) -> torch.Tensor:
    """1x3xHxW pixels of ``size`` in the dataset's mean colour (the network's zero input), plus seeded Gaussian
    noise of ``NOISE_STD`` when ``noise``, clipped to [0, 1]."""
    mean = torch.tensor(ctx.model.card.mean, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, *size)
    if not noise:
        return mean.clone()
    return (mean + torch.randn(1, 3, *size, generator=ctx.generator) * NOISE_STD).clamp(0.0, 1.0)


def steps_param(default: int, help: str = "Gradient-ascent steps.", maximum: int = 2000) -> Param:  # noqa: A002
    """The ``steps`` parameter: how many optimisation steps, at least 1."""
    return Int("steps", default, minimum=1, maximum=maximum, help=help)


def lr_param(
    default: float | None,
    help: str = ADAM_LR_HELP,  # noqa: A002
    *,
    minimum: float = 1e-4,
    maximum: float = 0.5,
) -> Param:
    """The ``lr`` parameter, titled "Step size"; nullable when its default is ``None``."""
    nullable = {"nullable": True} if default is None else {}
    return Float("lr", default, **nullable, minimum=minimum, maximum=maximum, title="Step size", help=help)


def every_param(default: int = 1, help: str = "Show a frame and the metrics every this many steps.") -> Param:  # noqa: A002
    """The ``every`` parameter: how often a run streams what it has made."""
    return Int("every", default, minimum=1, maximum=100, help=help)


EVERY = every_param()


def is_shown(step: int, every: int, steps: int) -> bool:
    """Whether ``step`` streams a frame and metrics: every ``every``-th step and the last."""
    return step % every == 0 or step == steps


def snapshot(
    image: torch.Tensor, values: dict[str, float], step: int, label: str, kept: bool = False
) -> Iterator[Event]:
    """A frame of ``image`` (made into pixels only if it is shown) and the metrics ``values`` at ``step``.

    The frame gets a copy, as the method's optimiser changes ``image`` in place; ``kept``: ``image`` itself, which
    the method promises never to change again (DeepDream makes a new tensor each step).
    """
    yield Frame(image.detach() if kept else image.detach().clone(), step=step, label=label)
    yield Metrics(values, step=step)


def adam_step(optimiser: torch.optim.Optimizer, loss: torch.Tensor, pixels: torch.Tensor) -> bool:
    """Descend ``loss`` one step and clip ``pixels`` to [0, 1]; ``False``, with no step, if its gradient is not finite."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if not bool(torch.isfinite(pixels.grad).all()):
        return False
    optimiser.step()
    with torch.no_grad():
        pixels.clamp_(0.0, 1.0)
    return True


def non_finite(parts: dict[str, float]) -> str:
    """The parts that are not finite numbers, as ``"name value, ..."``; empty when all are."""
    return ", ".join(f"{name} {value}" for name, value in parts.items() if not math.isfinite(value))


def diverged(method: str, step: int, what: str, advice: str, field: str = "params.lr") -> BadInput:
    """The error of a run that stopped at ``step`` because ``what``, naming what to change."""
    return BadInput(
        field,
        f"{method} diverged at step {step}: {what}; stopped instead of showing a broken image "
        f"(try a smaller lr or {advice})",
    )


def refuse(method: str, model: Model, step: int, *, start: str, what: str, advice: str) -> NoReturn:
    """Refuse to go on: on the starting image the model is broken (it ``gives {start}``), later the run diverged."""
    if step == 0:
        raise BadInput(
            "model",
            f"{method}: model {model.id!r} gives {start}; its weights or its input are broken",
            status=422,
        )
    raise diverged(method, step, what, advice)
