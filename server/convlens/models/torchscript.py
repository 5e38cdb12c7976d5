"""TorchScript files (``torch.jit.save``, traced or scripted): hidden layers read off the module's graph.

Forward hooks do not fire on a loaded ``ScriptModule``, so activations are reached through its graph instead.
The forward graph is copied and every submodule call in it is inlined here, one call at a time, so the value
each call returned is known; the chosen values become extra outputs of the copy, and a function compiled from
it takes the live module as its first argument. Activations are thus tensors of the same autograd graph as the
logits. Before that, plain attributes (``training``, flags such as ``use_res_connect``) are folded to constants,
so the branches they guard disappear and the calls inside them can be tapped too.

Layer names follow the eager model: a layer is the dotted path of the submodule whose output it is
(``layer1.0``, ``_blocks.3``); a submodule called more than once is read at its last call, as a forward hook
that keeps the latest output would be. Layers are ordered by where their call returns, innermost first.

In-place operators (``relu_``, ``add_``) after a tapped value would overwrite it. Where one may write to a
tapped value's memory later, the activation is a copy taken where the call returns, and the rest of the graph
reads a second copy of it, so both the activation and the logits stay correct and the logits remain
differentiable w.r.t. the activation.

Without logits, the copy returns the activations alone: everything after the last tapped call is cut, then
whatever only fed it, in-place operators included where TorchScript's alias analysis shows it safe, so a
layer costs only the network up to it.

Limits: a call inside a loop the graph keeps (not unrolled) or a branch decided by data is not a layer; nor is
a module whose forward returns a tuple. Where a later in-place op reaches a tapped value's memory through some
other name (a view taken before the tap), the activation is a snapshot that the logits do not depend on, so
it has the right values but no gradient from the logits. A file whose graph cannot be read this way still
gives logits and input gradients, with no layers and no backward rules; a frozen module (its submodules
inlined away) has no layers, but its rectifiers can still take other backward rules.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from .base import ConvInfo, Forward, LayerInfo, Model, ModelCard, pair, torch_padding
from .rectifiers import rectify_script

log = logging.getLogger(__name__)

# Tracing names the methods of a submodule called twice ``forward``, ``forward1``, …
_FORWARD = re.compile(r"forward\d*")
_FOLDABLE = {"BoolType", "IntType", "FloatType", "StringType", "NoneType"}


# -- private TorchScript entry points ------------------------------------------------------------------
# Everything below uses the ``torch._C`` graph IR, which TorchScript exposes for its own passes. The five
# calls that are private by name are wrapped here so an upgrade that moves one breaks in one place, and
# ``tests/test_torchscript_model.py`` checks they still exist.
def _run_passes(
    graph: torch._C.Graph,
    *,
    inline: bool = False,
    fold: bool = False,
    dce: bool = False,
    prune: bool = False,
) -> None:
    """Run TorchScript's own passes on ``graph`` in place.

    ``inline`` expands the remaining function and method calls (``F.relu`` in a scripted model), ``fold``
    evaluates nodes whose inputs are all constants (an ``if`` on a constant keeps only its taken branch),
    ``dce`` drops nodes whose outputs are unused and have no side effects, in-place operators kept. ``prune``
    drops the in-place operators too where alias analysis shows that nothing still used reads what they write.
    """
    if inline:
        torch._C._jit_pass_inline(graph)
    if fold:
        torch._C._jit_pass_constant_propagation(graph)
    if dce:
        torch._C._jit_pass_dce(graph)
    if prune:
        torch._C._jit_pass_dce_graph(graph)


def _compile(graph: torch._C.Graph) -> torch._C.ScriptFunction:
    """A callable running ``graph``; its first argument is the module the graph's ``self`` stands for."""
    return torch._C._create_function_from_graph("forward_with_taps", graph)


PRIVATE_ENTRY_POINTS = (
    "_jit_pass_inline",
    "_jit_pass_constant_propagation",
    "_jit_pass_dce",
    "_jit_pass_dce_graph",
    "_create_function_from_graph",
)


# -- graph surgery --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    """A submodule call in the inlined graph: the module's path and the position of its anchor output."""

    path: str
    output: int


