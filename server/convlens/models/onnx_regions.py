"""Where a change to part of an image reaches in an ONNX graph, and the graph cut into pieces that run alone.

Most of a CNN's early work is local: a convolution's output at one position reads a small window of its input.
For such a run of operators (convolutions, pooling, pointwise and per-channel ops, sums of branches) this
module works out, per spatial axis, each tensor's *reach*: position ``j`` depends on input positions
``j * stride + lo`` to ``j * stride + hi``. From the reach follow which positions of a tensor change when an
input region changes, and which crop of the input recomputes them exactly, zero padding included: a
convolution run on a crop pads the crop's edges with zeros, so outputs near an edge of the crop that is not an
edge of the image come out wrong and are discarded (:meth:`Stage.exact`). This is what incremental inference
needs (Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based
Deep CNN Explanations", SIGMOD 2019).

A *cut* is a tensor that separates the graph: everything before it needs only the image, everything after
it needs only the cut (:attr:`SpatialGraph.cuts`). :func:`subgraph` writes the piece between two cuts (or
from the last cut to the logits) as an ONNX model of its own, with free batch and spatial dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POINTWISE = frozenset(
    {
        "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Selu", "Celu",
        "Softplus", "Softsign", "Identity", "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf", "Gelu", "Mish",
        "BatchNormalization", "PRelu", "Dropout",
    }
)  # fmt: skip
"""Operators whose output at a position depends on their first input at that position only (the other inputs
must be constants that do not vary over space)."""
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"})
"""Operators combining tensors position by position (constants allowed if they do not vary over space)."""
WINDOWED = frozenset({"Conv", "MaxPool", "AveragePool"})


@dataclass(frozen=True)
class Kernel:
    """One spatial axis of a windowed operator."""

    size: int = 1
    stride: int = 1
    pad_begin: int = 0
    pad_end: int = 0
    dilation: int = 1

    def extent(self, length: int) -> int:
        """Output length for an input of ``length`` positions."""
        return (
            length + self.pad_begin + self.pad_end - self.dilation * (self.size - 1) - 1
        ) // self.stride + 1


@dataclass(frozen=True)
class Reach:
    """Along one axis, position ``j`` of a tensor reads input positions ``j*stride + lo`` … ``+ hi``."""

    stride: int = 1
    lo: int = 0
    hi: int = 0

    def through(self, kernel: Kernel) -> Reach:
        """The reach of ``kernel``'s output, ``self`` being its input's."""
        return Reach(
            self.stride * kernel.stride,
            self.lo - kernel.pad_begin * self.stride,
            self.hi + (kernel.dilation * (kernel.size - 1) - kernel.pad_begin) * self.stride,
        )

    def hull(self, other: Reach) -> Reach:
        """The reach of a sum of two tensors on the same grid."""
        if self.stride != other.stride:
            raise ValueError("tensors on different grids")
        return Reach(self.stride, min(self.lo, other.lo), max(self.hi, other.hi))

    def changed(self, start: int, stop: int, extent: int) -> tuple[int, int]:
        """The output positions ``[first, end)`` (of ``extent``) that read inputs ``[start, stop)``."""
        first = max(0, -((self.hi - start) // self.stride))
        end = min(extent, (stop - 1 - self.lo) // self.stride + 1)
        return first, max(first, end)


@dataclass(frozen=True)
class LocalNode:
    """A node of a local run: its output, its tensor inputs and, if windowed, its kernel per axis."""

    output: str
    inputs: tuple[str, ...]
    kernels: tuple[Kernel, Kernel] | None
    op: str = ""
    macs: int = 0
    """Multiply-adds per output position (a convolution's weight count; 0 for other operators)."""


class NotLocal(ValueError):
    """The operator is not a local function of its input's positions (or convlens cannot tell)."""


def _attributes(node) -> dict:
    import onnx.helper

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _kernels(node, weight_shape: Sequence[int] | None) -> tuple[Kernel, Kernel]:
    attributes = _attributes(node)
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NotLocal(f"{node.op_type} with auto_pad={auto_pad} pads by the input's size")
    if attributes.get("ceil_mode", 0):
        raise NotLocal(f"{node.op_type} with ceil_mode=1")
    if node.op_type != "Conv" and len([o for o in node.output if o]) > 1:
        raise NotLocal(f"{node.op_type} with indices")
    sizes = attributes.get("kernel_shape") or (list(weight_shape[2:]) if weight_shape is not None else None)
    if sizes is None or len(sizes) != 2:
        raise NotLocal(f"{node.op_type} is not 2-D")
    strides = attributes.get("strides") or [1, 1]
    dilations = attributes.get("dilations") or [1, 1]
    pads = attributes.get("pads") or [0, 0, 0, 0]
    if auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    if min(pads) < 0:
        raise NotLocal(f"{node.op_type} with negative padding crops its input")
    return tuple(
        Kernel(
            int(sizes[axis]), int(strides[axis]), int(pads[axis]), int(pads[axis + 2]), int(dilations[axis])
        )
        for axis in (0, 1)
    )  # type: ignore[return-value]


class SpatialGraph:
    """The local part of an ONNX image model: each local tensor's reach from the image, the cut tensors."""

    def __init__(self, proto, input_name: str) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.input_name = input_name
        graph = proto.graph
        shapes = {init.name: tuple(init.dims) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        shapes[node.output[0]] = tuple(numpy_helper.to_array(attribute.t).shape)
        self.dependent = dependent = {input_name}
        self.local: dict[str, LocalNode] = {}
        self.reach: dict[str, tuple[Reach, Reach]] = {input_name: (Reach(), Reach())}
        self.why_not: dict[str, str] = {}
        """Output tensor → why the node making it is not local (the first ones tell where locality ends)."""
        self._producer: dict[str, int] = {}
        self._consumers: dict[str, list[int]] = {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                self._producer[name] = index
            for name in node.input:
                self._consumers.setdefault(name, []).append(index)
            if not any(name in dependent for name in node.input):
                continue
            dependent.update(o for o in node.output if o)
            try:
                local = self._local_node(node, shapes)
                reach = _reach_of(local, self.reach)
            except NotLocal as reason:
                for name in node.output:
                    self.why_not[name] = str(reason)
                continue
            self.local[local.output] = local
            self.reach[local.output] = reach
        self.graph_outputs = {output.name for output in graph.output}
        self._ancestors: dict[str, frozenset[str]] = {}
        self.cuts = [name for name in self.local if self._is_cut(name)]
        """Local tensors that separate the graph, in graph order."""

    def _local_node(self, node, shapes: dict[str, tuple]) -> LocalNode:
        outputs = [name for name in node.output if name]
        if node.domain not in ("", "ai.onnx") or not outputs:
            raise NotLocal(f"{node.domain}::{node.op_type} is not a standard operator")
        tensors = tuple(name for name in node.input if name in self.reach)
        others = [name for name in node.input if name and name not in self.reach]
        if any(name in self.dependent for name in others) or not tensors:
            raise NotLocal(f"{node.op_type} reads a tensor that is not local")
        op = node.op_type
        if op in WINDOWED:
            if len(tensors) != 1 or node.input[0] != tensors[0] or (op == "Conv" and len(outputs) != 1):
                raise NotLocal(f"{op} with more than one image-dependent input")
            weight = shapes.get(node.input[1]) if op == "Conv" and len(node.input) > 1 else None
            if op == "Conv" and weight is None:
                raise NotLocal("Conv whose weight is not a constant")
            macs = math.prod(weight) if weight is not None else 0
            return LocalNode(outputs[0], tensors, _kernels(node, weight), op, macs)
        if len(outputs) != 1:
            raise NotLocal(f"{op} with {len(outputs)} outputs")
        if op in POINTWISE:
            if len(tensors) != 1 or node.input[0] != tensors[0]:
                raise NotLocal(f"{op} with an image-dependent parameter")
            if op == "PRelu" and not _flat_over_space(shapes.get(node.input[1])):
                raise NotLocal("PRelu whose slope varies over space")
            return LocalNode(outputs[0], tensors, None, op)
        if op in ELEMENTWISE:
            if not all(_flat_over_space(shapes.get(name)) for name in others):
                raise NotLocal(f"{op} with a constant that varies over space")
            return LocalNode(outputs[0], tensors, None, op)
        if op == "Concat" and _attributes(node).get("axis") in (1, -3) and not others:
            return LocalNode(outputs[0], tensors, None, op)
        raise NotLocal(f"{op} is not a local operator")

    def extents(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Each local tensor's (height, width) for an input of ``height`` x ``width``."""
        sizes = {self.input_name: (height, width)}
        for name, node in self.local.items():
            size = sizes[node.inputs[0]]
            if node.kernels is not None:
                size = (node.kernels[0].extent(size[0]), node.kernels[1].extent(size[1]))
            sizes[name] = size
        return sizes

    def consumers(self, tensor: str) -> list[str]:
        """The operator types that read ``tensor``."""
        return [self.proto.graph.node[index].op_type for index in self._consumers.get(tensor, [])]

    def ancestors(self, tensor: str) -> frozenset[str]:
        """The local tensors ``tensor`` is computed from (itself included, the image input left out)."""
        if tensor in self._ancestors:
            return self._ancestors[tensor]
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in seen or name == self.input_name:
                continue
            seen.add(name)
            stack.extend(self.local[name].inputs)
        self._ancestors[tensor] = frozenset(seen)
        return self._ancestors[tensor]

    def _is_cut(self, tensor: str) -> bool:
        if tensor in self.graph_outputs:
            return False
        inside = self.ancestors(tensor)
        inside_nodes = {self._producer[name] for name in inside}
        for name in inside | {self.input_name}:
            if name == tensor:
                continue
            if name in self.graph_outputs or any(
                c not in inside_nodes for c in self._consumers.get(name, [])
            ):
                return False
        return True

    def stage(self, start: str, stop: str) -> Stage:
        """The local run from cut (or image input) ``start`` to cut ``stop``, reach relative to ``start``."""
        inside = self.ancestors(stop) - (self.ancestors(start) if start != self.input_name else set())
        nodes = [node for name, node in self.local.items() if name in inside]
        reach: dict[str, tuple[Reach, Reach]] = {start: (Reach(), Reach())}
        for node in nodes:
            reach[node.output] = _reach_of(node, reach)
        return Stage(start, stop, nodes, reach[stop])


@dataclass
class Stage:
    """A local run from tensor ``input`` to tensor ``output``; ``reach``: the output's, from the input."""

    input: str
    output: str
    nodes: list[LocalNode]
    reach: tuple[Reach, Reach]

    def extent(self, axis: int, length: int) -> int:
        """The output's length along ``axis`` for an input of ``length``."""
        return self._propagate(axis, 0, length, length)[2]

    def exact(self, axis: int, start: int, stop: int, length: int) -> tuple[int, int, int]:
        """For the crop ``[start, stop)`` of an input axis of ``length``: ``(first, end, extent)``.

        The crop's output has ``extent`` positions; position ``i`` with ``first <= i < end`` equals the
        whole input's output at ``i + start // stride``, the others saw the crop's zero padding where the
        whole input has values. ``start`` must be a multiple of the stage's stride, so that the grids line up.
        """
        return self._propagate(axis, start, stop, length)

    def _propagate(self, axis: int, start: int, stop: int, length: int) -> tuple[int, int, int]:
        if start % self.reach[axis].stride:
            raise ValueError(f"crop start {start} is not a multiple of the stride {self.reach[axis].stride}")
        first_edge, last_edge = start == 0, stop == length
        # (first exact, end of exact, extent) per tensor, in crop coordinates; an image edge is exact padding.
        spans = {self.input: (0, stop - start, stop - start)}
        for node in self.nodes:
            inputs = [spans[name] for name in node.inputs]
            if node.kernels is None:
                extents = {extent for _, _, extent in inputs}
                if len(extents) != 1:
                    raise ValueError(f"{node.output}: inputs of different sizes")
                spans[node.output] = (
                    max(first for first, _, _ in inputs),
                    min(end for _, end, _ in inputs),
                    extents.pop(),
                )
                continue
            kernel = node.kernels[axis]
            first, end, extent = inputs[0]
            out_extent = kernel.extent(extent)
            if out_extent < 1:
                raise ValueError(f"{node.output}: a crop of {stop - start} is too small for its kernels")
            out_first = 0 if first_edge else max(0, -(-(first + kernel.pad_begin) // kernel.stride))
            reach_end = end - 1 + kernel.pad_begin - kernel.dilation * (kernel.size - 1)
            out_end = out_extent if last_edge else min(out_extent, reach_end // kernel.stride + 1)
            spans[node.output] = (out_first, max(out_first, out_end), out_extent)
        return spans[self.output]

    def reach_crop(self, axis: int, first, end, length: int):
        """The crop ``(start, stop)`` holding all that outputs ``[first, end)`` read, starting on the stride.

        Works on numbers or numpy arrays. Usually this is the exact crop of :meth:`crop`; that one checks.
        """
        reach = self.reach[axis]
        start = np.maximum(0, (first + reach.lo // reach.stride) * reach.stride)
        stop = np.minimum(length, (end - 1) * reach.stride + reach.hi + 1)
        return start, stop

    def crop(self, axis: int, first: int, end: int, length: int, size: int | None = None) -> tuple[int, int]:
        """The input crop ``[start, stop)`` that gives output positions ``[first, end)`` exactly.

        With ``size``, the crop is ``size`` long where the input allows (a longer crop is exact wherever a
        shorter one is, so crops of one size can share a batch); ``start`` is always a multiple of the stride.
        """
        reach = self.reach[axis]
        start, stop = (int(value) for value in self.reach_crop(axis, first, end, length))
        if size is not None and size > stop - start:
            stop = min(length, start + size)
            if stop - start < size:
                start = max(0, -(-(length - size) // reach.stride) * reach.stride)
        while True:
            exact_first, exact_end, _ = self.exact(axis, start, stop, length)
            offset = start // reach.stride
            if exact_first + offset <= first and exact_end + offset >= end:
                return start, stop
            if exact_first + offset > first and start > 0:
                start -= reach.stride
            elif stop < length:
                stop += 1
            else:
                raise ValueError(f"no crop of the input gives positions {first}..{end} exactly")


def _reach_of(node: LocalNode, reach: dict[str, tuple[Reach, Reach]]) -> tuple[Reach, Reach]:
    """The reach of ``node``'s output from the reaches of its inputs."""
    reaches = [reach[name] for name in node.inputs]
    if node.kernels is not None:
        y, x = reaches[0]
        return y.through(node.kernels[0]), x.through(node.kernels[1])
    hull = reaches[0]
    for other in reaches[1:]:
        try:
            hull = (hull[0].hull(other[0]), hull[1].hull(other[1]))
        except ValueError:
            raise NotLocal("a sum of tensors on different grids") from None
    return hull


def _flat_over_space(shape: Sequence[int] | None) -> bool:
    """Whether a constant of ``shape`` broadcasts over NxCxHxW without varying along H or W (or N)."""
    if shape is None:
        return False
    shape = tuple(shape)
    if len(shape) > 4:
        return False
    padded = (1,) * (4 - len(shape)) + shape
    return padded[0] == 1 and padded[2] == 1 and padded[3] == 1


def subgraph(proto, start: str, stops: Sequence[str], elem_types: dict[str, int]):
    """The part of ``proto`` computing ``stops`` from ``start`` as a model of its own, every dimension free.

    ``elem_types`` gives the element type of ``start`` and ``stops`` (from shape inference). Graph outputs
    keep their declared shapes; other tensors become rank-4 with named free dimensions.
    """
    import onnx
    import onnx.helper

    graph = proto.graph
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    initialisers = {init.name: init for init in graph.initializer}
    needed_nodes: set[int] = set()
    needed_inits: set[str] = set()
    stack = list(stops)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name == start or not name:
            continue
        seen.add(name)
        if name in initialisers:
            needed_inits.add(name)
        elif name in producer:
            index = producer[name]
            if index not in needed_nodes:
                needed_nodes.add(index)
                stack.extend(graph.node[index].input)
        else:
            raise ValueError(f"{name!r} is not computed from {start!r} alone")
    outputs = {value.name: value for value in graph.output}

    def value_info(name: str, prefix: str):
        if name in outputs:
            return outputs[name]
        dims = [f"{prefix}_batch", f"{prefix}_channels", f"{prefix}_height", f"{prefix}_width"]
        return onnx.helper.make_tensor_value_info(name, elem_types.get(name, onnx.TensorProto.FLOAT), dims)

    piece = onnx.helper.make_graph(
        [graph.node[index] for index in sorted(needed_nodes)],
        f"{graph.name}:{start}->{','.join(stops)}",
        [value_info(start, "in")],
        [value_info(name, f"out{index}") for index, name in enumerate(stops)],
        [init for init in graph.initializer if init.name in needed_inits],
    )
    model = onnx.helper.make_model(
        piece, opset_imports=list(proto.opset_import), functions=list(proto.functions)
    )
    model.ir_version = proto.ir_version
    return model
