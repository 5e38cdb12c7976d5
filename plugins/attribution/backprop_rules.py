"""What in the image drives one unit: its gradient, the deconvnet and guided backpropagation.

A unit is a class score (the logit) or a hidden unit: one channel of a layer summed over its positions, the
channel's strongest position, or a neuron at a given position. Its gradient is set to 1, every other unit's
to 0, and the signal is passed back to the image under one of three rules through the rectifiers
(:mod:`convlens.models.rectifiers`): the plain gradient (Simonyan et al. 2014), the deconvnet rule (Zeiler &
Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, arXiv:1311.2901) and guided
backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015, arXiv:1412.6806, section 3.4).

Differences from the papers: Zeiler & Fergus project back from a unit's strongest activation with the other
activations of the layer zeroed, which is ``unit="strongest"`` here; their deconvnet also reverses max-pooling
through the recorded switches, which is what autograd does through max-pooling anyway. The reconstruction is
shown with grey at 0, scaled by the 99.5th percentile of its absolute value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Progress, Result
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.models.rectifiers import counting_rectifiers
from convlens.params import Choice, Int, Layer

from .gradients import attribution_views
from .saliency import OVERLAY, TARGET

if TYPE_CHECKING:
    from convlens.models.base import Model

TOPIC = "Which pixels matter"
UNITS = ("channel", "strongest", "neuron")


@dataclass
class Unit:
    """What is explained: a class (``layer`` is ``None``) or a channel of a layer, at one position or all."""

    layer: str | None
    index: int
    position: tuple[int, int] | None = None

    def describe(self, model: Model) -> str:
        if self.layer is None:
            return f"class {self.index} ({model.label(self.index)})"
        where = (
            "summed over positions"
            if self.position is None
            else f"at row {self.position[0]}, col {self.position[1]}"
        )
        return f"{self.layer} channel {self.index} {where}"


def unit_gradient(
    model: Model, image: torch.Tensor, unit: Unit, relu_rule: str
) -> tuple[torch.Tensor, float, int]:
    """The unit's signal passed back to the 1x3xHxW ``image`` under ``relu_rule``, its value, and the number
    of rectifiers the rule went through."""
    pixels = image.detach().clone().requires_grad_(True)
    with counting_rectifiers() as rectifiers:
        if unit.layer is None:
            value = model.forward(pixels, relu_rule=relu_rule).logits[0, unit.index]
        else:
            activation = model.forward(pixels, [unit.layer], logits=False, relu_rule=relu_rule).activations
            channel = activation[unit.layer][0, unit.index]
            value = channel.sum() if unit.position is None else channel[unit.position]
        count = rectifiers()
    (gradient,) = torch.autograd.grad(value, pixels)
    return gradient, float(value.detach()), count


def choose_unit(model: Model, image: torch.Tensor, params: dict) -> Unit:
    """The unit the parameters name, checked against the layer's shape; ``channel=-1`` and ``unit="strongest"``
    are resolved on the image's activations."""
    layer = params["layer"]
    if layer is None:
        target = params["target"]
        if target is None:
            with torch.no_grad():
                target = int(model.forward(image).logits[0].argmax())
        return Unit(None, target)
    shape = model.layer(layer).shape
    if len(shape) not in (1, 3):
        raise BadInput("params.layer", f"{layer!r} has output shape {list(shape)}; a unit needs C or CxHxW")
    channel = params["channel"]  # within the layer's channels: checked with the request (channel_of)
    spatial = len(shape) == 3
    if params["unit"] == "neuron" and spatial:
        for name, value, size in (("row", params["row"], shape[1]), ("col", params["col"], shape[2])):
            if value >= size:
                raise BadInput(
                    f"params.{name}",
                    f"{layer!r} is {shape[1]}x{shape[2]}; {name} must be < {size}, got {value}",
                )
    if channel >= 0 and not (params["unit"] == "strongest" and spatial):
        position = (params["row"], params["col"]) if params["unit"] == "neuron" and spatial else None
        return Unit(layer, channel, position)
    with torch.no_grad():
        activation = model.forward(image, [layer], logits=False).activations[layer][0]
    peaks = activation.flatten(1).amax(dim=1) if spatial else activation
    if channel < 0:
        channel = int(peaks.argmax())
    position = None
    if spatial and params["unit"] == "strongest":
        row, col = divmod(int(activation[channel].argmax()), shape[2])
        position = (row, col)
    elif spatial and params["unit"] == "neuron":
        position = (params["row"], params["col"])
    return Unit(layer, channel, position)