def _all_nodes(block: torch._C.Block) -> Iterator[torch._C.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _all_nodes(inner)


def _module_path(value: torch._C.Value, root: torch._C.Value) -> str | None:
    """The dotted path of the submodule ``value`` holds, following ``prim::GetAttr`` back to ``root``."""
    parts = []
    while value.unique() != root.unique():
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        parts.append(node.s("name"))
        value = node.input()
    return ".".join(reversed(parts))


def _inline_calls(module: torch.jit.ScriptModule, fold: bool) -> tuple[torch._C.Graph, list[_Call]]:
    """A copy of ``module``'s forward graph with every submodule call inlined.

    Each graph is folded (:func:`_prepared`, when ``fold``) before it is inserted, so a call that only
    a plain attribute kept inside an ``if`` lands in the top block. Each such call of a ``forward`` that
    returns one tensor gets an anchor, ``aten::clone`` of its result put where the call returned, kept alive
    as an extra graph output at position ``_Call.output``.
    """
    modules = dict(module.named_modules())
    graph = _prepared(module.graph, "", modules, fold)
    root = next(iter(graph.inputs()))
    calls = []
    while (node := graph.findNode("prim::CallMethod", True)) is not None:
        inputs = list(node.inputs())
        path = _module_path(inputs[0], root)
        if path is None or path not in modules:
            break  # a call on a module we cannot name: leave it and the rest to TorchScript's own inliner
        method = node.s("name")
        callee = _prepared(getattr(modules[path], method).graph, path, modules, fold)
        with graph.insert_point_guard(node):
            results = graph.insertGraph(callee, inputs)
            tappable = path and _FORWARD.fullmatch(method) and len(results) == 1 and _is_tensor(results[0])
            if tappable and node.owningBlock().owningNode() is None:
                anchor = graph.create("aten::clone", [results[0], graph.insertConstant(None)])
                graph.insertNode(anchor)
                calls.append(_Call(path, graph.registerOutput(anchor.output())))
        for old, new in zip(node.outputs(), results, strict=True):
            old.replaceAllUsesWith(new)
        node.destroy()
    _run_passes(graph, inline=True, fold=True)
    return graph, calls


def _is_tensor(value: torch._C.Value) -> bool:
    return isinstance(value.type(), torch._C.TensorType)


def _prepared(
    graph: torch._C.Graph, path: str, modules: dict[str, torch.nn.Module], fold: bool
) -> torch._C.Graph:
    """A copy of the method graph of the module at ``path``, its plain attributes folded when ``fold``.

    Reads of ``bool``/``int``/``float``/``str``/``None`` attributes become constants holding their current
    values, and constant propagation then keeps only the taken branch of each ``if`` they decide.
    """
    graph = graph.copy()
    if not fold:
        return graph
    root = next(iter(graph.inputs()))
    for node in graph.findAllNodes("prim::GetAttr", True):
        if node.output().type().kind() not in _FOLDABLE:
            continue
        relative = _module_path(node.input(), root)
        owner = ".".join(part for part in (path, relative) if part)
        if relative is None or owner not in modules:
            continue
        with graph.insert_point_guard(node):
            constant = graph.insertConstant(getattr(modules[owner], node.s("name")))
        node.output().replaceAllUsesWith(constant)
        node.destroy()
    _run_passes(graph, fold=True)
    return graph


_WRITTEN: dict[str, tuple[int, ...]] = {}


def _written_inputs(node: torch._C.Node) -> tuple[int, ...]:
    """Indices of the inputs ``node`` writes to, from the alias annotations of its schema (``Tensor(a!)``)."""
    schema = node.schema()
    if schema == "(no schema)":
        return ()
    if schema not in _WRITTEN:
        arguments = torch._C.parse_schema(schema).arguments
        _WRITTEN[schema] = tuple(
            i for i, arg in enumerate(arguments) if arg.alias_info is not None and arg.alias_info.is_write
        )
    return _WRITTEN[schema]


class _LaterAccess:
    """How the nodes after a tap point reach the memory of the tapped value, from one alias analysis.

    For a tapped value: whether a later node writes its memory (an in-place op would change the activation),
    and whether a later node reaches that memory through a value other than the tapped one or one made from
    it after the tap. When nothing writes, the value can be returned as it is; when something writes, but
    only through the value, the rest of the graph can be given a copy; otherwise only a snapshot is safe.
    """

    def __init__(self, graph: torch._C.Graph) -> None:
        self._aliases = graph.alias_db()
        self._nodes = [
            (node, list(node.inputs()), set(_written_inputs(node)), list(node.outputs()))
            for node in _all_nodes(graph.block())
        ]
        self._index = {
            node.output().unique(): i
            for i, (node, _, _, _) in enumerate(self._nodes)
            if node.outputsSize() == 1
        }

    def __call__(self, anchor: torch._C.Node) -> tuple[bool, bool]:
        """``(written, foreign)`` for the input of ``anchor``, a node of the top block."""
        value = next(iter(anchor.inputs()))
        derived = {value.unique()}
        written = foreign = False
        for _, inputs, writes, outputs in self._nodes[self._index[anchor.output().unique()] + 1 :]:
            from_value = False
            for index, used in enumerate(inputs):
                if used.unique() in derived:
                    from_value = True
                elif self._aliases.may_contain_alias(used, value):
                    foreign = True
                else:
                    continue
                written = written or index in writes
            if from_value:
                derived.update(out.unique() for out in outputs if self._aliases.may_contain_alias(out, value))
        return written, foreign


def _last_calls(graph: torch._C.Graph, calls: Sequence[_Call]) -> dict[str, torch._C.Node]:
    """The anchor of each module's last call, ordered by where the calls return."""
    outputs = list(graph.outputs())
    anchor_of = {outputs[call.output].unique(): call.path for call in calls}
    last: dict[str, torch._C.Node] = {}
    for node in graph.nodes():
        path = anchor_of.get(node.output().unique()) if node.kind() == "aten::clone" else None
        if path is not None:
            last.pop(path, None)
            last[path] = node
    return last


def _keep_only_what_anchors_need(graph: torch._C.Graph, anchors: Sequence[torch._C.Node]) -> None:
    """Drop what the anchors do not depend on from ``graph``, whose outputs have all been erased.

    Nothing after the last anchor can change a value read by one, so that tail goes whole, its checks
    (``prim::RaiseException``, which dead-code elimination keeps) included; then what only fed the tail.
    The anchors are outputs meanwhile, which keeps every write they read. Done before the alias analysis of
    :func:`tapped_graph`, so that in-place operators of the rest of the network count as no later write.
    """
    values = {anchor.output().unique() for anchor in anchors}
    for anchor in anchors:
        graph.registerOutput(anchor.output())
    nodes = list(graph.nodes())
    last = max(
        i for i, node in enumerate(nodes) if node.outputsSize() == 1 and node.output().unique() in values
    )
    for node in reversed(nodes[last + 1 :]):
        node.destroy()
    _run_passes(graph, prune=True)
    for index in range(len(anchors) - 1, -1, -1):
        graph.eraseOutput(index)


def tap_points(module: torch.jit.ScriptModule, fold: bool = True) -> list[tuple[str, str]]:
    """``(path, class name)`` of every submodule whose output can be tapped, ordered by where it returns."""
    graph, calls = _inline_calls(module, fold)
    modules = dict(module.named_modules())
    return [(path, modules[path].original_name) for path in _last_calls(graph, calls)]


def tapped_graph(
    module: torch.jit.ScriptModule,
    paths: Sequence[str],
    fold: bool = True,
    logits: bool = True,
    relu_rule: str = "gradient",
) -> torch._C.Graph:
    """``module``'s forward graph returning ``(output, *activations at paths)``; ``self`` stays its first input.

    With ``logits=False`` it returns only the activations, and whatever they do not depend on (the rest of
    the network, the output among it) is removed. A ``relu_rule`` other than ``gradient`` replaces the
    rectifiers (:func:`~convlens.models.rectifiers.rectify_script`) before the taps are placed, so in-place
    rectifiers become out-of-place ones first.
    """
    graph, calls = _inline_calls(module, fold)
    if relu_rule != "gradient":
        rectify_script(graph, relu_rule)
    last = _last_calls(graph, calls)
    missing = [path for path in paths if path not in last]
    if missing:
        raise KeyError(f"no tappable call of {missing[0]!r}")
    anchors = [last[path] for path in paths]
    kept = {anchor.output().unique() for anchor in anchors}
    outputs = list(graph.outputs())
    for index in range(len(outputs) - 1, 0, -1):
        graph.eraseOutput(index)
    for value in outputs[1:]:
        if value.unique() not in kept:
            value.node().destroy()
    if not logits:
        graph.eraseOutput(0)
        _keep_only_what_anchors_need(graph, anchors)
    # Decided on the graph as it is now: a rewiring below only hands later nodes a fresh copy in place of a
    # value, which leaves how they reach any other tapped value unchanged.
    later_access = _LaterAccess(graph)
    access = [later_access(anchor) for anchor in anchors]
    activations = []
    for anchor, (written, foreign) in zip(anchors, access, strict=True):
        value = next(iter(anchor.inputs()))
        if not written:
            activations.append(value)
            continue
        if not foreign:
            copy = graph.create("aten::clone", list(anchor.inputs()))
            copy.replaceInput(0, anchor.output())
            copy.insertAfter(anchor)
            value.replaceAllUsesAfterNodeWith(copy, copy.output())
        activations.append(anchor.output())
    for value in activations:
        graph.registerOutput(value)
    _run_passes(graph, dce=True)
    graph.makeMultiOutputIntoTuple()
    graph.lint()
    return graph


# Where ``stride``, ``padding``, ``dilation`` and ``groups`` sit among each convolution operator's inputs.
_CONV_ARGUMENTS = {
    "aten::conv2d": (3, 4, 5, 6),
    "aten::_convolution": (3, 4, 5, 8),
    "aten::convolution": (3, 4, 5, 8),
}


def _constant(value: torch._C.Value):
    """The value of a constant input, or of a list of constants; ``None`` where the graph computes it."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct" and all(
        v.node().kind() == "prim::Constant" for v in node.inputs()
    ):
        return [v.toIValue() for v in node.inputs()]
    return None


def conv_calls(module: torch.jit.ScriptModule) -> list[tuple[str, str, tuple]]:
    """``(module path, weight attribute, (stride, padding, dilation, groups))`` of each 2-D convolution of
    ``module``'s forward whose weight is a submodule's parameter and whose settings are constants.

    Read off the inlined graph: a traced module keeps these settings only as the operator's constant inputs.
    """
    graph = module.inlined_graph
    root = next(iter(graph.inputs()))
    found: dict[str, tuple[str, str, tuple]] = {}
    for node in _all_nodes(graph.block()):
        positions = _CONV_ARGUMENTS.get(node.kind())
        if positions is None:
            continue
        inputs = list(node.inputs())
        weight = inputs[1].node()
        if weight.kind() != "prim::GetAttr" or (node.kind() != "aten::conv2d" and _constant(inputs[6])):
            continue  # a computed weight, or a transposed convolution
        path = _module_path(weight.input(), root)
        settings = tuple(_constant(inputs[i]) for i in positions)
        if path and None not in settings:
            found.setdefault(f"{path}.{weight.s('name')}", (path, weight.s("name"), settings))
    return list(found.values())


# -- the model ------------------------------------------------------------------------------------------
class TorchScriptModel(Model):
    """A ``torch.jit.save`` file, traced or scripted; layers are its submodules that return one tensor."""

    format = "torchscript"

    def __init__(self, model_id: str, path: Path, card: ModelCard, cache_size: int = 16) -> None:
        super().__init__(model_id, path, card)
        self.module = _load(self.path)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        # Folding reads attributes once; a module that assigns its own attributes must keep reading them.
        self._fold = self.module.inlined_graph.findNode("prim::SetAttr", True) is None
        self._readable = True
        try:
            self._ops = dict(tap_points(self.module, self._fold))
        except (RuntimeError, AttributeError, KeyError) as error:
            log.warning(
                "%s: hidden layers and backward rules unavailable, its graph could not be read (%s)",
                self.path.name,
                error,
            )
            self._ops = {}
            self._readable = False
        self._layers: list[LayerInfo] | None = None
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[tuple[str, ...], bool, str], torch._C.ScriptFunction] = OrderedDict()
        self._lock = threading.Lock()
        self._device = next((t.device for t in self.module.parameters()), torch.device("cpu"))

    @property
    def capabilities(self) -> frozenset[str]:
        readable = {"relu_rules"} if self._readable else set()
        return frozenset({"gradients"} | readable | ({"layers"} if self._ops else set()))

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            names = tuple(self._ops)
            with torch.no_grad():
                acts = self.forward(torch.zeros(1, 3, *self.input_size), names).activations
            self._layers = [LayerInfo(name, self._ops[name], tuple(acts[name].shape[1:])) for name in names]
        return self._layers

    def conv_layers(self) -> list[ConvInfo]:
        convs = []
        for path, attribute, (stride, padding, dilation, groups) in conv_calls(self.module):
            weight = _attribute(self.module, f"{path}.{attribute}")
            if weight.dim() != 4:
                continue
            kernel = tuple(weight.shape[2:])
            convs.append(
                ConvInfo(
                    path,
                    f"{path}.{attribute}",
                    tuple(weight.shape),
                    int(groups),
                    pair(stride),
                    torch_padding(padding, kernel, pair(dilation)),
                    pair(dilation),
                )
            )
        return convs

    def _read_conv_weight(self, conv: ConvInfo) -> np.ndarray:
        return _attribute(self.module, conv.weight_name).detach().cpu().numpy()

    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[str] = (),
        *,
        logits: bool = True,
        relu_rule: str = "gradient",
    ) -> Forward:
        self._check_request(layers, logits, relu_rule)
        for name in layers:
            if name not in self._ops:
                raise BadInput("layer", f"model {self.id!r} has no layer {name!r}")
        self._follow(images.device)
        inputs = self.normalise(images)
        # Every call runs in TorchScript's plain interpreter (the setting is per thread), for two reasons.
        # From its second run the optimising executor merges a tapped layer and what follows into one
        # differentiable graph, which cuts the gradient of the logits w.r.t. the returned activation
        # (Grad-CAM's). And a graph it first profiles with gradients on runs slower ever after: the
        # style-transfer layers of the default model, forward and backward, 79 it/s against 98 in the
        # interpreter at 128 px, 33 against 45 at 224; without gradients the interpreter is as fast.
        with torch.jit.optimized_execution(False):
            if not layers and relu_rule == "gradient":
                return Forward(self.module(inputs), {})
            names = tuple(dict.fromkeys(layers))
            values = self._tapped(names, logits, relu_rule)(self.module, inputs)
        if not isinstance(values, tuple):
            values = (values,)
        if not logits:
            return Forward(None, dict(zip(names, values, strict=True)))
        return Forward(values[0], dict(zip(names, values[1:], strict=True)))

    def _tapped(
        self, names: tuple[str, ...], logits: bool, relu_rule: str = "gradient"
    ) -> torch._C.ScriptFunction:
        """The compiled forward returning these layers (after the output if ``logits``), built once."""
        key = (names, logits, relu_rule)
        with self._lock:
            function = self._cache.get(key)
            if function is None:
                function = _compile(tapped_graph(self.module, names, self._fold, logits, relu_rule))
                self._cache[key] = function
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return function

    def _follow(self, device: torch.device) -> None:
        # The compiled graphs take the module as an argument, so moving it needs no rebuild.
        if device != self._device:
            with self._lock:
                if device != self._device:
                    self.module.to(device)
                    self._device = device


def _attribute(module: torch.jit.ScriptModule, dotted: str) -> torch.Tensor:
    """The tensor at a dotted path (``layer1.0.conv1.weight``); ScriptModules have no ``get_submodule``."""
    return functools.reduce(getattr, dotted.split("."), module)


def _load(path: Path) -> torch.jit.ScriptModule:
    try:
        # TorchScript is deprecated, but files in it are still what people bring; its FutureWarning on every
        # load would only alarm someone serving one.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - zip, pickle and version errors alike mean "not a usable file"
        reason = f"{type(error).__name__}: {error}"
        raise BadInput("model", f"{path.name} is not a readable TorchScript file ({reason})") from None
    return module.eval()
