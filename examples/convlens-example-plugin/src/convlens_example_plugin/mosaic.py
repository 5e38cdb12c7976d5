"""Channel mosaic: the first channels of one layer's activation, each as a grey tile, drawn row by row."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from convlens.events import Event, Frame, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Int, Layer

GAP = 2
BACKGROUND = 0.25


def tile_of(channel: torch.Tensor, size: int) -> np.ndarray:
    """One HxW activation map scaled to ``size`` x ``size`` (nearest) and stretched to [0, 1]."""
    grid = F.interpolate(channel[None, None].float(), size=(size, size), mode="nearest")[0, 0].numpy()
    low, high = float(grid.min()), float(grid.max())
    return (grid - low) / (high - low) if high > low else np.zeros_like(grid)


def run_channel_mosaic(ctx: RunContext) -> Iterator[Event]:
    layer = ctx.params["layer"] or ctx.model.suggest_layer()
    with torch.no_grad():
        activation = ctx.model.forward(ctx.model_input(), [layer]).activations[layer][0]
    if activation.ndim == 1:
        activation = activation[:, None, None]
    count = min(ctx.params["count"], activation.shape[0])
    size = ctx.params["tile"]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    step = size + GAP
    canvas = np.full((rows * step + GAP, columns * step + GAP), BACKGROUND, dtype=np.float32)
    stats = []
    for row in range(rows):
        for column in range(columns):
            index = row * columns + column
            if index >= count:
                break
            top, left = GAP + row * step, GAP + column * step
            canvas[top : top + size, left : left + size] = tile_of(activation[index], size)
            channel = activation[index]
            stats.append({"channel": index, "min": float(channel.min()), "max": float(channel.max())})
        yield Frame(canvas.copy(), step=row + 1, label="mosaic")
        yield Progress(row + 1, rows)
    yield Result(images={"mosaic": canvas}, data={"layer": layer, "channels": stats})


CHANNEL_MOSAIC = Method(
    name="channel_mosaic",
    title="Channel mosaic",
    topic="Example plugin",
    run=run_channel_mosaic,
    params=(
        Layer("layer", help="The layer to show; empty: the model's suggested layer."),
        Int("count", 16, minimum=1, maximum=64, help="How many channels, from the first."),
        Int("tile", 48, minimum=8, maximum=128, help="Tile side in pixels."),
    ),
    needs=frozenset({"layers"}),
    description="The first channels of a layer's activation for the image, each stretched to its own range.",
)
