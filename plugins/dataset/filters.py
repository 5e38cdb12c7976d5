"""The kernels of a convolution drawn as pictures: what the first layer of a CNN has learned to look for.

Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012,
figure 3: the 96 first-layer kernels of AlexNet, each 11x11x3 drawn as a colour tile. The weights are read
from the model file itself (:meth:`convlens.models.base.Model.conv_weight`), so no image and no data set is
needed.

How the tiles are scaled (``scale``): ``layer`` (the default) maps the whole layer's weights to [0, 1] with
one minimum and maximum, as Krizhevsky's own ``shownet.py`` (cuda-convnet2, ``plot_filters``) does, so a
weak filter looks weak (near the grey of zero) beside a strong one; ``filter`` maps each filter to [0, 1] on
its own (over all its input channels), which shows the pattern of every filter however small its weights,
at the cost of their relative strength.

Differences from the figure: a first layer (three input channels, one group) is drawn as colour tiles, each
kernel's channels taken as red, green and blue, which is what they mean for a model fed RGB pictures; any
other layer is drawn one grey tile per (filter, input channel), a row per filter, at most ``max_filters``
rows and ``max_inputs`` columns; a depthwise layer (one input channel per filter) one grey tile per channel.
Tiles are enlarged by an integer factor with nearest neighbour, so a 3x3 kernel shows its nine weights, and
separated by a one-pixel white line. ONNX files written by ``torch.onnx.export`` usually hold a BatchNorm
folded into the convolution (``data.bn_folded``): those kernels are the conv's weights times the BatchNorm's
per-channel scale, and a layer-wide scale then compares the folded strengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Choice, Int, Layer

if TYPE_CHECKING:
    from convlens.models.base import ConvInfo, Model

REFERENCE = (
    "Krizhevsky, Sutskever, Hinton 2012, ImageNet Classification with Deep Convolutional Neural Networks, "
    "NIPS 2012, figure 3"
)
GAP = 1
"""Pixels of white between two tiles and around the mosaic."""
MAX_SIDE = 512
"""The automatic zoom is the largest that keeps the mosaic within this many pixels a side."""
MAX_ZOOM = 32


def normalised_weights(weights: np.ndarray, scale: str) -> np.ndarray:
    """``weights`` (out, in, kh, kw) mapped to [0, 1] by min-max: of the whole layer, or of each filter.

    A constant set (a zero filter) maps to 0.5.
    """
    axes = None if scale == "layer" else (1, 2, 3)
    low = weights.min(axis=axes, keepdims=True)
    span = weights.max(axis=axes, keepdims=True) - low
    return np.where(span > 0, (weights - low) / np.where(span > 0, span, 1), 0.5).astype(np.float32)


def tiles_of(
    conv: ConvInfo, normalised: np.ndarray, max_filters: int, max_inputs: int
) -> tuple[str, np.ndarray]:
    """How the layer is drawn (``rgb``, ``depthwise`` or ``grey``) and its tiles as a grid (rows, cols, kh, kw[, 3]).

    Empty cells (past the last filter of a square grid) are NaN.
    """
    count = min(conv.shape[0], max_filters)
    if conv.shape[1] == 3 and conv.groups == 1:
        kind, cells = "rgb", normalised[:count].transpose(0, 2, 3, 1)
    elif conv.depthwise:
        kind, cells = "depthwise", normalised[:count, 0]
    else:
        return "grey", normalised[:count, :max_inputs]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * columns, *cells.shape[1:]), np.nan, dtype=np.float32)
    grid[:count] = cells
    return kind, grid.reshape(rows, columns, *cells.shape[1:])


def auto_zoom(rows: int, columns: int, kernel: tuple[int, int]) -> int:
    """The largest integer enlargement (at most :data:`MAX_ZOOM`, at least 1) that fits :data:`MAX_SIDE`."""
    fits = min(
        (MAX_SIDE - GAP * (rows + 1)) // (rows * kernel[0]),
        (MAX_SIDE - GAP * (columns + 1)) // (columns * kernel[1]),
    )
    return int(max(1, min(MAX_ZOOM, fits)))


def mosaic(grid: np.ndarray, zoom: int) -> np.ndarray:
    """The grid's tiles enlarged ``zoom`` times (nearest neighbour) between white lines: HxWx3 uint8."""
    rows, columns, height, width = grid.shape[:4]
    tile_h, tile_w = height * zoom, width * zoom
    picture = np.full((GAP + rows * (tile_h + GAP), GAP + columns * (tile_w + GAP), 3), 255, np.uint8)
    for row in range(rows):
        for column in range(columns):
            tile = grid[row, column]
            if np.isnan(tile).any():
                continue
            pixels = np.round(tile * 255).astype(np.uint8).repeat(zoom, axis=0).repeat(zoom, axis=1)
            top, left = GAP + row * (tile_h + GAP), GAP + column * (tile_w + GAP)
            picture[top : top + tile_h, left : left + tile_w] = (
                pixels[..., None] if pixels.ndim == 2 else pixels
            )
    return picture


