"""DeepDream: change the image so a layer's activations grow, and watch patterns it half-sees come out.

Mordvintsev, Olah & Tyka, "Inceptionism: Going Deeper into Neural Networks", Google Research blog, 2015,
and their ``deepdream`` notebook. Gradient ascent on the image to raise the mean square of a layer's
activations (or one channel's), each step's gradient divided by its mean absolute value; the image is
rolled by a random offset before each step (jitter) and processed in octaves, from the smallest scale
up, carrying the detail added at one scale into the next. Whatever the layer faintly detects is
amplified, so it is detected more strongly at the next step: the feedback loop that turns clouds into
dogs, shown frame by frame. With a guide image, as in the notebook's guided dream, the objective is instead
the mean over the dream's positions of the largest dot product of its feature vector at the layer with any
of the guide's: each place grows toward the guide feature it already resembles most.

Differences from the notebook: pixels live in [0, 1] (the model normalises inside) and are clipped there
after each step, so ``lr`` is a fraction of the full range, not the notebook's 1.5 out of 255. The
starting image is scaled so its long side is at most twice the model's input size, to keep it cheap on a
CPU. A model that takes only its own input size sees every octave resized to it; the gradient flows back
through that resize to the octave's pixels. Each step's frame is the octave at its own size (a viewer's
canvas and the run's GIF scale the smaller ones up to the picture's width).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from convlens.errors import BadInput
from convlens.events import Event, Log, Progress, Result
from convlens.images import to_image, to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Int, Layer, Picture

from .common import EVERY, is_shown, lr_param, mean_start, non_finite, refuse, snapshot, steps_param

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Mordvintsev, Olah, Tyka 2015, Inceptionism: Going Deeper into Neural Networks (Google Research blog)"
)
MIN_OCTAVE_SIDE = 32


def fit_within(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` (h, w) scaled down, keeping its aspect, so neither side exceeds ``longest``."""
    height, width = size
    factor = min(1.0, longest / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """The (h, w) of each octave, smallest first, the last being ``size``; no side below 32 px."""
    height, width = size
    sizes = []
    for level in reversed(range(octaves)):
        factor = scale**-level
        sizes.append(
            (max(MIN_OCTAVE_SIDE, round(height * factor)), max(MIN_OCTAVE_SIDE, round(width * factor)))
        )
    return sizes


def resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def layer_activation(
    model: Model, images: torch.Tensor, layer: str, input_size: tuple[int, int] | None
) -> torch.Tensor:
    inputs = images if input_size is None else resized(images, input_size)
    activations = model.forward(inputs, [layer], logits=False).activations
    if layer not in activations:
        raise BadInput("params.layer", f"layer {layer!r} of model {model.id!r} gives no tensor to maximise")
    return activations[layer].float()


def guided_objective(activation: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Mean over the dream's positions of the largest dot product of its feature vector with any of the
    guide's (``guide``: CxM, one column per position): each part of the dream grows toward the guide's
    feature it already resembles most."""
    features = activation[0].flatten(1)  # CxN
    return (features.t() @ guide).amax(dim=1).mean()


def layer_objective(
    model: Model,
    images: torch.Tensor,
    layer: str,
    channel: int | None,
    input_size: tuple[int, int] | None,
    guide: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean square of ``layer``'s activations (of ``channel`` only, when given) for ``images``, or with a
    ``guide`` (CxM features of the guide image) the guided objective."""
    activation = layer_activation(model, images, layer, input_size)
    if guide is not None:
        return guided_objective(activation, guide)
    if channel is not None:
        activation = activation[:, channel]
    return activation.pow(2).mean()


def ascent_step(
    model: Model,
    dream: torch.Tensor,
    layer: str,
    channel: int | None,
    lr: float,
    shift: tuple[int, int],
    input_size: tuple[int, int] | None,
    guide: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One normalised gradient-ascent step on ``dream`` rolled by ``shift``: the new image, and the objective
    before it and the gradient's mean absolute value (``gradient``), by which the step divides it."""
    rolled = torch.roll(dream, shifts=shift, dims=(2, 3)).requires_grad_(True)
    objective = layer_objective(model, rolled, layer, channel, input_size, guide)
    (gradient,) = torch.autograd.grad(objective, rolled)
    scale = gradient.abs().mean()
    stepped = (rolled.detach() + lr * (gradient / (scale + 1e-8))).clamp_(0.0, 1.0)
    values = {"objective": float(objective.detach()), "gradient": float(scale)}
    return torch.roll(stepped, shifts=(-shift[0], -shift[1]), dims=(2, 3)), values


def check_finite(model: Model, layer: str, step: int, values: dict[str, float]) -> None:
    """Refuse to go on once the objective or its gradient is not a finite number: a broken model on the
    starting picture (step 0), else a run that diverged, before its image is shown."""
    if bad := non_finite(values):
        refuse(
            "deepdream",
            model,
            step,
            start=f"a non-finite {bad} on layer {layer!r} for the starting picture",
            what=f"{bad} on layer {layer!r}",
            advice="another layer",
        )


def run_deepdream(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    layer = params["layer"] or model.suggest_layer()
    if layer is None:
        raise BadInput("params.layer", f"model {model.id!r} has no spatial layer to suggest; choose one")
    channel = params["channel"]
    if channel is not None:
        channels = model.layer(layer).shape[0]
        if channel >= channels:
            raise BadInput("params.channel", f"layer {layer!r} has {channels} channels; got {channel}")
    steps, lr, jitter, every = params["steps"], params["lr"], params["jitter"], params["every"]
    input_size = None if model.card.extra.get("dynamic_size") else tuple(model.input_size)
    guide = None
    if params["guide"]:
        if channel is not None:
            raise BadInput("params.guide", "a guide steers the whole layer; leave the channel empty")
        with torch.no_grad():
            guide_image = to_tensor(ctx.pictures["guide"], model.input_size)
            guide = layer_activation(model, guide_image, layer, None)[0].flatten(1)

    start = fit_within(ctx.image.shape[:2], 2 * max(model.input_size))
    if params["init"] == "image":
        base = to_tensor(ctx.image, start)
    else:  # a dream from nothing, the size of the picture's
        base = mean_start(ctx, start, noise=params["init"] == "noise")
    sizes = octave_sizes(tuple(base.shape[-2:]), params["octaves"], params["octave_scale"])
    total = steps * len(sizes)
    yield Log(
        f"deepdream on {layer!r}"
        + (f" channel {channel}" if channel is not None else "")
        + (f", guided by {params['guide']!r}" if guide is not None else "")
        + f", octaves {sizes}"
    )

    detail = torch.zeros(1, 3, *sizes[0])
    step = 0
    for size in sizes:
        octave_base = resized(base, size)
        dream = (octave_base + resized(detail, size)).clamp(0.0, 1.0)
        for index in range(1, steps + 1):
            shift = tuple(int(s) for s in ctx.rng.integers(-jitter, jitter + 1, size=2)) if jitter else (0, 0)
            stepped, values = ascent_step(model, dream, layer, channel, lr, shift, input_size, guide)
            check_finite(model, layer, step, values)
            dream, step = stepped, step + 1
            # Every k-th step of the octave and its last, at the octave's own size: a viewer's canvas scales
            # it to the picture's width (resizing each frame here took 1.1-1.4 ms a step at 448x298).
            if is_shown(index, every, steps):
                yield from snapshot(dream, {"objective": values["objective"]}, step, "dream", kept=True)
            yield Progress(step, total)
        detail = dream - octave_base

    with torch.no_grad():
        final = layer_objective(model, dream, layer, channel, input_size, guide)
    yield Result(
        images={"dream": to_image(dream)},
        data={
            "layer": layer,
            "channel": channel,
            "guide": params["guide"],
            "init": params["init"],
            "octave_sizes": [list(s) for s in sizes],
            "objective": float(final.detach()),
        },
    )


DEEPDREAM = Method(
    name="deepdream",
    title="DeepDream",
    topic="What a unit wants to see",
    run=run_deepdream,
    params=(
        Layer("layer", help="The layer whose activations grow; empty: the model's suggested layer."),
        Int(
            "channel",
            None,
            nullable=True,
            minimum=0,
            channel_of="layer",
            help="Only this channel of the layer; empty: all of them.",
        ),
        Int("octaves", 3, minimum=1, maximum=8, help="Scales processed, from the smallest up."),
        Float(
            "octave_scale", 1.4, minimum=1.1, maximum=2.0, title="Octave scale", help="Size ratio of octaves."
        ),
        steps_param(10, "Gradient-ascent steps per octave.", maximum=500),
        lr_param(0.05, "Pixel change per step, in [0, 1] units.", maximum=1.0),
        Int(
            "jitter",
            16,
            minimum=0,
            maximum=64,
            help="Largest random shift of the image before each step, in px.",
        ),
        Picture(
            "guide",
            None,
            nullable=True,
            help="Grow, at each place of the dream, the guide image's feature it resembles most; empty: "
            "grow whatever the layer sees.",
        ),
        Choice(
            "init",
            "image",
            ("image", "noise", "mean"),
            title="Start from",
            help="image: the chosen picture; noise: seeded noise around the dataset's mean colour; mean: that "
            "colour alone. The last two dream from nothing, at the picture's size.",
        ),
        EVERY,
    ),
    needs=frozenset({"gradients", "layers"}),
    description="Gradient ascent on the image to amplify whatever a layer (or one channel) responds to, in octaves "
    "with jitter: faint patterns become vivid ones as you watch.",
    reference=REFERENCE,
)
