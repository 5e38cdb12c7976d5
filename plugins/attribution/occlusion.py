"""Occlusion: hide one square of the image at a time and watch the class probability fall.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014 (arXiv:1311.2901),
section 4.2 and Fig. 7. A ``window`` x ``window`` square filled with ``fill`` slides over the image in steps
of ``stride``; at each position one forward pass gives (a) the softmax probability of the target class and
(b) the most likely class, the paper's Fig. 7 (d) and (e). The per-pixel map is Captum's ``Occlusion`` on
the probability: the drop ``p(image) - p(occluded image)``, averaged over the windows that cover the pixel.

Positions are Captum's: ``ceil((size - window) / stride) + 1`` per axis starting at 0, the last one cut off
at the image's edge when the stride does not divide ``size - window``. Forward passes only, ``batch_size``
positions at a time; a frame after each batch shows the pixels whose windows are all done. The shown map is
the drop divided by its maximum and clipped at 0 (``data["scale"]``); rows still waiting for windows are shown
as the image in grey.

Three engines compute the occluded images' logits (:func:`occlusion_engine`; ``data["engine"]`` and
``data["engine_reason"]`` say which ran and why): for ``.onnx`` files on the CPU, the incremental one
(:mod:`.incremental_occlusion`, recomputing only what the square changes) or the full one
(:class:`RuntimeOcclusion`, whole images built in numpy), both on single-threaded ONNX Runtime sessions with
one worker thread per CPU; for other models, whole images through ``Model.logits``. All give the same map.

``drill_down`` above 0 trades exactness for time (:func:`drill_down_occlusion`, Nakandala et al.'s adaptive
drill-down): a coarse map streamed first, the fine stride only where it is high, the result's
``error_estimate`` saying how far off it is thought to be.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from convlens.colormaps import colorize, overlay
from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.params import Choice, ClassIndex, Float, Int, Param

from . import occlusion_drill_down as drill
from .saliency import OVERLAY

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = "Zeiler, Fergus 2014, Visualizing and Understanding Convolutional Networks, ECCV, arXiv:1311.2901"
FILLS = ("grey", "zero", "mean", "blur")
ENGINES = ("auto", "incremental", "full")
GREY = 0.5
BLUR_SIGMA_PER_WINDOW = 0.25
"""The ``blur`` fill is the image under a Gaussian of sigma ``window / 4`` (cut at 4 sigma, edges mirrored):
detail at the window's scale is gone."""
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


@dataclass(frozen=True)
class WindowSide(Param):
    """The window's side: an ``int`` that must fit in the model's input, checked when a request arrives."""

    def check(self, value: Any, model: Model | None) -> Any:
        value = super().check(value, model)
        if model is not None:
            check_geometry(model.input_size, value, 1)
        return value


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


class PixelOcclusion:
    """Occluded images built whole in pixel space and run by ``Model.logits``: works for any model."""

    name = "full"
    workers = 1

    def __init__(self, model: Model, pixels: np.ndarray, fill: np.ndarray, window: int, reason: str) -> None:
        self.model, self.pixels, self.fill, self.window, self.reason = model, pixels, fill, window, reason
        self.base = model.logits(pixels[None], batch_size=1)[0]

    def logits(self, starts: np.ndarray, worker: int = 0) -> np.ndarray:
        return self.model.logits(occluded_batch(self.pixels, self.fill, starts, self.window), len(starts))


