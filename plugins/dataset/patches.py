"""Maximally activating patches: for units of a layer, the data-set patches that excite each most.

Girshick, Donahue, Darrell & Malik, "Rich feature hierarchies for accurate object detection and semantic
segmentation", CVPR 2014, section 3.1 and figure 4 (the top regions of pool5 units, each the unit's receptive
field); Zeiler & Fergus 2014 show the same grids beside their deconvnet projections.

A unit here is a channel of a spatial layer at any position, as in Girshick et al.: for each chosen channel the
``k`` largest activations over every position of every data-set image, in one pass over the data set that keeps
only k candidates a channel (:class:`convlens.features.TopActivations`, kept in the feature store, so a second
view of the same layer reads them from disk). Each patch is the unit's exact receptive field on the image as the
model sees it (resized to its input), computed from the graph (:mod:`convlens.models.receptive_field`): where
the field reaches past the picture's edge (the unit read padding there), the patch shows a grey-and-white
checkerboard, so a clipped field is seen as such rather than stretched. Patches are scaled to tiles with nearest
neighbour. With ``guided``, beside each patch its guided-backpropagation view (Springenberg et al. 2015) of that
unit at that position, over the same field. The grid fills in as the pass goes: a frame of the best patches so
far every ``every`` batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.images import resize
from convlens.methods import Method, RunContext
from convlens.params import Bool, Dataset, Int, Layer, Param, plain_int

if TYPE_CHECKING:
    from convlens.features import TopActivations
    from convlens.models.base import Model
    from convlens.models.receptive_field import LayerField

REFERENCE = (
    "Girshick, Donahue, Darrell, Malik 2014, Rich feature hierarchies for accurate object detection and "
    "semantic segmentation, CVPR 2014, section 3.1, figure 4"
)
GAP = 2
CHECKER = 8
"""Pixels a side of the checkerboard's squares that mark where a field reaches past the picture."""


def chosen_layer(params: dict[str, Any], model: Model) -> str:
    layer = params["layer"] or model.suggest_layer()
    if layer is None or len(model.layer(layer).shape) != 3:
        shape = None if layer is None else list(model.layer(layer).shape)
        raise BadInput(
            "params.layer", f"patches need a layer with spatial extent; {layer!r} has shape {shape}"
        )
    return layer


def chosen_channels(params: dict[str, Any], model: Model) -> list[int]:
    """The channels named in ``channels`` (comma-separated), or the first ``units``."""
    count = model.layer(chosen_layer(params, model)).shape[0]
    text = params["channels"].strip()
    if not text:
        return list(range(min(params["units"], count)))
    channels = []
    for part in text.split(","):
        channel = plain_int(part.strip())
        if channel is None:
            raise BadInput(
                "params.channels", f"expected channel numbers separated by commas, got {part.strip()!r}"
            )
        if channel >= count:
            raise BadInput("params.channels", f"channel {channel} is past the layer's last, {count - 1}")
        channels.append(channel)
    if len(channels) > 64:
        raise BadInput("params.channels", f"at most 64 channels, got {len(channels)}")
    return channels


def check(params: dict[str, Any], model: Model) -> None:
    chosen_channels(params, model)
    if params["guided"] and not {"gradients", "relu_rules"} <= model.capabilities:
        raise BadInput("params.guided", f"model {model.id!r} cannot run guided backpropagation")


