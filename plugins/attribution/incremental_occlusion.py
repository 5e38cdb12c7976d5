"""Incremental occlusion for ONNX models: recompute only what the occluding square changes.

Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep
CNN Explanations", SIGMOD 2019 (its exact incremental inference; nothing approximate). The graph is cut at a
few tensors (:class:`convlens.models.onnx_regions.SpatialGraph`) and each piece between two cuts becomes an
ONNX Runtime session of its own; the image's activations at every cut are computed once. For an occluded
image each piece then runs on a crop of its input only: the region the square changed there plus the halo
its convolutions read, started on the piece's stride so that its output grid lines up, made of the cached
activation with the previous piece's recomputed region pasted in. Outputs near a crop edge that is not an
image edge saw zero padding instead of their neighbours and are dropped (``Stage.exact``); the rest equal
the whole image's. The last piece (cut → logits, global pooling included) runs whole.

Where to cut is chosen by a cost model: each piece's multiply-adds scaled by its crop's share of its input,
plus a fixed cost per piece and position (:data:`PIECE_OVERHEAD`), against the whole graph's multiply-adds.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convlens.models.onnx_regions import ELEMENTWISE, POINTWISE, SpatialGraph, Stage, subgraph

PIECE_OVERHEAD = 2_000_000
"""Cost of one piece for one position beyond its multiply-adds (its share of a Runtime call, building its
crop, Runtime re-laying out its input and output), in multiply-adds: about 30 µs on one core of the 2-core
machine.
Chains of 2 to 9 pieces measured within 5% of each other on the default model; this value picks 6."""
WORTHWHILE = 0.85
"""Use the incremental engine when its predicted work is at most this share of the whole graph's."""
PLANS_KEPT = 8
"""Plans (and the sessions of their pieces) kept per model, the most recently used."""


@dataclass(frozen=True)
class AxisSteps:
    """Per window position along one axis: changed outputs ``[first, end)``, input crop ``[start, stop)``."""

    first: np.ndarray
    end: np.ndarray
    start: np.ndarray
    stop: np.ndarray


@dataclass
class Piece:
    stage: Stage
    session: Any
    axes: tuple[AxisSteps, AxisSteps]


@dataclass
class Plan:
    """Where to cut the graph for one input size, window and stride, and what that is predicted to save."""

    cuts: list[str]
    predicted_work: float
    """Multiply-adds per occluded image, as a share of the whole graph's (with :data:`PIECE_OVERHEAD`)."""
    size: tuple[int, int]
    window: int
    rows: np.ndarray
    cols: np.ndarray
    pieces: list[Piece] = field(default_factory=list)
    suffix: Any = None