class RuntimeOcclusion:
    """Occluded images run whole by single-threaded ONNX Runtime sessions, one worker thread per CPU.

    The image is normalised once. Each worker keeps a buffer of copies of it and writes only each window
    before a run and puts it back after, so a batch costs its windows to build, not its images. Each worker
    runs its share of positions ``RUNTIME_BATCH`` at a time. Runtime's own pool of spinning threads is not
    used: it collapsed whenever another process took a core (``bench/README.md``).
    """

    name = "full"

    def __init__(
        self,
        session,
        input_name: str,
        image: np.ndarray,
        fill: np.ndarray,
        window: int,
        workers: int,
        reason: str,
    ) -> None:
        self.session, self.input_name, self.image, self.fill = session, input_name, image, fill
        self.window, self.workers, self.reason = window, workers, reason
        self._buffers: dict[int, np.ndarray] = {}
        self.base = session.run(None, {input_name: image[None]})[0][0]

    def logits(self, starts: np.ndarray, worker: int = 0) -> np.ndarray:
        outputs = [
            self._run(starts[first : first + RUNTIME_BATCH], worker)
            for first in range(0, len(starts), RUNTIME_BATCH)
        ]
        return np.concatenate(outputs)

    def _run(self, starts: np.ndarray, worker: int) -> np.ndarray:
        buffer = self._buffers.get(worker)
        if buffer is None or buffer.shape[0] < len(starts):
            buffer = self._buffers[worker] = np.empty((len(starts), *self.image.shape), self.image.dtype)
            buffer[:] = self.image
        batch = buffer[: len(starts)]
        windows = [(slice(None), slice(y, y + self.window), slice(x, x + self.window)) for y, x in starts]
        for copy, window in zip(batch, windows, strict=True):
            copy[window] = self.fill[window] if self.fill.shape[1] > 1 else self.fill
        try:
            return self.session.run(None, {self.input_name: batch})[0]
        finally:
            for copy, window in zip(batch, windows, strict=True):
                copy[window] = self.image[window]


RUNTIME_BATCH = 4
"""Occluded images per Runtime call in the full engine."""
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_POOL: list[ThreadPoolExecutor] = []
_LOCK = threading.Lock()


def single_thread_session(model: Model):
    """A single-threaded Runtime session of an ONNX model's file (made once per model), or ``None``."""
    with _LOCK:
        if model not in _SESSIONS:
            from convlens.models.onnx import runtime_session

            try:
                _SESSIONS[model] = runtime_session(model.path, threads=1)
            except Exception:  # noqa: BLE001 - the model's own session failed too; onnx2torch runs it
                _SESSIONS[model] = None
        return _SESSIONS[model]


def in_parallel(engine, starts: np.ndarray) -> np.ndarray:
    """``engine.logits`` of ``starts`` on ``engine.workers`` threads, each taking every ``workers``-th
    position (neighbours cost alike, so the shares do too)."""
    workers = min(engine.workers, len(starts))
    if workers <= 1:
        return engine.logits(starts, 0)
    with _LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="occlusion"))
    futures = [_POOL[0].submit(engine.logits, starts[worker::workers], worker) for worker in range(workers)]
    shares = [future.result() for future in futures]
    logits = np.empty((len(starts), *shares[0].shape[1:]), shares[0].dtype)
    for worker, share in enumerate(shares):
        logits[worker::workers] = share
    return logits


