"""Backward rules through rectifiers: the plain gradient, the deconvnet rule and guided backpropagation.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014 (arXiv:1311.2901): the
deconvnet passes the reconstruction backwards through each ReLU rectified, ``max(g, 0)``, whatever the forward
input was. Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All Convolutional Net",
ICLR workshop 2015 (arXiv:1412.6806), section 3.4: guided backpropagation masks by both, ``max(g, 0)`` where
the forward input was positive, 0 elsewhere.

A rectifier here is ``min(max(x, 0), upper)``: ReLU (``upper`` infinite), ReLU6 (6), and a hardtanh or clip
whose lower bound is 0. The rules act on the rectification at 0; the cap at ``upper`` keeps its plain gradient,
so ReLU6 behaves as ReLU followed by ``min(·, 6)``, which is what Captum's ``GuidedBackprop`` and
``Deconvolution`` compute on a model whose ReLU6 is written that way:

- ``gradient``:  ``g · [0 < x < upper]`` (autograd's own)
- ``deconvnet``: ``max(g, 0) · [x < upper]``
- ``guided``:    ``max(g, 0) · [0 < x < upper]``

Each backend finds its rectifiers in its own representation (an fx graph, a TorchScript graph, an eager
module's calls) and replaces them with one operator, ``convlens::rectify``, which is registered with the
dispatcher so that a TorchScript graph can call it too. In-place forms (``relu_``) become out-of-place. A
clip with another lower bound is not a rectifier and keeps its plain gradient.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import Tensor, fx
from torch.overrides import TorchFunctionMode

from ..errors import BadInput

RULES = ("gradient", "deconvnet", "guided")
"""The backward rules through rectifiers, in the order of :data:`rectify`'s ``rule`` argument."""

_calls = threading.local()


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise BadInput("relu_rule", f"must be one of {', '.join(RULES)}, got {rule!r}")


@torch.library.custom_op("convlens::rectify", mutates_args=())
def rectify(x: Tensor, upper: float, rule: int) -> Tensor:
    """``min(max(x, 0), upper)`` whose backward follows ``RULES[rule]``."""
    _calls.count = getattr(_calls, "count", 0) + 1
    return x.clamp(min=0.0) if math.isinf(upper) else x.clamp(min=0.0, max=upper)


@rectify.register_fake
def _(x: Tensor, upper: float, rule: int) -> Tensor:
    return torch.empty_like(x)


def _save_input(ctx: Any, inputs: tuple, output: Tensor) -> None:  # noqa: ARG001 - the signature torch calls
    x, upper, rule = inputs
    ctx.save_for_backward(x)
    ctx.upper, ctx.rule = upper, rule


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
    (x,) = ctx.saved_tensors
    below_cap = x < ctx.upper
    rule = RULES[ctx.rule]
    if rule == "gradient":
        result = grad * ((x > 0) & below_cap)
    elif rule == "deconvnet":
        result = grad.clamp(min=0.0) * below_cap
    else:
        result = grad.clamp(min=0.0) * ((x > 0) & below_cap)
    return result, None, None


rectify.register_autograd(_backward, setup_context=_save_input)


@contextmanager
def counting_rectifiers() -> Iterator[Callable[[], int]]:
    """Count the ``rectify`` calls this thread makes inside the block; the yielded function reads the count."""
    start = getattr(_calls, "count", 0)
    yield lambda: getattr(_calls, "count", 0) - start


# -- which calls are rectifiers ---------------------------------------------------------------------------
_INFINITE = math.inf
_Signature = tuple[tuple[str, ...], Mapping[str, Any], Callable[[Mapping[str, Any]], float | None]]


def _relu(_: Mapping[str, Any]) -> float:
    return _INFINITE


def _relu6(_: Mapping[str, Any]) -> float:
    return 6.0


