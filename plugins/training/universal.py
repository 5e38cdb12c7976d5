"""Universal approximation: one hidden layer of shifted ReLUs fitted to a curve, or built to interpolate it.

Cybenko, "Approximation by superpositions of a sigmoidal function", 1989; Leshno, Lin, Pinkus & Schocken,
"Multilayer feedforward networks with a nonpolynomial activation function can approximate any function", 1993
(ReLU is such an activation). The network is the deck's ``feed_forward`` (deck 000):
``y(x) = Σᵢ vᵢ·relu(wᵢ·x + bᵢ) + c`` with N hidden units and a linear output.

Two modes. ``fitted``: Adam on the mean squared error at 256 equally spaced points of the interval, from kinks
drawn uniformly inside it. ``constructed``: the proof by hand, the piecewise-linear interpolant of the target at
N + 1 equally spaced knots ``x₀ = a < … < x_N = b``: unit i is ``relu(x − xᵢ)`` weighted by the change of slope
there, ``vᵢ = sᵢ − sᵢ₋₁`` (``s₋₁ = 0``), and ``c = f(a)``, built in closed form. For an L-Lipschitz target the
error on the interval is at most ``L·h/2`` with ``h = (b − a)/N``: O(1/N) (on ``[xᵢ, xᵢ₊₁]`` the interpolant
is ``(1 − t)f(xᵢ) + t·f(xᵢ₊₁)`` and both differences are at most ``L·t·h`` and ``L·(1 − t)·h``).

The interval is [−1, 1]. The curves stream as :class:`~convlens.events.Points` (x, y pairs the page draws as
charts): ``target`` and ``sum`` on the interval, ``units`` (every unit's contribution ``vᵢ·relu(wᵢ·x + bᵢ)``
over the same x, one unit after another, in one message rather than N), and ``outside target`` / ``outside
sum`` on [−3, 3], where nothing constrained the net ("compact domains"); the max and mean absolute errors
on the interval stream as metrics. The constructed mode grows N from 1 (a step per N) unless ``grow`` is off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Metrics, Points, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, Float, Int, Param

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Cybenko 1989, Approximation by superpositions of a sigmoidal function; Leshno, Lin, Pinkus, Schocken 1993, "
    "Multilayer feedforward networks with a nonpolynomial activation function can approximate any function"
)
INTERVAL = (-1.0, 1.0)
OUTSIDE = (-3.0, 3.0)
"""Where the target is given, and the wider view of what the net does beyond it."""
CURVE_POINTS = 201
OUTSIDE_POINTS = 301
TRAIN_POINTS = 256
ERROR_POINTS = 4001
"""Samples of the streamed curves, of the fitted mode's training set, and of the grid the errors are taken on."""
MAX_UNITS = 256
DIVERGED_FACTOR = 1e3
"""A fitted run whose loss exceeds this many times its starting loss (or is not finite) has diverged."""
DRAWN = "drawn"
TARGETS = ("sine", "step", "abs", "wiggly", DRAWN)
MAX_DRAWN_POINTS = 2000
DRAWN_LIMIT = 10.0
"""A drawn target's points: at most this many, y within ±10."""

Net = tuple[np.ndarray, np.ndarray, np.ndarray, float]
"""``(w, b, v, c)`` of :func:`feed_forward`."""
Target = Callable[[np.ndarray], np.ndarray]
"""The curve to approximate, at float64 x."""


def preset_target(name: str, x: np.ndarray) -> np.ndarray:
    """A preset target at ``x`` (float64): ``sin(πx)``, a step at 0, ``|x|`` or a wiggly sum of three sines."""
    if name == "sine":
        return np.sin(np.pi * x)
    if name == "step":
        return np.where(x >= 0.0, 1.0, 0.0)
    if name == "abs":
        return np.abs(x)
    if name == "wiggly":
        return 0.6 * np.sin(2.0 * np.pi * x) + 0.3 * np.sin(5.0 * x + 1.0) + 0.2 * np.cos(9.0 * x)
    raise ValueError(f"unknown target {name!r}")


