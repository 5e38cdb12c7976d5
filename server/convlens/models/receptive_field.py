"""The exact receptive field of a hidden unit on the input picture, read off the model's computation graph.

Araujo, Norris & Sim (2019), "Computing Receptive Fields of Convolutional Neural Networks", Distill: along each
spatial axis a layer's field is three numbers, its ``size`` r, its ``jump`` (the stride, in input pixels,
between neighbouring units) j and its ``start`` u (the input coordinate where unit 0's field begins; their
effective padding is -u). A convolution or pooling of kernel k, stride s, padding p and dilation d maps
(r, j, u) to (r + d(k-1)j, js, u - pj); where paths join (ResNet's shortcuts, an add or a concatenation along
channels) the field is their union, which the paper's section on multi-path networks derives.

The graph walked is the one every :class:`~convlens.models.base.Model` already exposes, whatever its file
format: the autograd graph of one forward of a blank picture at ``input_hw``. Each autograd node records the
operator's own kernel, stride, padding and dilation (``ConvolutionBackward0._saved_stride`` and so on), so one
walk serves ONNX (through onnx2torch), TorchScript, ``torch.export`` and eager modules alike, and padding applied
as a separate operator (TF's "same" padding, exported as a ``Pad``) is counted where it happens.

Beyond the paper: global pooling (a mean over the spatial axes, an adaptive pooling to one cell) leaves a value
with no spatial extent, and a layer after it has no receptive field (:class:`BadInput` naming the layer); a unit
that also reads such a value through a broadcast (squeeze-and-excitation) sees the whole picture, which
:attr:`LayerField.global_context` says while size, jump and start describe its local part. Adaptive pooling
whose sizes divide evenly is a plain pooling. An operator the walk does not know (a transposed convolution, a
resize, reflection padding, a reshape, flatten or linear layer applied to a spatial map, as in a channel
shuffle) stops it with a :class:`BadInput` naming the operator, rather than a guess. The field is computed at
one input size; it is the same at any size unless the graph's padding or adaptive pooling depends on the size.
Only differentiable paths are seen: a value the model detaches, or a mask made by a comparison, is not followed.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput
from .base import Model


@dataclass(frozen=True)
class AxisField:
    """The field along one axis: unit i covers input pixels ``start + i*jump`` up to, not including, ``+ size``."""

    size: int
    jump: int
    start: int

    def through(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> AxisField:
        """The field after a convolution or pooling with these settings (Araujo et al., eq. 1-3)."""
        return AxisField(
            self.size + dilation * (kernel - 1) * self.jump,
            self.jump * stride,
            self.start - padding * self.jump,
        )

    def union(self, other: AxisField) -> AxisField | None:
        """The field of a unit that reads both, ``None`` when their jumps differ (no single field)."""
        if other.jump != self.jump:
            return None
        start = min(self.start, other.start)
        return AxisField(max(self.start + self.size, other.start + other.size) - start, self.jump, start)


@dataclass(frozen=True)
class LayerField:
    """A spatial layer's receptive field, per axis (height, width), computed at input size ``input_hw``."""

    layer: str
    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    input_hw: tuple[int, int]
    global_context: bool = False
    """The units also read a global summary of the picture (e.g. squeeze-and-excitation), so strictly they see
    all of it; size, jump and start describe their local part."""

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "size": list(self.size),
            "jump": list(self.jump),
            "start": list(self.start),
            "input_size": list(self.input_hw),
            "global_context": self.global_context,
        }


@dataclass(frozen=True)
class Box:
    """Input pixels ``[top, bottom) x [left, right)`` (slice bounds); ``clipped`` if cut at the picture's edge."""

    top: int
    left: int
    bottom: int
    right: int
    clipped: bool = False


def field_box(field: LayerField, row: int, col: int) -> Box:
    """The whole field of the unit at (``row``, ``col``), reaching past the picture where padding was read."""
    top = field.start[0] + row * field.jump[0]
    left = field.start[1] + col * field.jump[1]
    return Box(top, left, top + field.size[0], left + field.size[1])