def _bounded(lower: str, upper: str) -> Callable[[Mapping[str, Any]], float | None]:
    """The cap of a clip whose ``lower`` argument is the number 0 (``None`` if it is not a rectifier)."""

    def cap(arguments: Mapping[str, Any]) -> float | None:
        low, high = arguments.get(lower), arguments.get(upper)
        if not _is_number(low) or float(low) != 0.0:
            return None
        if high is None:
            return _INFINITE
        return float(high) if _is_number(high) and float(high) > 0 else None

    return cap


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_RELU: _Signature = (("input",), {}, _relu)
_RELU6: _Signature = (("input",), {}, _relu6)
_HARDTANH: _Signature = (
    ("input", "min_val", "max_val"),
    {"min_val": -1.0, "max_val": 1.0},
    _bounded("min_val", "max_val"),
)
_CLAMP: _Signature = (("input", "min", "max"), {"min": None, "max": None}, _bounded("min", "max"))
_CLAMP_MIN: _Signature = (("input", "min"), {}, _bounded("min", "max"))

aten = torch.ops.aten
_FUNCTIONS: dict[Any, _Signature] = {
    torch.relu: _RELU,
    torch.relu_: _RELU,
    F.relu: _RELU,
    F.relu_: _RELU,
    Tensor.relu: _RELU,
    Tensor.relu_: _RELU,
    aten.relu.default: _RELU,
    aten.relu_.default: _RELU,
    F.relu6: _RELU6,
    F.hardtanh: _HARDTANH,
    F.hardtanh_: _HARDTANH,
    torch._C._nn.hardtanh: _HARDTANH,
    torch._C._nn.hardtanh_: _HARDTANH,
    aten.hardtanh.default: _HARDTANH,
    aten.hardtanh_.default: _HARDTANH,
    torch.clamp: _CLAMP,
    torch.clip: _CLAMP,
    Tensor.clamp: _CLAMP,
    Tensor.clamp_: _CLAMP,
    Tensor.clip: _CLAMP,
    aten.clamp.default: _CLAMP,
    aten.clamp_.default: _CLAMP,
    torch.clamp_min: _CLAMP_MIN,
    Tensor.clamp_min: _CLAMP_MIN,
    aten.clamp_min.default: _CLAMP_MIN,
}
"""Callables that may be rectifiers, as an eager module or an fx graph calls them: how to read their bounds."""

_METHODS = {"relu": _RELU, "relu_": _RELU, "clamp": _CLAMP, "clamp_": _CLAMP, "clamp_min": _CLAMP_MIN}
"""fx ``call_method`` names that may be rectifiers."""


def rectifier_cap(signature: _Signature, args: Sequence[Any], kwargs: Mapping[str, Any]) -> float | None:
    """The cap of a call matching ``signature`` if it is a rectifier, else ``None``."""
    names, defaults, cap = signature
    arguments = dict(defaults)
    arguments.update(zip(names, args, strict=False))
    arguments.update(kwargs)
    return cap(arguments)