def parse_points(text: str) -> np.ndarray:
    """``"x1,y1; x2,y2; …"`` as a K x 2 float64 array sorted by x (a repeated x keeps its last y); ``BadInput``
    naming ``params.points`` unless it holds at least two distinct x in the interval and finite y within ±10."""
    field = "params.points"
    pairs = [part for part in re.split(r"\s*;\s*", text.strip()) if part]
    if len(pairs) > MAX_DRAWN_POINTS:
        raise BadInput(field, f"at most {MAX_DRAWN_POINTS} points, got {len(pairs)}")
    drawn: dict[float, float] = {}
    for pair in pairs:
        numbers = pair.split(",")
        try:
            x, y = (float(number) for number in numbers)
        except ValueError:
            raise BadInput(field, f"expected 'x,y' pairs separated by ';', got {pair!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise BadInput(field, f"points must be finite numbers, got {pair!r}")
        if not INTERVAL[0] <= x <= INTERVAL[1]:
            raise BadInput(field, f"x must lie in [{INTERVAL[0]:g}, {INTERVAL[1]:g}], got {x:g}")
        if abs(y) > DRAWN_LIMIT:
            raise BadInput(field, f"y must lie in [-{DRAWN_LIMIT:g}, {DRAWN_LIMIT:g}], got {y:g}")
        drawn[x] = y
    if len(drawn) < 2:
        raise BadInput(field, f"a drawn target needs at least 2 points of different x, got {len(drawn)}")
    return np.array(sorted(drawn.items()), dtype=np.float64)


def target_values(params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The chosen target at ``x``: a preset, or the linear interpolation of the drawn points (flat beyond them)."""
    if params["target"] == DRAWN:
        points = parse_points(params["points"])
        return np.interp(x, points[:, 0], points[:, 1])
    return preset_target(params["target"], x)


def feed_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, v: np.ndarray, c: float) -> np.ndarray:
    """The deck's one-hidden-layer net at ``x``: ``Σᵢ vᵢ·relu(wᵢ·x + bᵢ) + c``."""
    return unit_contributions(x, w, b, v).sum(axis=0) + c


def unit_contributions(x: np.ndarray, w: np.ndarray, b: np.ndarray, v: np.ndarray) -> np.ndarray:
    """N x len(x): each unit's ``vᵢ·relu(wᵢ·x + bᵢ)``."""
    return v[:, None] * np.maximum(w[:, None] * x[None, :] + b[:, None], 0.0)


def interpolating_net(f: Target, units: int) -> Net:
    """``(w, b, v, c)`` of the net of ``units`` shifted ReLUs equal to the linear interpolation of ``f`` at
    ``units + 1`` equally spaced knots of the interval (exactly, for every x at or past its left end)."""
    knots = np.linspace(*INTERVAL, units + 1)
    values = f(knots)
    slopes = np.diff(values) / np.diff(knots)
    v = np.diff(slopes, prepend=0.0)
    return np.ones(units), -knots[:-1], v, float(values[0])


def errors_on_interval(
    f: Target, w: np.ndarray, b: np.ndarray, v: np.ndarray, c: float
) -> tuple[float, float]:
    """Max and mean ``|f − net|`` over :data:`ERROR_POINTS` equally spaced points of the interval."""
    x = np.linspace(*INTERVAL, ERROR_POINTS)
    gap = np.abs(f(x) - feed_forward(x, w, b, v, c))
    return float(gap.max()), float(gap.mean())


def curves(f: Target, w: np.ndarray, b: np.ndarray, v: np.ndarray, c: float, step: int) -> Iterator[Points]:
    """The net's sum, its units' contributions and its sum beyond the interval as Points at ``step``."""
    x = np.linspace(*INTERVAL, CURVE_POINTS)
    contributions = unit_contributions(x, w, b, v)
    yield Points(np.column_stack([x, contributions.sum(axis=0) + c]), step=step, label="sum")
    xs = np.tile(x, len(v))
    yield Points(np.column_stack([xs, contributions.ravel()]), step=step, label="units")
    wide = np.linspace(*OUTSIDE, OUTSIDE_POINTS)
    yield Points(np.column_stack([wide, feed_forward(wide, w, b, v, c)]), step=step, label="outside sum")


def target_curves(f: Target) -> Iterator[Points]:
    """The target on the interval and on the wider view, as Points (sent once: it does not change)."""
    x = np.linspace(*INTERVAL, CURVE_POINTS)
    yield Points(np.column_stack([x, f(x)]), step=0, label="target")
    wide = np.linspace(*OUTSIDE, OUTSIDE_POINTS)
    yield Points(np.column_stack([wide, f(wide)]), step=0, label="outside target")


def lipschitz_estimate(f: Target) -> float:
    """The largest slope of ``f`` between neighbours of the error grid: its Lipschitz constant, if it has one."""
    x = np.linspace(*INTERVAL, ERROR_POINTS)
    return float(np.abs(np.diff(f(x)) / np.diff(x)).max())


def run_constructed(ctx: RunContext, f: Target) -> Generator[Event, None, tuple[Net, dict[str, float]]]:
    units = ctx.params["units"]
    sizes = range(1, units + 1) if ctx.params["grow"] else [units]
    for n in sizes:
        w, b, v, c = interpolating_net(f, n)
        largest, mean = errors_on_interval(f, w, b, v, c)
        yield from curves(f, w, b, v, c, step=n)
        yield Metrics({"max_error": largest, "mean_error": mean, "units": n}, step=n)
        yield Progress(n, units)
    return (w, b, v, c), {}


def run_fitted(ctx: RunContext, f: Target) -> Generator[Event, None, tuple[Net, dict[str, float]]]:
    units, steps, every = ctx.params["units"], ctx.params["steps"], ctx.params["every"]
    gen = ctx.generator
    x_train = torch.linspace(*INTERVAL, TRAIN_POINTS, dtype=torch.float64)[:, None]
    y_train = torch.from_numpy(f(x_train[:, 0].numpy()))
    # Kinks uniformly inside the interval, slopes and output weights of either sign: every unit starts alive.
    kinks = torch.rand(units, generator=gen, dtype=torch.float64) * (INTERVAL[1] - INTERVAL[0]) + INTERVAL[0]
    w = torch.randn(units, generator=gen, dtype=torch.float64)
    b = -w * kinks
    v = torch.randn(units, generator=gen, dtype=torch.float64) / math.sqrt(units)
    c = torch.zeros(1, dtype=torch.float64)
    weights = [tensor.requires_grad_(True) for tensor in (w, b, v, c)]
    optimiser = torch.optim.Adam(weights, lr=ctx.params["lr"])
    first_loss = None
    for step in range(steps + 1):
        output = torch.relu(x_train * w + b) @ v + c
        loss = torch.mean((output - y_train) ** 2)
        value = float(loss.detach())
        first_loss = value if first_loss is None else first_loss
        if not math.isfinite(value) or value > DIVERGED_FACTOR * max(first_loss, 1e-12):
            raise BadInput(
                "params.lr",
                f"the fit diverged at step {step}: loss {value:.3g} from {first_loss:.3g}; try a smaller lr",
            )
        if step % every == 0 or step == steps:
            numbers = [t.detach().numpy().copy() for t in weights]
            net = (numbers[0], numbers[1], numbers[2], float(numbers[3][0]))
            largest, mean = errors_on_interval(f, *net)
            yield from curves(f, *net, step=step)
            yield Metrics({"loss": value, "max_error": largest, "mean_error": mean}, step=step)
            yield Progress(step, steps)
        if step == steps:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net, {"first_loss": first_loss, "loss": value}


def run_universal_approximation(ctx: RunContext) -> Iterator[Event]:
    def f(x: np.ndarray) -> np.ndarray:
        return target_values(ctx.params, x)

    yield from target_curves(f)
    run = run_constructed if ctx.params["mode"] == "constructed" else run_fitted
    (w, b, v, c), extra = yield from run(ctx, f)
    largest, mean = errors_on_interval(f, w, b, v, c)
    lipschitz = lipschitz_estimate(f)
    x = np.linspace(*INTERVAL, CURVE_POINTS)
    wide = np.linspace(*OUTSIDE, OUTSIDE_POINTS)
    yield Result(
        data={
            "mode": ctx.params["mode"],
            "target": ctx.params["target"],
            "interval": list(INTERVAL),
            "outside": list(OUTSIDE),
            "units": len(v),
            "max_error": largest,
            "mean_error": mean,
            "lipschitz": lipschitz,
            "bound": lipschitz * (INTERVAL[1] - INTERVAL[0]) / (2 * len(v)),
            **extra,
        },
        arrays={
            "hidden_weight": w,
            "hidden_bias": b,
            "output_weight": v,
            "output_bias": np.array([c]),
            "x": x,
            "target": f(x),
            "sum": feed_forward(x, w, b, v, c),
            "outside_x": wide,
            "outside_sum": feed_forward(wide, w, b, v, c),
        },
    )


def check_params(params: dict[str, Any], model: Model) -> None:
    """A drawn target's points parse (at least two); any points given are well formed."""
    if params["target"] == DRAWN or params["points"].strip():
        parse_points(params["points"])


PARAMS: tuple[Param, ...] = (
    Choice(
        "mode",
        "constructed",
        ("constructed", "fitted"),
        title="Mode",
        help="constructed: the interpolation that proves the theorem, built exactly; fitted: Adam on the MSE.",
    ),
    Choice(
        "target",
        "sine",
        TARGETS,
        title="Target",
        help="sin(πx), a step, |x|, a wiggly sum, or the points drawn (see Points) on [-1, 1].",
    ),
    Param(
        "points",
        "string",
        "",
        title="Drawn points",
        help="'x1,y1; x2,y2; …' with x in [-1, 1]: the target is the line through them (target: drawn).",
    ),
    Int("units", 16, minimum=1, maximum=MAX_UNITS, title="Hidden units (N)", help="Shifted ReLUs, 1 to 256."),
    Bool(
        "grow", True, title="Grow N", help="constructed: stream N = 1, 2, … up to the units, one step each."
    ),
    Int("steps", 2000, minimum=1, maximum=20000, title="Steps", help="fitted: Adam steps."),
    Float("lr", 0.01, minimum=1e-5, maximum=10.0, title="Step size", help="fitted: Adam's learning rate."),
    Int(
        "every",
        20,
        minimum=1,
        maximum=1000,
        title="Stream every",
        help="fitted: curves every this many steps.",
    ),
)

UNIVERSAL_APPROXIMATION = Method(
    name="universal_approximation",
    title="Universal approximation",
    topic="Networks trained live",
    run=run_universal_approximation,
    params=PARAMS,
    check=check_params,
    description="A hidden layer of N shifted ReLUs and a linear output approximate a curve on [-1, 1]: fitted by "
    "gradient descent, or built as the interpolation that proves the theorem (max error ≤ L·h/2, O(1/N)); "
    "and what it does outside [-1, 1]. The model and picture are not used.",
    reference=REFERENCE,
)