def reconstruction(gradient: np.ndarray) -> np.ndarray:
    """A signed 3xHxW map as an HxWx3 picture: grey at 0, scaled by the 99.5th percentile of its magnitude."""
    scale = float(np.percentile(np.abs(gradient), 99.5))
    scaled = np.clip(gradient / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(gradient)
    return (0.5 + 0.5 * scaled).transpose(1, 2, 0).astype(np.float32)


def run_rule(ctx: RunContext, relu_rule: str, name: str) -> Iterator[Event]:
    image = ctx.model_input()
    unit = choose_unit(ctx.model, image, ctx.params)
    gradient, value, rectifiers = unit_gradient(ctx.model, image, unit, relu_rule)
    if relu_rule != "gradient" and rectifiers == 0:
        yield Log(
            "the model has no ReLU, ReLU6 or clip at 0 that the rule applies to: this is the plain gradient",
            level="warning",
        )
    attributions = gradient[0].float().numpy()
    images, scales = attribution_views(image, attributions, ctx.params["overlay"], name)
    images["reconstruction"] = reconstruction(attributions)
    yield Frame(images["reconstruction"], label="reconstruction")
    yield Progress(1, 1)
    target = unit.index if unit.layer is None else None
    yield Result(
        images=images,
        arrays={"attributions": attributions, "attribution": np.abs(attributions).max(axis=0)},
        data={
            "relu_rule": relu_rule,
            "unit": unit.describe(ctx.model),
            "layer": unit.layer,
            "channel": None if unit.layer is None else unit.index,
            "position": None if unit.position is None else list(unit.position),
            "target": target,
            "label": None if target is None else ctx.model.label(target),
            "value": value,
            "rectifiers": rectifiers,
            **scales,
        },
    )


PARAMS = (
    TARGET,
    Layer("layer", title="Layer", help="Explain a unit of this layer; empty: the class score."),
    Int(
        "channel",
        -1,
        minimum=-1,
        channel_of="layer",
        title="Channel",
        help="-1: the channel with the strongest activation.",
    ),
    Choice(
        "unit",
        "channel",
        UNITS,
        title="Unit",
        help="channel: the whole feature map summed; strongest: its largest activation (Zeiler & Fergus); "
        "neuron: the position given by row and col.",
    ),
    Int("row", 0, minimum=0, title="Row", help="The neuron's row in the layer's map (unit = neuron)."),
    Int("col", 0, minimum=0, title="Column", help="The neuron's column in the layer's map (unit = neuron)."),
    OVERLAY,
)


def _method(relu_rule: str, name: str, title: str, description: str, reference: str) -> Method:
    def run(ctx: RunContext) -> Iterator[Event]:
        return run_rule(ctx, relu_rule, name)

    needs = {"gradients"} | ({"relu_rules"} if relu_rule != "gradient" else set())
    return Method(
        name=name,
        title=title,
        topic=TOPIC,
        run=run,
        params=PARAMS,
        needs=frozenset(needs),
        tags=frozenset({ATTRIBUTION_MAP}),
        description=description,
        reference=reference,
    )


UNIT_GRADIENT = _method(
    "gradient",
    "unit_gradient",
    "Gradient of a unit",
    "The plain gradient of a class score or of a hidden unit w.r.t. the image, as an RGB reconstruction.",
    "Simonyan, Vedaldi, Zisserman 2014, Deep Inside Convolutional Networks, arXiv:1312.6034",
)
DECONVNET = _method(
    "deconvnet",
    "deconvnet",
    "Deconvnet",
    "A unit projected back to the image, each ReLU passing only the positive part of the signal whatever its "
    "forward input was.",
    "Zeiler, Fergus 2014, Visualizing and Understanding Convolutional Networks, ECCV, arXiv:1311.2901",
)
GUIDED_BACKPROP = _method(
    "guided",
    "guided_backprop",
    "Guided backpropagation",
    "A unit projected back to the image, each ReLU passing the signal only where both it and the forward "
    "input were positive: sharp, edge-like reconstructions.",
    "Springenberg, Dosovitskiy, Brox, Riedmiller 2015, Striving for Simplicity: The All Convolutional Net, "
    "arXiv:1412.6806",
)
BACKPROP_RULE_METHODS = (UNIT_GRADIENT, DECONVNET, GUIDED_BACKPROP)