def unit_box(field: LayerField, row: int, col: int, input_hw: tuple[int, int] | None = None) -> Box:
    """The field of the unit at (``row``, ``col``) clipped to a picture of ``input_hw`` (default: the field's)."""
    height, width = input_hw or field.input_hw
    whole = field_box(field, row, col)
    box = Box(max(whole.top, 0), max(whole.left, 0), min(whole.bottom, height), min(whole.right, width))
    return Box(box.top, box.left, box.bottom, box.right, clipped=box != whole)


def receptive_field(model: Model, layer: str, input_hw: tuple[int, int] | None = None) -> LayerField:
    """The receptive field of ``layer``'s units, for inputs of ``input_hw`` (default: the model's input size).

    Raises :class:`BadInput` (field ``layer``) for a layer without spatial extent or one the walk cannot follow.
    Kept per model, so a view can ask each time it runs.
    """
    info = model.layer(layer)
    if len(info.shape) != 3:
        raise BadInput("layer", f"layer {layer!r} has no spatial extent (its output is {list(info.shape)})")
    key = (layer, tuple(input_hw or model.input_size))
    with _CACHE_LOCK:
        found = _CACHE.setdefault(model, {}).get(key)
    if found is None:
        found = receptive_fields(model, [layer], key[1])[layer]
        with _CACHE_LOCK:
            _CACHE.setdefault(model, {})[key] = found
    if isinstance(found, str):
        raise BadInput("layer", found)
    return found


