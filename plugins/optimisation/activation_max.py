"""Regularised activation maximisation: the image a unit responds to most, kept natural-looking by four regularisers.

Yosinski, Clune, Nguyen, Fuchs & Lipson, "Understanding Neural Networks Through Deep Visualization", ICML Deep
Learning workshop 2015 (arXiv:1506.06579), section 3. Gradient ascent on the image to raise one unit: a class
logit, or a channel of a hidden layer (its mean over positions, or the neuron at its centre position as the
paper does for conv units). After each step ``x ← r(x + η·∇)`` applies, in this order and in the network's
mean-subtracted input space:

- L2 decay, ``x ← (1 - θ_decay)·x``;
- a Gaussian blur of width ``θ_b_width`` px every ``θ_b_every`` steps;
- clipping pixels with small norm: a pixel whose norm across channels is at or below the ``θ_n_pct``
  percentile is set to zero (the mean colour);
- clipping pixels with small contribution: a pixel whose ``|Σ_channels x·∇|`` (its share of the unit's linear
  approximation) is at or below the ``θ_c_pct`` percentile is set to zero.

``preset`` offers the four hyper-parameter sets of the paper's Table 1 (decay, blur width, blur every, norm
pct, contribution pct; "–": off, 0 here): 1) 0, 0.5, 4, 50, –; 2) 0.3, 0, 0, 20, –; 3) 0.0001, 1.0, 4, –, –;
4) 0, 0.5, 4, –, 90; as the authors' Deep Visualization Toolbox documents them
(``yosinski/deep-visualization-toolbox``, ``doc/running-optimize-image.md``: four ``optimize_image.py``
command lines in the table's order, ``--decay``, ``--blur-radius``, ``--blur-every``,
``--small-norm-percentile``, ``--px-abs-benefit-percentile``); ``tests/test_activation_max.py`` holds that
table and checks each preset against it. Those lines also set
500, 750, 1000 and 1000 iterations and a learning-rate policy (a constant rate for sets 2 and 3; for 1 and 4
one scaled so the unit would rise by 2 per step under a linear model); here ``steps`` and ``lr`` stay the
run's own (see below).

Set 4 keeps only the 10% of pixels that contribute most, so it suits one neuron, as the paper uses it (a conv
unit at its centre position, ``unit="centre"``): on the default model, ``_blocks.9`` channel 4's centre
neuron goes from 3.65 to 24.9 in 100 steps from the mean image. A channel's mean over all positions needs
the whole picture, and set 4 lowers it (5.74 to 1.58); the run says so in its log.

Differences from the paper:

- pixels live in [0, 1] (the model normalises inside) and are clipped there after each step; zero in the
  mean-subtracted space is the model card's mean colour, and the regularisers act on ``x - mean`` (a Gaussian
  blur and the decay commute with the per-channel ``/ std``; the norms are taken after it);
- each step's gradient is divided by its mean absolute value (as DeepDream does), so ``lr`` is a pixel change
  per step in [0, 1] units for any model. The paper's learning rates belong to Caffe's 0-255 inputs and plain
  gradient steps, so each preset carries its own ``lr`` chosen for this update on the default model;
- an optional jitter (a seeded random roll of the image before each step), which the paper does not use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from convlens.errors import BadInput
from convlens.events import Event, Log, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Choice, ClassIndex, Float, Int, Layer

from .class_model import INITS, start_image
from .common import EVERY, is_shown, lr_param, refuse, snapshot, steps_param

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Yosinski, Clune, Nguyen, Fuchs, Lipson 2015, Understanding Neural Networks Through Deep Visualization "
    "(arXiv:1506.06579), section 3 and Table 1"
)
UNITS = ("mean", "centre")
REGULARISERS = ("decay", "blur_every", "blur_width", "norm_pct", "contribution_pct")
PRESETS: dict[str, dict[str, float]] = {
    "1": {
        "decay": 0.0,
        "blur_every": 4,
        "blur_width": 0.5,
        "norm_pct": 50.0,
        "contribution_pct": 0.0,
        "lr": 0.05,
    },
    "2": {
        "decay": 0.3,
        "blur_every": 0,
        "blur_width": 0.0,
        "norm_pct": 20.0,
        "contribution_pct": 0.0,
        "lr": 0.1,
    },
    "3": {
        "decay": 0.0001,
        "blur_every": 4,
        "blur_width": 1.0,
        "norm_pct": 0.0,
        "contribution_pct": 0.0,
        "lr": 0.05,
    },
    "4": {
        "decay": 0.0,
        "blur_every": 4,
        "blur_width": 0.5,
        "norm_pct": 0.0,
        "contribution_pct": 90.0,
        "lr": 0.05,
    },
}
"""Table 1's regulariser settings, and an ``lr`` for this method's update (not from the paper)."""
CUSTOM_LR = 0.05


def settings(params: dict[str, Any]) -> dict[str, float]:
    """The regularisers and ``lr`` in force: the preset's, or the parameters' own when ``preset`` is custom.

    An ``lr`` given explicitly wins over the preset's.
    """
    if params["preset"] in PRESETS:
        chosen = dict(PRESETS[params["preset"]])
    else:
        chosen = {name: params[name] for name in REGULARISERS} | {"lr": CUSTOM_LR}
    if params["lr"] is not None:
        chosen["lr"] = params["lr"]
    return chosen


def unit_value(model: Model, image: torch.Tensor, layer: str | None, index: int, unit: str) -> torch.Tensor:
    """The unit's value for ``image``, differentiable: a logit, a channel's mean, or its centre neuron."""
    if layer is None:
        return model.forward(image).logits[0, index].float()
    activations = model.forward(image, [layer], logits=False).activations
    if layer not in activations:
        raise BadInput("params.layer", f"layer {layer!r} of model {model.id!r} gives no tensor to maximise")
    channel = activations[layer][0, index].float()
    if channel.ndim == 0 or unit == "mean":
        return channel.mean()
    return channel[tuple(size // 2 for size in channel.shape)]


def gaussian_blur(image: torch.Tensor, width: float) -> torch.Tensor:
    """``image`` (1x3xHxW) blurred by a Gaussian of standard deviation ``width`` px, edges reflected."""
    radius = max(1, math.ceil(3 * width))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets / width) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def below_percentile(score: torch.Tensor, pct: float) -> torch.Tensor:
    """HxW mask of the pixels whose ``score`` is at or below its ``pct`` percentile (none for ``pct`` 0)."""
    if pct <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    return score <= torch.quantile(score.flatten(), pct / 100.0)


def regularise(
    image: torch.Tensor,
    gradient: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    step: int,
    reg: dict[str, float],
) -> torch.Tensor:
    """The paper's ``r_θ`` applied to pixels ``image`` after ascent step ``step`` (1-based), then clipped to [0, 1].

    ``gradient`` is the step's gradient of the unit w.r.t. the pixels, for the contribution criterion.
    """
    centred = image - mean
    if reg["decay"] > 0:
        centred = (1.0 - reg["decay"]) * centred
    if reg["blur_every"] > 0 and reg["blur_width"] > 0 and step % int(reg["blur_every"]) == 0:
        centred = gaussian_blur(centred, reg["blur_width"])
    if reg["norm_pct"] > 0:
        norm = (centred / std).pow(2).sum(dim=1)[0].sqrt()
        centred = centred.masked_fill(below_percentile(norm, reg["norm_pct"]), 0.0)
    if reg["contribution_pct"] > 0:
        # x·∇ in the normalised space is the same number in pixels: the std cancels.
        contribution = (centred * gradient).sum(dim=1)[0].abs()
        centred = centred.masked_fill(below_percentile(contribution, reg["contribution_pct"]), 0.0)
    return (mean + centred).clamp(0.0, 1.0)


def check_finite(model: Model, what: str, step: int, value: float) -> None:
    """Refuse to go on once the unit (or its gradient) is not a finite number, naming why and what to change."""
    if not math.isfinite(value):
        refuse(
            "activation_max",
            model,
            step,
            start=f"a non-finite value ({value}) for {what} on the starting image",
            what=f"{what} is {value}",
            advice="another preset",
        )


def choose_unit(ctx: RunContext) -> tuple[str | None, int, str]:
    """The layer (``None``: the logits), the channel or class index, and a description of the unit."""
    model, params = ctx.model, ctx.params
    layer = params["layer"]
    if not layer:
        target = params["target"]
        if target is None:
            target = model.predict(ctx.model_input(), k=1)[0]["index"]
        return None, target, f"logit of class {target} ({model.label(target)})"
    channel = params["channel"]  # within the layer's channels: checked with the request (channel_of)
    shape = model.layer(layer).shape
    if len(shape) == 1:
        return layer, channel, f"{layer!r} unit {channel}"
    where = "mean" if params["unit"] == "mean" else f"centre neuron {tuple(s // 2 for s in shape[1:])}"
    return layer, channel, f"{layer!r} channel {channel} ({where})"


def run_activation_max(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    layer, index, description = choose_unit(ctx)
    reg = settings(params)
    steps, every, jitter, unit = params["steps"], params["every"], params["jitter"], params["unit"]
    yield Log(
        f"activation maximisation of {description}, preset {params['preset']}: "
        + ", ".join(f"{name} {value}" for name, value in reg.items())
    )

    if reg["contribution_pct"] >= 50 and layer is not None and unit == "mean":
        yield Log(
            f"contribution clipping keeps only {100 - reg['contribution_pct']:g}% of the pixels each step, which "
            "suits one neuron (unit: centre, as the paper uses it); a channel's mean may fall instead",
            level="warning",
        )
    mean = torch.tensor(model.card.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(model.card.std, dtype=torch.float32).view(1, 3, 1, 1)
    image = start_image(ctx, params["init"])
    values: list[float] = []
    for step in range(steps + 1):
        shift = (0, 0)
        if jitter and step < steps:
            shift = tuple(int(s) for s in torch.randint(-jitter, jitter + 1, (2,), generator=ctx.generator))
        # Unshifted, the image itself (a new leaf on its storage): a roll by (0, 0) copies it, and its gradient.
        rolled = torch.roll(image, shifts=shift, dims=(2, 3)) if shift != (0, 0) else image.detach()
        rolled.requires_grad_(True)
        objective = unit_value(model, rolled, layer, index, unit)
        value = float(objective.detach())
        check_finite(model, description, step, value)
        values.append(value)
        if is_shown(step, every, steps):
            shown = value
            if shift != (0, 0):
                with torch.no_grad():
                    shown = float(unit_value(model, image, layer, index, unit))
            yield from snapshot(image, {"objective": value, "value": shown}, step, "activation max")
        if step == steps:
            break
        (gradient,) = torch.autograd.grad(objective, rolled)
        if shift != (0, 0):
            gradient = torch.roll(gradient, shifts=(-shift[0], -shift[1]), dims=(2, 3))
        scale = float(gradient.abs().mean())
        check_finite(model, f"the gradient of {description}", step, scale)
        gradient = gradient / (scale + 1e-12)
        with torch.no_grad():
            image = regularise(image + reg["lr"] * gradient, gradient, mean, std, step + 1, reg)
        yield Progress(step + 1, steps)

    final = to_image(image)
    yield Result(
        images={"activation_max": final},
        arrays={"image": final},
        data={
            "unit": description,
            "layer": layer,
            "index": index,
            "unit_kind": "logit" if layer is None else unit,
            "preset": params["preset"],
            **reg,
            "steps": steps,
            "init": params["init"],
            "value_start": values[0],
            "value_end": values[-1],
        },
    )


ACTIVATION_MAX = Method(
    name="activation_max",
    title="Activation maximisation (regularised)",
    topic="What a unit wants to see",
    run=run_activation_max,
    params=(
        ClassIndex(
            "target",
            help="The class whose logit is maximised when no layer is chosen; empty: the top prediction.",
        ),
        Layer("layer", help="The layer of the unit; empty: the class logit of target."),
        Int(
            "channel",
            0,
            minimum=0,
            channel_of="layer",
            help="The channel (or, on a flat layer, the unit) of the layer.",
        ),
        Choice(
            "unit",
            "mean",
            UNITS,
            help="mean: the channel's mean over positions; centre: its neuron at the centre position (the paper's "
            "choice for conv units).",
        ),
        Choice(
            "preset",
            "1",
            (*PRESETS, "custom"),
            help="One of the paper's four hyper-parameter sets (Table 1), or custom: the five settings below.",
        ),
        steps_param(100),
        lr_param(None, "Mean pixel change per step, in [0, 1] units; empty: the preset's.", maximum=1.0),
        Float("decay", 0.0, minimum=0.0, maximum=1.0, help="θ_decay (custom): L2 decay per step."),
        Int(
            "blur_every",
            0,
            minimum=0,
            maximum=100,
            help="θ_b_every (custom): blur every this many steps; 0: never.",
        ),
        Float(
            "blur_width",
            0.0,
            minimum=0.0,
            maximum=10.0,
            help="θ_b_width (custom): Gaussian blur width, in px.",
        ),
        Float(
            "norm_pct",
            0.0,
            minimum=0.0,
            maximum=100.0,
            title="Norm percentile",
            help="θ_n_pct (custom): zero the pixels whose norm is at or below this percentile.",
        ),
        Float(
            "contribution_pct",
            0.0,
            minimum=0.0,
            maximum=100.0,
            title="Contribution percentile",
            help="θ_c_pct (custom): zero the pixels whose contribution |x·∇| is at or below this percentile.",
        ),
        Choice(
            "init",
            "mean",
            INITS,
            title="Start from",
            help="mean: the dataset's mean colour; noise: seeded noise around it; image: the chosen picture.",
        ),
        Int(
            "jitter",
            0,
            minimum=0,
            maximum=32,
            help="Largest random shift of the image before each step, in px.",
        ),
        EVERY,
    ),
    needs=frozenset({"gradients", "layers"}),
    description="Gradient ascent on the image to raise one unit (a class logit or a channel of a hidden layer), with "
    "L2 decay, blurring and clipping of weak pixels after each step, so the picture stays interpretable.",
    reference=REFERENCE,
)