def field_crop(
    picture: np.ndarray, top: int, left: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` window of ``picture`` (HxWx3) at (``top``, ``left``), and a mask of where it lies inside."""
    height, width = picture.shape[:2]
    crop = np.zeros((*size, 3), dtype=np.float32)
    inside = np.zeros(size, dtype=bool)
    rows = slice(max(top, 0), min(top + size[0], height))
    cols = slice(max(left, 0), min(left + size[1], width))
    if rows.start < rows.stop and cols.start < cols.stop:
        crop[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = picture[rows, cols]
        inside[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = True
    return crop, inside


def checkered(crop: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``crop`` with a grey-and-white checkerboard where ``inside`` is false."""
    rows, cols = np.indices(inside.shape)
    board = np.where(((rows // CHECKER + cols // CHECKER) % 2)[..., None] == 0, 0.55, 0.8).astype(np.float32)
    return np.where(inside[..., None], crop, board)


def tile(picture: np.ndarray, side: int) -> np.ndarray:
    """``picture`` scaled to ``side`` x ``side`` by nearest neighbour (pixel centres)."""
    rows = (np.arange(side) * picture.shape[0] // side).clip(0, picture.shape[0] - 1)
    cols = (np.arange(side) * picture.shape[1] // side).clip(0, picture.shape[1] - 1)
    return picture[rows][:, cols]


def guided_view(
    model: Model, picture: np.ndarray, layer: str, channel: int, row: int, col: int
) -> np.ndarray:
    """Guided backpropagation of one unit to the picture (at model input size), normalised to [0, 1]."""
    image = torch.from_numpy(np.ascontiguousarray(picture.transpose(2, 0, 1)))[None].requires_grad_(True)
    activation = model.forward(image, [layer], logits=False, relu_rule="guided").activations[layer]
    (gradient,) = torch.autograd.grad(activation[0, channel, row, col], image)
    view = gradient[0].permute(1, 2, 0).numpy()
    scale = np.abs(view).max()
    return (0.5 + 0.5 * view / scale if scale > 0 else np.full_like(view, 0.5)).astype(np.float32)


def grid(tiles: list[list[np.ndarray | None]], side: int) -> np.ndarray:
    """Rows of tiles (``None``: not found yet, left white) on a white canvas."""
    columns = max((len(row) for row in tiles), default=1)
    canvas = np.ones((len(tiles) * (side + GAP) + GAP, columns * (side + GAP) + GAP, 3), dtype=np.float32)
    for r, row in enumerate(tiles):
        for c, picture in enumerate(row):
            if picture is not None:
                top, left = GAP + r * (side + GAP), GAP + c * (side + GAP)
                canvas[top : top + side, left : left + side] = picture
    return canvas


class Patches:
    """The patches of the best positions so far, drawn from the data set (each image loaded once a frame)."""

    def __init__(self, ctx: RunContext, layer: str, channels: list[int], field: LayerField) -> None:
        self.ctx = ctx
        self.dataset = ctx.datasets["dataset"]
        self.layer = layer
        self.channels = channels
        self.field = field
        self.side = ctx.params["tile"]

    def picture(self, index: int) -> np.ndarray:
        return resize(self.dataset.load(index), self.ctx.model.input_size)

    def crop(self, picture: np.ndarray, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        from convlens.models.receptive_field import field_box

        whole = field_box(self.field, row, col)
        return field_crop(picture, whole.top, whole.left, self.field.size)

    def tiles(self, top: TopActivations, guided: bool = False) -> list[list[np.ndarray | None]]:
        values, where = top.sorted()
        cache: dict[int, np.ndarray] = {}
        rows = []
        for channel in self.channels:
            row: list[np.ndarray | None] = []
            for value, (index, r, c) in zip(values[channel], where[channel], strict=True):
                if not np.isfinite(value) or index < 0:
                    row.append(None)
                    continue
                picture = cache.setdefault(int(index), self.picture(int(index)))
                crop, inside = self.crop(picture, int(r), int(c))
                row.append(tile(checkered(crop, inside), self.side))
                if guided:
                    view = guided_view(self.ctx.model, picture, self.layer, channel, int(r), int(c))
                    row.append(tile(checkered(*self.crop(view, int(r), int(c))), self.side))
            rows.append(row)
        return rows


def run(ctx: RunContext) -> Iterator[Event]:
    from convlens.models.receptive_field import field_box, receptive_field, unit_box

    params = ctx.params
    model = ctx.model
    layer = chosen_layer(params, model)
    channels = chosen_channels(params, model)
    try:
        field = receptive_field(model, layer)
    except BadInput as error:
        raise BadInput("params.layer", error.reason) from None
    patches = Patches(ctx, layer, channels, field)
    every = params["every"]
    live: list[TopActivations] = []
    steps = ctx.features.extract(model, patches.dataset, layer, top_k=params["k"], on_top=live.append)
    batches = 0
    try:
        while True:
            progress = next(steps)
            batches += 1
            if live and batches % every == 0 and progress.step < progress.total:
                yield Frame(grid(patches.tiles(live[0]), patches.side), step=progress.step, label="so far")
            yield progress
    except StopIteration as finished:
        features = finished.value
    finally:
        steps.close()

    top = features.top
    picture = grid(patches.tiles(top, guided=params["guided"]), patches.side)
    yield Frame(picture, label="top patches")
    values, where = top.sorted()
    items = patches.dataset.items()
    units = []
    for channel in channels:
        found = []
        for value, (index, row, col) in zip(values[channel], where[channel], strict=True):
            if index < 0:
                continue
            box = unit_box(field, int(row), int(col))
            found.append(
                {
                    "value": float(value),
                    "image": int(index),
                    "key": items[index].key,
                    "label": items[index].label,
                    "row": int(row),
                    "col": int(col),
                    "box": {"top": box.top, "left": box.left, "bottom": box.bottom, "right": box.right},
                    "clipped": box.clipped,
                }
            )
        units.append({"channel": channel, "patches": found})
    boxes = np.array(
        [
            [
                [(b := field_box(field, int(r), int(c))).top, b.left, b.bottom, b.right]
                for _, r, c in where[ch]
            ]
            for ch in channels
        ],
        dtype=np.int64,
    )
    yield Progress(features.codes.shape[0], features.codes.shape[0])
    yield Result(
        images={"patches": picture},
        arrays={"values": values[channels], "where": where[channels], "boxes": boxes},
        data={
            "dataset": patches.dataset.id,
            "layer": layer,
            "engine": features.engine,
            "field": field.to_json(),
            "units": units,
        },
    )


PATCHES = Method(
    name="top_patches",
    title="Maximally activating patches",
    topic="What the network has learned",
    description=(
        "For channels of a layer, the data-set patches (each the unit's receptive field) that activate it most, "
        "found in one pass; optionally each beside its guided-backpropagation view."
    ),
    reference=REFERENCE,
    run=run,
    check=check,
    params=(
        Dataset("dataset", "skimage_crops", title="Data set"),
        Layer("layer", title="Layer", help="a spatial layer; empty: the model's suggested one"),
        Param(
            "channels",
            "string",
            "",
            title="Channels",
            help="comma-separated channel numbers; empty: the first `units`",
        ),
        Int("units", 8, minimum=1, maximum=64, title="Channels when none are named"),
        Int("k", 9, minimum=1, maximum=64, title="Patches per channel"),
        Bool("guided", False, title="Guided backpropagation beside each patch"),
        Int("tile", 48, minimum=8, maximum=128, title="Tile size (px)"),
        Int("every", 8, minimum=1, maximum=10_000, title="Draw every N batches"),
    ),
    needs=frozenset({"layers"}),
)