def occlusion_engine(
    model: Model, pixels: np.ndarray, fill: np.ndarray, window: int, stride: int, engine: str = "auto"
):
    """What computes the occluded images' logits: an object with ``name`` ("full" or "incremental"),
    ``reason`` (why that one), ``base`` (the image's logits), ``workers`` and ``logits(starts, worker)``.

    ``auto`` takes the incremental engine where its predicted work is at most ``WORTHWHILE`` of the whole
    graph's, ``incremental`` wherever the graph splits, ``full`` never. Only ONNX files that Runtime runs on
    the CPU can be run incrementally.
    """
    session = single_thread_session(model) if model.format == "onnx" else None
    if session is None or session.get_providers()[0] != "CPUExecutionProvider":
        return PixelOcclusion(
            model, pixels, fill, window, "the fast engines need an ONNX file run on the CPU"
        )
    if model.fixed_batch:
        return PixelOcclusion(
            model, pixels, fill, window, f"the graph's batch size is fixed to {model.fixed_batch}"
        )
    mean = np.asarray(model.card.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(3, 1, 1)
    image = ((pixels - mean) / std).astype(model.input_dtype, copy=False)
    normalised_fill = ((fill - mean) / std).astype(model.input_dtype, copy=False)
    workers = os.cpu_count() or 1
    reason = "engine=full asked for"
    if engine != "full":
        from .incremental_occlusion import WORTHWHILE, IncrementalOcclusion, incremental_graph

        size = pixels.shape[1:]
        rows, cols = window_starts(size[0], window, stride), window_starts(size[1], window, stride)
        plan = incremental_graph(model).plan(size, window, rows, cols)
        if isinstance(plan, str):
            reason = plan
        elif engine == "auto" and plan.predicted_work > WORTHWHILE:
            reason = f"predicted work {plan.predicted_work:.2f} of the full pass's; not worth splitting"
        else:
            try:
                plan = incremental_graph(model).prepare(plan)
                return IncrementalOcclusion(plan, image, normalised_fill, window, stride, workers)
            except Exception as error:  # noqa: BLE001 - a piece Runtime will not load or run: the full pass
                reason = f"the graph could not be run in pieces ({type(error).__name__}: {error})"
    return RuntimeOcclusion(session, model.input_name, image, normalised_fill, window, workers, reason)


def occlusion(
    model: Model,
    pixels: np.ndarray,
    target: int | None,
    window: int,
    stride: int,
    fill: str | np.ndarray = "grey",
    batch_size: int = 32,
    engine: str = "auto",
    drill_down: float = 0.0,
) -> Iterator[dict]:
    """Occlusion of 3xHxW ``pixels`` in [0, 1], one state dict per batch (the last one complete).

    ``fill`` is one of :data:`FILLS` or the 3xHxW picture the window shows (``context`` keeps the subject in it).
    ``drill_down`` above 0 computes a coarse pass first and the fine stride only where it is high
    (:func:`drill_down_occlusion`); 0 computes every position, the exact map.

    Each state holds ``attribution_sum`` and ``done`` (HxW, the drop summed over finished windows and their
    count), ``coverage`` (the count when all are done), ``probability_grid`` and ``top_class_grid`` (NaN and
    -1 where not yet computed), ``target``, ``base_probability``, ``positions_done``, ``positions``, and
    ``engine`` and ``engine_reason`` (:func:`occlusion_engine`).
    """
    size = pixels.shape[1:]
    check_geometry(size, window, stride)
    rows, cols = window_starts(size[0], window, stride), window_starts(size[1], window, stride)
    starts = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
    baseline = fill if isinstance(fill, np.ndarray) else fill_values(pixels, fill, window)
    forward = occlusion_engine(model, pixels, baseline, window, stride, engine)
    base = softmax(forward.base[None])[0]
    target = int(base.argmax()) if target is None else target
    base_probability = float(base[target])
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
        "engine": forward.name,
        "engine_reason": forward.reason,
        "approximation": "exact",
        "positions_to_compute": len(starts),
    }
    if drill_down > 0:
        yield from drill_down_occlusion(state, forward, rows, cols, window, batch_size, drill_down)
        return
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        probabilities = softmax(in_parallel(forward, chunk))
        state["probability_grid"].flat[first : first + len(chunk)] = probabilities[:, target]
        state["top_class_grid"].flat[first : first + len(chunk)] = probabilities.argmax(axis=1)
        for (y, x), probability in zip(chunk, probabilities[:, target], strict=True):
            state["attribution_sum"][y : y + window, x : x + window] += base_probability - probability
            state["done"][y : y + window, x : x + window] += 1
        state["positions_done"] = first + len(chunk)
        yield state


