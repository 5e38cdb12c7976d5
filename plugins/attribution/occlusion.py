"""Occlusion: hide one square of the image at a time and watch the class probability fall.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014 (arXiv:1311.2901),
section 4.2 and Fig. 7. A ``window`` x ``window`` square filled with ``fill`` slides over the image in steps
of ``stride``; at each position one forward pass gives (a) the softmax probability of the target class and
(b) the most likely class, the paper's Fig. 7 (d) and (e). The per-pixel map is Captum's ``Occlusion`` on
the probability: the drop ``p(image) - p(occluded image)``, averaged over the windows that cover the pixel.

Positions are Captum's: ``ceil((size - window) / stride) + 1`` per axis starting at 0, the last one cut off
at the image's edge when the stride does not divide ``size - window``. Forward passes only, in batches of
``batch_size`` built in numpy (through ONNX Runtime for ``.onnx`` models); a frame after each batch shows
the pixels whose windows are all done. The shown map is the drop divided by its maximum and clipped at 0
(``data["scale"]``); rows still waiting for windows are shown as the image in grey.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from convlens.colormaps import colorize, overlay
from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Choice, ClassIndex, Int

from .saliency import OVERLAY

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = "Zeiler, Fergus 2014, Visualizing and Understanding Convolutional Networks, ECCV, arXiv:1311.2901"
FILLS = ("grey", "zero", "mean", "blur")
GREY = 0.5
BLUR_SIGMA_PER_WINDOW = 0.25
"""The ``blur`` fill is the image under a Gaussian of sigma ``window / 4``: detail at the window's scale is gone."""
PALETTE = np.array(
    [
        (0.12, 0.47, 0.71),
        (1.00, 0.50, 0.05),
        (0.17, 0.63, 0.17),
        (0.84, 0.15, 0.16),
        (0.58, 0.40, 0.74),
        (0.55, 0.34, 0.29),
        (0.89, 0.47, 0.76),
        (0.74, 0.74, 0.13),
        (0.09, 0.75, 0.81),
    ],
    dtype=np.float32,
)
"""Colours of the most frequent classes in the top-class map; all other classes are grey."""
OTHER_CLASSES = np.array((0.5, 0.5, 0.5), dtype=np.float32)


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Where windows start along an axis of ``size`` pixels, as Captum's ``Occlusion`` places them."""
    return np.arange(math.ceil((size - window) / stride) + 1) * stride


def check_geometry(size: tuple[int, int], window: int, stride: int) -> None:
    """``BadInput`` naming ``params.window`` or ``params.stride`` when the windows cannot tile ``size``."""
    if window > min(size):
        raise BadInput(
            "params.window", f"a {window}-pixel window does not fit in the {size[0]}x{size[1]} model input"
        )
    if stride > window and window < max(size):
        raise BadInput(
            "params.stride",
            f"a stride of {stride} is larger than the {window}-pixel window: pixels between windows would "
            "never be occluded",
        )