def module_cap(module: torch.nn.Module) -> float | None:
    """The cap of a rectifying ``nn.Module`` (ReLU, ReLU6, Hardtanh or a clip starting at 0), else ``None``."""
    if isinstance(module, torch.nn.ReLU):
        return _INFINITE
    if isinstance(module, torch.nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return _bounded("min", "max")({"min": module.min_val, "max": module.max_val})
    low, high = getattr(module, "min_val", None), getattr(module, "max_val", None)
    if type(module).__name__ == "OnnxClip" and _is_number(low):  # onnx2torch's Clip with constant bounds
        return _bounded("min", "max")({"min": low, "max": high})
    return None


# -- fx graphs --------------------------------------------------------------------------------------------
def rectify_fx(graph_module: fx.GraphModule, rule: str) -> int:
    """Replace every rectifier of ``graph_module``'s graph (in place) by ``rectify``; how many were replaced.

    Call :meth:`fx.GraphModule.recompile` afterwards.
    """
    index = RULES.index(rule)
    graph = graph_module.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    replaced = 0
    for node in list(graph.nodes):
        cap = _fx_cap(graph_module, node)
        if cap is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        with graph.inserting_before(node):
            new = graph.call_function(torch.ops.convlens.rectify.default, (source, cap, index))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        if _writes_input(node, graph_module):
            # The in-place form changed its input for every later reader; they read the new value instead.
            source.replace_all_uses_with(
                new, delete_user_cb=lambda user, after=order[node]: order.get(user, -1) > after
            )
        graph.erase_node(node)
        replaced += 1
    return replaced


def _fx_cap(graph_module: fx.GraphModule, node: fx.Node) -> float | None:
    if node.op == "call_module":
        return module_cap(graph_module.get_submodule(str(node.target)))
    if node.op == "call_function" and node.target in _FUNCTIONS:
        return rectifier_cap(_FUNCTIONS[node.target], node.args, node.kwargs)
    if node.op == "call_method" and node.target in _METHODS:
        return rectifier_cap(_METHODS[node.target], node.args, node.kwargs)
    return None


def _writes_input(node: fx.Node, graph_module: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return bool(getattr(graph_module.get_submodule(str(node.target)), "inplace", False))
    name = getattr(node.target, "__name__", str(node.target))
    return name.endswith("_") or bool(node.kwargs.get("inplace", False))


# -- eager modules ---------------------------------------------------------------------------------------
class RectifierMode(TorchFunctionMode):
    """While active in this thread, every rectifier an eager module calls runs as ``rectify`` under ``rule``.

    Functional and in-place calls are caught as well as ``nn.ReLU`` modules, since those call them. An in-place
    call returns a new tensor and leaves its input as it was: code that ignores the result of ``relu_`` is
    not rectified.
    """

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = RULES.index(rule)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        signature = _FUNCTIONS.get(func)
        if signature is not None and args and isinstance(args[0], Tensor):
            cap = rectifier_cap(signature, args, {k: v for k, v in kwargs.items() if k != "inplace"})
            if cap is not None:
                return torch.ops.convlens.rectify(args[0], cap, self.rule)
        return func(*args, **kwargs)


# -- TorchScript graphs ----------------------------------------------------------------------------------
_SCRIPT_KINDS = {
    "aten::relu": _RELU,
    "aten::relu_": _RELU,
    "aten::relu6": _RELU6,
    "aten::relu6_": _RELU6,
    "aten::hardtanh": _HARDTANH,
    "aten::hardtanh_": _HARDTANH,
    "aten::clamp": _CLAMP,
    "aten::clamp_": _CLAMP,
    "aten::clamp_min": _CLAMP_MIN,
    "aten::clamp_min_": _CLAMP_MIN,
}


def rectify_script(graph: torch._C.Graph, rule: str) -> int:
    """Replace every rectifier of a TorchScript ``graph`` (in place) by ``convlens::rectify``; how many.

    A bound that is not a constant of the graph makes the call no rectifier.
    """
    index = RULES.index(rule)
    replaced = 0
    for kind, signature in _SCRIPT_KINDS.items():
        for node in graph.findAllNodes(kind, True):
            inputs = list(node.inputs())
            constants = [_constant(value) for value in inputs[1:]]
            if any(value is _NOT_CONSTANT for value in constants):
                continue
            cap = rectifier_cap(signature, [None, *constants], {})
            if cap is None:
                continue
            with graph.insert_point_guard(node):
                new = graph.create(
                    "convlens::rectify", [inputs[0], graph.insertConstant(cap), graph.insertConstant(index)]
                )
                graph.insertNode(new)
            new.output().setType(node.output().type())
            node.output().replaceAllUsesWith(new.output())
            if kind.endswith("_"):
                inputs[0].replaceAllUsesAfterNodeWith(new, new.output())
            node.destroy()
            replaced += 1
    return replaced


_NOT_CONSTANT = object()


def _constant(value: torch._C.Value) -> Any:
    node = value.node()
    if node.kind() != "prim::Constant":
        return _NOT_CONSTANT
    return value.toIValue()