_CACHE: weakref.WeakKeyDictionary[Model, dict[tuple, LayerField | str]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def receptive_fields(
    model: Model, layers: Iterable[str] | None = None, input_hw: tuple[int, int] | None = None
) -> dict[str, LayerField | str]:
    """Each spatial layer's field (default: all of the model's), or why it has none, from one forward."""
    input_hw = tuple(input_hw or model.input_size)
    names = (
        list(layers) if layers is not None else [info.name for info in model.layers() if len(info.shape) == 3]
    )
    if not names:
        return {}
    with torch.inference_mode(False), torch.enable_grad():
        # A blank picture suffices: what the walk reads (kernel sizes, strides, padding) does not depend on it.
        probe = torch.zeros(1, 3, *input_hw, requires_grad=True)
        activations = model.forward(probe, names, logits=False).activations
        walk = _Walk(probe)
        return {name: _describe(name, walk.field(activations[name].grad_fn), input_hw) for name in names}


# -- the walk ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Local:
    height: AxisField
    width: AxisField
    global_context: bool = False


@dataclass(frozen=True)
class _Unknown:
    reason: str


@dataclass(frozen=True)
class _Global:
    """A value with no spatial layout that depends on the whole picture (after global pooling)."""


_GLOBAL = _Global()

_Field = _Local | _Unknown | _Global | None
"""What a node's output depends on: ``None`` if not on the picture at all."""

_POINTWISE = frozenset(
    "Add Sub Mul Div Neg Relu Hardtanh Threshold Clamp ClampMin ClampMax Sigmoid Tanh Hardsigmoid Hardswish Silu "
    "Gelu Elu LeakyRelu Softplus Mish Prelu Exp Log Sqrt Rsqrt Pow Abs Erf Reciprocal Where Maximum Minimum Lerp "
    "NativeBatchNorm NativeBatchNormLegit NativeBatchNormLegitNoTraining CudnnBatchNorm MiopenBatchNorm "
    "BatchNormWithUpdate BatchNormNoUpdate Clone Alias ToCopy Copy Expand Unsqueeze Squeeze Dropout".split()
)
"""Operators that combine values at the same position (per element or per channel), broadcasting allowed."""

_RESHAPING = frozenset("View UnsafeView ReshapeAlias Permute Transpose T Addmm Mm Bmm Matmul Linear".split())
"""Operators that move or mix elements across axes: fine after global pooling (a classifier head), not followed
on a spatial map (a flatten of a whole map, a channel shuffle)."""

_REDUCING = frozenset("Mean Sum Amax Amin Softmax LogSoftmax Cat".split())
"""Operators whose effect depends on the dimensions they act on (``_saved_dim``)."""

_NAME = re.compile(r"(.*?)Backward\d*$")


class _Walk:
    """Fields of autograd nodes, each computed once, from the picture (``probe``) up."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe = probe
        identity = AxisField(1, 1, 0)
        self.fields: dict[Any, _Field] = {}
        self.identity = _Local(identity, identity)

    def field(self, root: Any) -> _Field:
        # Iterative post-order: deep networks are thousands of nodes deep, past Python's recursion limit.
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if node is None or node in self.fields:
                continue
            inputs = [next_node for next_node, _ in node.next_functions if next_node is not None]
            if ready:
                self.fields[node] = self._through(node, [self.fields[i] for i in inputs])
            else:
                stack.append((node, True))
                stack.extend((i, False) for i in inputs if i not in self.fields)
        return self.fields.get(root) if root is not None else None

    def _through(self, node: Any, inputs: list[_Field]) -> _Field:
        kind = type(node).__name__
        if kind == "AccumulateGrad":
            return self.identity if node.variable is self.probe else None
        match = _NAME.match(kind)
        op = match.group(1) if match else kind
        if op.startswith("Convolution"):
            if node._saved_transposed:
                return _Unknown("a transposed convolution")
            kernel = tuple(node._saved_weight.shape[2:])
            return _spatial(op, inputs, kernel, node._saved_stride, node._saved_padding, node._saved_dilation)
        if op in ("MaxPool2DWithIndices", "MaxPool2D", "AvgPool2D"):
            kernel = node._saved_kernel_size
            stride = node._saved_stride or kernel
            dilation = getattr(node, "_saved_dilation", (1, 1))
            return _spatial(op, inputs, kernel, stride, node._saved_padding, dilation)
        if op in ("ConstantPadNd", "ReplicationPad2D"):
            # [left, right, top, bottom] for the last two axes; edge padding repeats border pixels, inside the box.
            pad = list(node._saved_pad if op == "ConstantPadNd" else node._saved_padding) + [0, 0, 0, 0]
            return _spatial(op, inputs, (1, 1), (1, 1), (pad[2], pad[0]))
        if op == "Slice":
            return _sliced(node, inputs)
        if op in _POINTWISE:
            return _joined(inputs, op)
        if op in ("AdaptiveAvgPool2D", "AdaptiveMaxPool2D"):
            return _adaptive(node, op, inputs)
        if op in _RESHAPING:
            if any(isinstance(field, _Local) for field in inputs):
                return _Unknown(f"a {op} of a spatial map")
            return _flattened(inputs)
        if op in _REDUCING:
            return _reduced(node, op, inputs)
        return _Unknown(f"the operator {op}") if _depends(inputs) else None


def _depends(inputs: list[_Field]) -> bool:
    return any(field is not None for field in inputs)


def _joined(inputs: list[_Field], op: str) -> _Field:
    """The union of the inputs' fields, for an operator that reads them all at the same position."""
    found = [field for field in inputs if field is not None]
    unknown = next((field for field in found if isinstance(field, _Unknown)), None)
    if unknown is not None:
        return unknown
    local = [field for field in found if isinstance(field, _Local)]
    if not local:
        return _GLOBAL if found else None
    joined = local[0]
    for other in local[1:]:
        height, width = joined.height.union(other.height), joined.width.union(other.width)
        if height is None or width is None:
            return _Unknown(f"paths of different strides joined by {op}")
        joined = _Local(height, width, joined.global_context or other.global_context)
    if len(local) < len(found) or any(field.global_context for field in local):
        return _Local(joined.height, joined.width, global_context=True)
    return joined


def _spatial(op: str, inputs: list[_Field], kernel, stride, padding, dilation=(1, 1)) -> _Field:
    """The field after a sliding window over the first input (the others are weights and biases)."""
    source, others = (inputs[0] if inputs else None), inputs[1:]
    if _depends(others):
        return _Unknown(f"{op} with weights computed from the picture")
    if not isinstance(source, _Local):
        return source
    if len(kernel) != 2:
        return _Unknown(f"a {len(kernel)}-D {op}")
    height = source.height.through(kernel[0], stride[0], padding[0], dilation[0])
    width = source.width.through(kernel[1], stride[1], padding[1], dilation[1])
    return _Local(height, width, source.global_context)


def _spatial_axes(dims: Iterable[int], rank: int) -> set[int]:
    """Which of ``dims`` are the height (2) and width (3) axes of an NxCxHxW tensor of ``rank``."""
    return {dim % rank for dim in dims} & {2, 3} if rank == 4 else set()


def _rank(node: Any) -> int:
    sizes = getattr(node, "_saved_self_sym_sizes", None)
    return len(sizes) if sizes is not None else 4


def _reduced(node: Any, op: str, inputs: list[_Field]) -> _Field:
    saved = getattr(node, "_saved_dim", None)
    if saved is None:  # a reduction over every element
        return _flattened(inputs)
    dims = saved if isinstance(saved, Iterable) else (saved,)
    if not _spatial_axes(dims, _rank(node)):
        return _joined(inputs, op)
    return _Unknown("a concatenation along a spatial axis") if op == "Cat" else _flattened(inputs)


def _adaptive(node: Any, op: str, inputs: list[_Field]) -> _Field:
    """Adaptive pooling: global when it pools to one cell, a plain pooling when the sizes divide evenly."""
    source = inputs[0] if inputs else None
    metadata = getattr(
        node, "_input_metadata", ()
    )  # the forward output's shape; absent in some torch versions
    if not isinstance(source, _Local) or not metadata:
        return _flattened(inputs)
    before, after = tuple(node._saved_self.shape[-2:]), tuple(metadata[0].shape[-2:])
    if after == (1, 1):
        return _flattened(inputs)
    if any(size % cells for size, cells in zip(before, after, strict=True)):
        return _Unknown(f"{op} to {list(after)} cells of a {list(before)} map")
    kernel = tuple(size // cells for size, cells in zip(before, after, strict=True))
    return _spatial(op, inputs, kernel, kernel, (0, 0))


def _flattened(inputs: list[_Field]) -> _Field:
    unknown = next((field for field in inputs if isinstance(field, _Unknown)), None)
    return unknown or (_GLOBAL if _depends(inputs) else None)


def _sliced(node: Any, inputs: list[_Field]) -> _Field:
    """A crop (``x[..., a:b:step]``) of a spatial axis starts the field later and spreads its units."""
    source = inputs[0] if inputs else None
    axes = _spatial_axes((node._saved_dim,), _rank(node))
    if not isinstance(source, _Local) or not axes:
        return source
    begin, step = node._saved_start or 0, node._saved_step
    size = node._saved_self_sym_sizes[node._saved_dim]
    if begin < 0:
        begin += size
    axis = source.height if axes == {2} else source.width
    moved = AxisField(axis.size, axis.jump * step, axis.start + begin * axis.jump)
    if axes == {2}:
        return _Local(moved, source.width, source.global_context)
    return _Local(source.height, moved, source.global_context)


def _describe(layer: str, field: _Field, input_hw: tuple[int, ...]) -> LayerField | str:
    if isinstance(field, _Local):
        return LayerField(
            layer,
            (field.height.size, field.width.size),
            (field.height.jump, field.width.jump),
            (field.height.start, field.width.start),
            (input_hw[0], input_hw[1]),
            field.global_context,
        )
    if isinstance(field, _Unknown):
        return f"cannot follow the receptive field of layer {layer!r} through {field.reason}"
    if field == _GLOBAL:
        return f"layer {layer!r} has no spatial extent (it follows a global pooling or a flatten)"
    return f"layer {layer!r} does not depend on the input picture"