class IncrementalGraph:
    """One ONNX model split for incremental occlusion: its local part, cut candidates, sessions per piece."""

    def __init__(self, model) -> None:
        import onnx

        proto = onnx.load(str(model.path))
        self.graph = SpatialGraph(proto, model.input_name)
        self.output = proto.graph.output[0].name
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        except Exception:  # noqa: BLE001 - shape inference is a convenience; float is the usual type
            values = []
        self.elem_types = {value.name: value.type.tensor_type.elem_type for value in values}
        self.candidates = [name for name in self.graph.cuts if self._keeps_fusions(name)]
        self._sessions: dict[tuple[str, str], Any] = {}
        self._plans: OrderedDict[tuple, Plan | str] = OrderedDict()
        self._lock = threading.Lock()

    def _keeps_fusions(self, tensor: str) -> bool:
        """Whether cutting at ``tensor`` leaves Runtime's operator fusions alone.

        Runtime fuses a convolution with the normalisation, activation or sum that follows it; a cut between
        them would make two slower passes over the tensor.
        """
        consumers = self.graph.consumers(tensor)
        if any(op in POINTWISE for op in consumers):
            return False
        return not (self.graph.local[tensor].op == "Conv" and any(op in ELEMENTWISE for op in consumers))

    def plan(self, size: tuple[int, int], window: int, rows: np.ndarray, cols: np.ndarray) -> Plan | str:
        """The cheapest cuts for windows at ``rows`` x ``cols`` of an image of ``size``, or why none."""
        key = _key(size, window, rows, cols)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            plan = self._plans[key] = self._choose(size, window, rows, cols)
            if len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
                kept = {
                    pair
                    for kept_plan in self._plans.values()
                    if isinstance(kept_plan, Plan)
                    for pair in _pieces(self.graph.input_name, kept_plan.cuts, self.output)
                }
                self._sessions = {pair: session for pair, session in self._sessions.items() if pair in kept}
            return plan

    def _choose(self, size: tuple[int, int], window: int, rows: np.ndarray, cols: np.ndarray) -> Plan | str:
        if not self.candidates:
            stop = next(iter(self.graph.why_not.values()), "no operator is local")
            return f"the graph has no tensor that separates a local first part from the rest ({stop})"
        extents = self.graph.extents(*size)
        local_work = {
            name: node.macs * extents[name][0] * extents[name][1] for name, node in self.graph.local.items()
        }
        total = float(sum(local_work.values())) or 1.0
        windows = [_windows(rows, window, size[0]), _windows(cols, window, size[1])]
        changed = {}
        for cut in self.candidates:
            reach = self.graph.reach[cut]
            spans = [
                np.array([reach[axis].changed(u0, u1, extents[cut][axis]) for u0, u1 in windows[axis]])
                for axis in (0, 1)
            ]
            # A square can leave a cut unchanged (a strided 1x1 convolution skips pixels): none stops there.
            if all((axis_spans[:, 1] > axis_spans[:, 0]).all() for axis_spans in spans):
                changed[cut] = spans
        candidates = list(changed)
        if not candidates:
            return "the occluding square leaves some cut tensor unchanged"
        order = [self.graph.input_name, *candidates]
        # best[b]: the cheapest chain of pieces from the image to cut b (cost, cuts).
        best: dict[str, tuple[float, list[str]]] = {self.graph.input_name: (0.0, [])}
        for index, stop in enumerate(order[1:], 1):
            options = []
            for start in order[:index]:
                if start != self.graph.input_name and start not in self.graph.ancestors(stop):
                    continue
                stage = self.graph.stage(start, stop)
                share = 1.0
                for axis in (0, 1):
                    length = extents[start][axis]
                    spans = changed[stop][axis]
                    crop_start, crop_stop = stage.reach_crop(axis, spans[:, 0], spans[:, 1], length)
                    share *= float(np.mean(crop_stop - crop_start)) / length
                work = sum(local_work[node.output] for node in stage.nodes)
                options.append((best[start][0] + work * share + PIECE_OVERHEAD, [*best[start][1], stop]))
            best[stop] = min(options, key=lambda option: option[0])
        cost, cuts = min(
            (best[cut][0] + _after(self.graph, cut, local_work) + PIECE_OVERHEAD, best[cut][1])
            for cut in candidates
        )
        return Plan(cuts, cost / total, tuple(size), window, rows, cols)

    def prepare(self, plan: Plan) -> Plan:
        """``plan`` with its sessions and per-position crops (built once per plan).

        If that fails (Runtime will not load a piece, say), later requests for the plan get the reason.
        """
        with self._lock:
            if plan.suffix is None:
                try:
                    self._prepare(plan)
                except Exception as error:
                    key = _key(plan.size, plan.window, plan.rows, plan.cols)
                    self._plans[key] = (
                        f"the graph could not be run in pieces ({type(error).__name__}: {error})"
                    )
                    raise
            return plan

    def _prepare(self, plan: Plan) -> None:
        extents = self.graph.extents(*plan.size)
        chain = [self.graph.input_name, *plan.cuts]
        changed = [
            _windows(plan.rows, plan.window, plan.size[0]),
            _windows(plan.cols, plan.window, plan.size[1]),
        ]
        pieces = []
        for start, stop in zip(chain, chain[1:], strict=False):
            stage = self.graph.stage(start, stop)
            axes = []
            for axis in (0, 1):
                length = extents[start][axis]
                spans = [stage.reach[axis].changed(u0, u1, extents[stop][axis]) for u0, u1 in changed[axis]]
                needed = [stage.crop(axis, f, e, length) for f, e in spans]
                common = max(b - a for a, b in needed)
                crops = [stage.crop(axis, f, e, length, size=common) for f, e in spans]
                (firsts, ends), (starts, stops) = zip(*spans, strict=True), zip(*crops, strict=True)
                axes.append(AxisSteps(np.array(firsts), np.array(ends), np.array(starts), np.array(stops)))
                changed[axis] = spans
            pieces.append(Piece(stage, self._session(start, stop), tuple(axes)))
        plan.pieces = pieces
        plan.suffix = self._session(chain[-1], self.output)

    def _session(self, start: str, stop: str):
        from convlens.models.onnx import runtime_session

        if (start, stop) not in self._sessions:
            piece = subgraph(self.graph.proto, start, [stop], self.elem_types)
            self._sessions[start, stop] = runtime_session(piece.SerializeToString(), threads=1)
        return self._sessions[start, stop]