def fill_values(pixels: np.ndarray, fill: str, window: int) -> np.ndarray:
    """What the window shows for 3xHxW ``pixels``: 3x1x1 for a flat fill, 3xHxW for ``blur``."""
    if fill == "zero":
        return np.zeros((3, 1, 1), np.float32)
    if fill == "grey":
        return np.full((3, 1, 1), GREY, np.float32)
    if fill == "mean":
        return pixels.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = (0, BLUR_SIGMA_PER_WINDOW * window, BLUR_SIGMA_PER_WINDOW * window)
        return gaussian_filter(pixels, sigma=sigma, mode="reflect").astype(np.float32)
    raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def occluded_batch(pixels: np.ndarray, fill: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Nx3xHxW copies of ``pixels``, copy ``k`` with its window at ``starts[k]`` (y, x) replaced by ``fill``."""
    batch = np.empty((len(starts), *pixels.shape), np.float32)
    batch[:] = pixels
    for image, (y, x) in zip(batch, starts, strict=True):
        image[:, y : y + window, x : x + window] = (
            fill[:, y : y + window, x : x + window] if fill.shape[1] > 1 else fill
        )
    return batch


def coverage(size: tuple[int, int], starts: np.ndarray, window: int) -> np.ndarray:
    """HxW: how many of the windows starting at ``starts`` cover each pixel."""
    counts = np.zeros(size, np.int32)
    for y, x in starts:
        counts[y : y + window, x : x + window] += 1
    return counts


def occlusion(
    model: Model,
    pixels: np.ndarray,
    target: int | None,
    window: int,
    stride: int,
    fill: str = "grey",
    batch_size: int = 32,
) -> Iterator[dict]:
    """Occlusion of 3xHxW ``pixels`` in [0, 1], one state dict per batch (the last one complete).

    Each state holds ``attribution_sum`` and ``done`` (HxW, the drop summed over finished windows and their
    count), ``coverage`` (the count when all are done), ``probability_grid`` and ``top_class_grid`` (NaN and
    -1 where not yet computed), ``target``, ``base_probability``, ``positions_done`` and ``positions``.
    """
    size = pixels.shape[1:]
    check_geometry(size, window, stride)
    rows, cols = window_starts(size[0], window, stride), window_starts(size[1], window, stride)
    starts = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    base = softmax(model.logits(pixels[None], batch_size=1))[0]
    target = int(base.argmax()) if target is None else target
    base_probability = float(base[target])
    baseline = fill_values(pixels, fill, window)
    state = {
        "attribution_sum": np.zeros(size, np.float64),
        "done": np.zeros(size, np.int32),
        "coverage": coverage(size, starts, window),
        "probability_grid": np.full((len(rows), len(cols)), np.nan, np.float32),
        "top_class_grid": np.full((len(rows), len(cols)), -1, np.int64),
        "target": target,
        "base_probability": base_probability,
        "positions_done": 0,
        "positions": len(starts),
    }
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        probabilities = softmax(model.logits(occluded_batch(pixels, baseline, chunk, window), batch_size))
        state["probability_grid"].flat[first : first + len(chunk)] = probabilities[:, target]
        state["top_class_grid"].flat[first : first + len(chunk)] = probabilities.argmax(axis=1)
        for (y, x), probability in zip(chunk, probabilities[:, target], strict=True):
            state["attribution_sum"][y : y + window, x : x + window] += base_probability - probability
            state["done"][y : y + window, x : x + window] += 1
        state["positions_done"] = first + len(chunk)
        yield state


def attribution_map(state: dict) -> tuple[np.ndarray, np.ndarray]:
    """The mean drop per pixel (HxW float32, 0 where unfinished) and where all its windows are done."""
    finished = state["done"] == state["coverage"]
    mean = state["attribution_sum"] / np.maximum(state["coverage"], 1)
    return np.where(finished, mean, 0.0).astype(np.float32), finished


def shown(attribution: np.ndarray) -> tuple[np.ndarray, float]:
    """``attribution`` divided by its maximum, clipped to [0, 1], and that maximum (0: nothing to show)."""
    scale = float(attribution.max())
    return (np.clip(attribution / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(attribution)), scale


def progress_frame(image: np.ndarray, state: dict, opacity: float) -> np.ndarray:
    """The heatmap over ``image`` where every window is done; the rest as the image in grey."""
    attribution, finished = attribution_map(state)
    heatmap = overlay(image, shown(attribution)[0], opacity)
    grey = image.mean(axis=2, keepdims=True)
    return np.where(finished[:, :, None], heatmap, grey)


def cells(grid: np.ndarray, stride: int) -> np.ndarray:
    """Each grid value as a ``stride`` x ``stride`` block."""
    return np.repeat(np.repeat(grid, stride, axis=0), stride, axis=1)


def top_class_colours(grid: np.ndarray, model: Model) -> tuple[np.ndarray, list[dict]]:
    """The top-class grid coloured by class (HxWx3), and the classes seen, most frequent first."""
    classes, counts = np.unique(grid, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    colours = np.empty((*grid.shape, 3), np.float32)
    colours[:] = OTHER_CLASSES
    seen = []
    for rank, index in enumerate(order):
        colour = PALETTE[rank] if rank < len(PALETTE) else OTHER_CLASSES
        colours[grid == classes[index]] = colour
        seen.append(
            {
                "index": int(classes[index]),
                "label": model.label(int(classes[index])),
                "fraction": float(counts[index] / grid.size),
                "colour": [round(float(c), 3) for c in colour],
            }
        )
    return colours, seen


def run_occlusion(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    check_geometry(ctx.model.input_size, params["window"], params["stride"])
    image = ctx.model_input()[0].numpy()
    picture = np.ascontiguousarray(image.transpose(1, 2, 0))
    state: dict = {}
    batches = occlusion(
        ctx.model,
        image,
        params["target"],
        params["window"],
        params["stride"],
        params["fill"],
        params["batch_size"],
    )
    for step, state in enumerate(batches):
        yield Frame(progress_frame(picture, state, params["overlay"]), step=step, label="occlusion")
        yield Progress(state["positions_done"], state["positions"])
    attribution, _ = attribution_map(state)
    normalised, scale = shown(attribution)
    probability_grid, top_class_grid = state["probability_grid"], state["top_class_grid"]
    top_class_image, classes_seen = top_class_colours(top_class_grid, ctx.model)
    target = state["target"]
    yield Result(
        images={
            "occlusion": overlay(picture, normalised, params["overlay"]),
            "map": normalised,
            "probability_map": colorize(cells(probability_grid, params["stride"])),
            "top_class_map": cells(top_class_image, params["stride"]),
        },
        arrays={
            "attribution": attribution,
            "probability_grid": probability_grid,
            "top_class_grid": top_class_grid,
        },
        data={
            "target": target,
            "label": ctx.model.label(target),
            "base_probability": state["base_probability"],
            "positions": state["positions"],
            "grid": list(probability_grid.shape),
            "scale": scale,
            "min_probability": float(probability_grid.min()),
            "classes_seen": classes_seen[:10],
        },
    )


OCCLUSION = Method(
    name="occlusion",
    title="Occlusion",
    topic="Which pixels matter",
    run=run_occlusion,
    params=(
        ClassIndex(
            "target", title="Class", help="The class whose probability is watched; empty: the top one."
        ),
        Int("window", 32, minimum=1, title="Window (pixels)", help="Side of the hiding square."),
        Int(
            "stride",
            8,
            minimum=1,
            title="Stride (pixels)",
            help="Step between positions; at most the window.",
        ),
        Choice(
            "fill",
            "grey",
            FILLS,
            title="Fill",
            help="What the square shows: mid grey, black, the image's mean colour or the image blurred.",
        ),
        Int("batch_size", 32, minimum=1, maximum=512, title="Batch size", help="Positions per forward pass."),
        OVERLAY,
    ),
    needs=frozenset(),
    description="Slide a square over the image and map how much the class probability drops when each pixel "
    "is hidden (Captum's Occlusion on the softmax probability), plus the probability and the most likely "
    "class at each position of the square. Forward passes only.",
    reference=REFERENCE,
)