def drill_down_occlusion(
    state: dict, forward, rows: np.ndarray, cols: np.ndarray, window: int, batch_size: int, threshold: float
) -> Iterator[dict]:
    """:func:`occlusion`'s states with adaptive drill-down (:mod:`.occlusion_drill_down`): a preview from
    every 4th position, then the coarse pass's map, each interpolated to the whole grid, then the refined
    positions a batch at a time.

    Adds ``approximation`` ("drill_down"), ``positions_computed`` and ``error_estimate`` (the estimated largest
    error of the map, as a share of its maximum; 0 where every position was computed).
    """
    size = state["coverage"].shape
    grid = state["probability_grid"]
    classes = state["top_class_grid"]
    target, base_probability = state["target"], state["base_probability"]
    coarse = drill.coarse_mask(grid.shape)
    state.update(approximation="drill_down", positions_computed=0, error_estimate=0.0)

    def compute(mask: np.ndarray) -> Iterator[None]:
        where = np.argwhere(mask)
        for first in range(0, len(where), batch_size):
            chunk = where[first : first + batch_size]
            probabilities = softmax(in_parallel(forward, np.stack([rows[chunk[:, 0]], cols[chunk[:, 1]]], 1)))
            grid[chunk[:, 0], chunk[:, 1]] = probabilities[:, target]
            classes[chunk[:, 0], chunk[:, 1]] = probabilities.argmax(axis=1)
            state["positions_computed"] += len(chunk)
            yield

    def publish(drops: np.ndarray) -> dict:
        state["attribution_sum"] = drill.window_sums(drops, rows, cols, window, size)
        state["done"] = state["coverage"].copy()
        state["positions_done"] = state["positions_computed"]
        return state

    preview = drill.coarse_mask(grid.shape, drill.PREVIEW_STEP)
    state["positions_to_compute"] = int(coarse.sum())
    for _ in compute(preview):
        pass
    yield publish(drill.interpolated(base_probability - grid.astype(np.float64), drill.PREVIEW_STEP))
    for _ in compute(coarse & ~preview):
        pass
    guesses = drill.interpolated(base_probability - grid.astype(np.float64))
    refined = drill.refined_mask(guesses, threshold)
    computed = coarse | refined
    state["positions_to_compute"] = int(computed.sum())
    if refined.any():  # the coarse map, then each refinement; the last one's state is the final one
        yield publish(guesses)
        for _ in compute(refined):
            if state["positions_computed"] < state["positions_to_compute"]:
                known = computed & ~np.isnan(grid)
                yield publish(np.where(known, base_probability - grid.astype(np.float64), guesses))
    drops = np.where(computed, base_probability - grid.astype(np.float64), guesses)
    skipped = ~computed
    nearest = (np.arange(grid.shape[0]) // 2 * 2)[:, None], (np.arange(grid.shape[1]) // 2 * 2)[None, :]
    grid[skipped] = (base_probability - guesses)[skipped]
    classes[skipped] = classes[nearest][skipped]
    if skipped.any():
        position_error = drill.position_error_estimate(drops, guesses, refined, threshold)
        share = drill.skipped_share(skipped, rows, cols, window, size)
        largest = float(
            (drill.window_sums(drops, rows, cols, window, size) / np.maximum(state["coverage"], 1)).max()
        )
        state["error_estimate"] = float(position_error * share.max() / largest) if largest > 0 else 0.0
    yield publish(drops)


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
        params["engine"],
        params["drill_down"],
    )
    for step, state in enumerate(batches):
        yield Frame(progress_frame(picture, state, params["overlay"]), step=step, label="occlusion")
        yield Progress(state["positions_done"], state["positions_to_compute"])
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
            "engine": state["engine"],
            "engine_reason": state["engine_reason"],
            **approximation_data(state, params["drill_down"]),
        },
    )


def approximation_data(state: dict, threshold: float) -> dict:
    """What the result says about how the map was approximated: nothing computed, nothing to say."""
    if state["approximation"] == "exact":
        return {"approximation": "exact", "positions_computed": state["positions"], "error_estimate": 0.0}
    return {
        "approximation": state["approximation"],
        "drill_down": threshold,
        "positions_computed": state["positions_computed"],
        "error_estimate": state["error_estimate"],
    }


OCCLUSION = Method(
    name="occlusion",
    title="Occlusion",
    topic="Which pixels matter",
    run=run_occlusion,
    params=(
        ClassIndex(
            "target", title="Class", help="The class whose probability is watched; empty: the top one."
        ),
        WindowSide(
            "window", "int", 32, minimum=1, title="Window (pixels)", help="Side of the hiding square."
        ),
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
        Int(
            "batch_size",
            32,
            minimum=1,
            maximum=512,
            title="Batch size",
            help="Positions computed between two frames (shared among the CPUs).",
        ),
        Choice(
            "engine",
            "auto",
            ENGINES,
            title="Engine",
            help="incremental: recompute only what the square changes (ONNX models; same map); full: every "
            "occluded image whole; auto: incremental where it is predicted to be faster.",
        ),
        Float(
            "drill_down",
            0.0,
            minimum=0.0,
            maximum=1.0,
            title="Drill-down",
            help="0: every position (the exact map). Above 0: every other position first, streamed at once as "
            "an interpolated map, then the others only where a neighbour dropped at least this share of the "
            "largest drop; the result gives the estimated error (approximate).",
        ),
        OVERLAY,
    ),
    needs=frozenset(),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="Slide a square over the image and map how much the class probability drops when each pixel "
    "is hidden (Captum's Occlusion on the softmax probability), plus the probability and the most likely "
    "class at each position of the square. Forward passes only; for ONNX models, only what the square changes "
    "is recomputed where that is faster (Nakandala et al. 2019), which gives the same map.",
    reference=REFERENCE,
)