def _key(size: tuple[int, int], window: int, rows: np.ndarray, cols: np.ndarray) -> tuple:
    return (tuple(size), window, tuple(rows.tolist()), tuple(cols.tolist()))


def _pieces(image: str, cuts: list[str], output: str) -> list[tuple[str, str]]:
    """The (start, stop) tensors of the pieces of a graph cut at ``cuts``, the last ending at ``output``."""
    chain = [image, *cuts, output]
    return list(zip(chain, chain[1:], strict=False))


def _windows(starts: np.ndarray, window: int, length: int) -> list[tuple[int, int]]:
    return [(int(start), min(int(start) + window, length)) for start in starts]


def _after(graph: SpatialGraph, cut: str, work: dict[str, float]) -> float:
    """Multiply-adds of the local part after ``cut`` (the rest of the graph is small and run whole anyway)."""
    before = graph.ancestors(cut)
    return float(sum(value for name, value in work.items() if name not in before))


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GRAPHS_LOCK = threading.Lock()


def incremental_graph(model) -> IncrementalGraph:
    """The split graph of an :class:`~convlens.models.onnx.OnnxModel`, built once per model."""
    with _GRAPHS_LOCK:
        graph = _GRAPHS.get(model)
        if graph is None:
            graph = _GRAPHS[model] = IncrementalGraph(model)
        return graph


Box = tuple[int, int, int, int]
"""A rectangle of a tensor's grid: top, bottom, left, right (bottom and right excluded)."""