def chosen_conv(model: Model, layer: str | None) -> ConvInfo:
    """The convolution ``layer``, or the model's first; ``BadInput`` naming ``params.layer`` if there is none."""
    convs = model.conv_layers()
    if not convs:
        raise BadInput("params.layer", f"model {model.id!r} has no convolution whose weights can be read")
    if layer is None:
        return convs[0]
    for conv in convs:
        if conv.name == layer:
            return conv
    raise BadInput("params.layer", f"{layer!r} is not a convolution of model {model.id!r}")


def check_filters(params: dict, model: Model) -> None:
    chosen_conv(model, params["layer"])


def run_filters(ctx: RunContext) -> Iterator[Event]:
    conv = chosen_conv(ctx.model, ctx.params["layer"])
    weights = ctx.model.conv_weight(conv.name)
    normalised = normalised_weights(weights, ctx.params["scale"])
    kind, grid = tiles_of(conv, normalised, ctx.params["max_filters"], ctx.params["max_inputs"])
    zoom = ctx.params["zoom"] or auto_zoom(grid.shape[0], grid.shape[1], conv.shape[2:])
    picture = mosaic(grid, zoom)
    yield Frame(picture, step=0, label="filters")
    yield Progress(1, 1)
    yield Result(
        images={"filters": picture},
        arrays={"weights": weights},
        data={
            **conv.to_json(),
            "layer": conv.name,
            "view": kind,
            "scale": ctx.params["scale"],
            "zoom": zoom,
            "grid": [int(grid.shape[0]), int(grid.shape[1])],
            "shown_filters": min(conv.shape[0], ctx.params["max_filters"]),
            "shown_inputs": 3 if kind == "rgb" else 1 if kind == "depthwise" else int(grid.shape[1]),
            "min": float(weights.min()),
            "max": float(weights.max()),
        },
    )


FILTERS = Method(
    name="filters",
    title="Filters",
    topic="What the network has learned",
    run=run_filters,
    params=(
        Layer("layer", help="A convolution; empty: the first."),
        Choice(
            "scale",
            "layer",
            ["layer", "filter"],
            title="Scale",
            help="layer: one min-max for all the layer's weights (AlexNet's figure); filter: each on its own.",
        ),
        Int("max_filters", 64, minimum=1, maximum=512, title="Filters shown", help="The first this many."),
        Int(
            "max_inputs",
            16,
            minimum=1,
            maximum=256,
            title="Input channels shown",
            help="Per filter of a grey grid: the first this many.",
        ),
        Int(
            "zoom",
            None,
            minimum=1,
            maximum=MAX_ZOOM,
            nullable=True,
            title="Zoom",
            help="Pixels per weight; empty: the largest that keeps the mosaic within 512 px.",
        ),
    ),
    check=check_filters,
    description="The convolution's kernels as pictures, read from the model file: a first layer's as colour "
    "tiles, any other's as grey tiles per input channel, a depthwise layer's one per channel.",
    reference=REFERENCE,
)