class IncrementalOcclusion:
    """Logits of occluded copies of one image, recomputing only what changed (see the module docstring)."""

    name = "incremental"

    def __init__(
        self, plan: Plan, image: np.ndarray, fill: np.ndarray, window: int, stride: int, workers: int = 1
    ) -> None:
        self.plan, self.image, self.fill = plan, image, fill
        self.window, self.stride, self.workers = window, stride, workers
        cuts = ", ".join(plan.cuts)
        self.reason = f"cut at {cuts}; predicted work {plan.predicted_work:.2f} of the full pass's"
        self.cache = []
        value = image[None]
        for piece in plan.pieces:
            value = piece.session.run(None, {piece.stage.input: value})[0]
            self.cache.append(value[0])
        self.base = plan.suffix.run(None, {plan.pieces[-1].stage.output: value})[0][0]
        self._suffix_inputs: dict[int, np.ndarray] = {}

    def logits(self, starts: np.ndarray, worker: int = 0) -> np.ndarray:
        """Logits (NxK) of the image with the window at each of ``starts`` (Nx2 pixel coordinates) filled.

        ``worker`` names the calling thread's buffers: threads with different ``worker`` may call at once.
        """
        rows, cols = starts[:, 0] // self.stride, starts[:, 1] // self.stride
        # Per position, what differs from the cached tensor: its new values over a box of the grid.
        changes = [self._window(int(y), int(x)) for y, x in starts]
        for index, piece in enumerate(self.plan.pieces):
            source = self.image if index == 0 else self.cache[index - 1]
            changes = _run_piece(piece, source, rows, cols, changes)
        return self._suffix(changes, worker)

    def _window(self, y: int, x: int) -> tuple[np.ndarray, Box]:
        box = (y, min(y + self.window, self.image.shape[1]), x, min(x + self.window, self.image.shape[2]))
        if self.fill.shape[1] > 1:
            return self.fill[:, box[0] : box[1], box[2] : box[3]], box
        return np.broadcast_to(self.fill, (self.fill.shape[0], box[1] - box[0], box[3] - box[2])), box

    def _suffix(self, changes: list[tuple[np.ndarray, Box]], worker: int) -> np.ndarray:
        cache = self.cache[-1]
        buffer = self._suffix_inputs.get(worker)
        if buffer is None or buffer.shape[0] < len(changes):
            buffer = self._suffix_inputs[worker] = np.empty((len(changes), *cache.shape), cache.dtype)
            buffer[:] = cache
        batch = buffer[: len(changes)]
        for copy, (values, (top, bottom, left, right)) in zip(batch, changes, strict=True):
            copy[:, top:bottom, left:right] = values
        try:
            return self.plan.suffix.run(None, {self.plan.pieces[-1].stage.output: batch})[0]
        finally:
            for copy, (_, (top, bottom, left, right)) in zip(batch, changes, strict=True):
                copy[:, top:bottom, left:right] = cache[:, top:bottom, left:right]


def _run_piece(
    piece: Piece,
    source: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    changes: list[tuple[np.ndarray, Box]],
) -> list[tuple[np.ndarray, Box]]:
    """Run ``piece`` on each position's crop of ``source`` with its change pasted in; the changed outputs."""
    steps_y, steps_x = piece.axes
    crops = [
        (steps_y.start[r], steps_y.stop[r], steps_x.start[c], steps_x.stop[c])
        for r, c in zip(rows, cols, strict=True)
    ]
    changed = [
        (steps_y.first[r], steps_y.end[r], steps_x.first[c], steps_x.end[c])
        for r, c in zip(rows, cols, strict=True)
    ]
    stride_y, stride_x = piece.stage.reach[0].stride, piece.stage.reach[1].stride
    shapes: dict[tuple[int, int], list[int]] = {}
    for position, (top, bottom, left, right) in enumerate(crops):
        shapes.setdefault((bottom - top, right - left), []).append(position)
    results: list = [None] * len(crops)
    for shape, members in shapes.items():
        batch = np.empty((len(members), source.shape[0], *shape), source.dtype)
        for crop, position in zip(batch, members, strict=True):
            top, bottom, left, right = crops[position]
            crop[...] = source[:, top:bottom, left:right]
            _overlay(crop, crops[position], *changes[position])
        output = piece.session.run(None, {piece.stage.input: batch})[0]
        for values, position in zip(output, members, strict=True):
            top, bottom, left, right = changed[position]
            oy, ox = crops[position][0] // stride_y, crops[position][2] // stride_x
            results[position] = (values[:, top - oy : bottom - oy, left - ox : right - ox], changed[position])
    return results


def _overlay(target: np.ndarray, target_box: Box, values: np.ndarray, box: Box) -> None:
    """Copy ``values`` (covering ``box``) into ``target`` (covering ``target_box``) where they overlap."""
    top, bottom = max(target_box[0], box[0]), min(target_box[1], box[1])
    left, right = max(target_box[2], box[2]), min(target_box[3], box[3])
    if bottom > top and right > left:
        target[
            :, top - target_box[0] : bottom - target_box[0], left - target_box[2] : right - target_box[2]
        ] = values[:, top - box[0] : bottom - box[0], left - box[2] : right - box[2]]
