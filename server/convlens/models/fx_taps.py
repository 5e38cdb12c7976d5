"""Hidden activations of a ``torch.fx.GraphModule``, read as extra graph outputs.

Rather than hooks, the graph is copied with the chosen nodes added to its output, so each activation is an
ordinary tensor of the same autograd graph as the logits: a plugin can differentiate the logits w.r.t. it, or
it w.r.t. the input. One copy is compiled per set of nodes and kept in a small cache. A caller that wants
the activations alone gets a copy returning only them, cut down to the nodes they depend on.

Layer names follow the eager model: a layer is the dotted path of an ``nn.Module`` (``layer1.0``,
``_blocks.3``) and its activation is the last node, in graph order, inside that module's scope. Where a graph
records no module scopes, every node computed from the input is a layer under its own name.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import fx

from ..errors import BadInput
from .base import Forward, LayerInfo, Model
from .rectifiers import rectify_fx

Scope = tuple[str, str]
"""A module scope: its dotted path and its class name (``("layer1.0", "BasicBlock")``)."""

ScopesOf = Callable[[fx.Node], Sequence[Scope]]
FallbackOf = Callable[[fx.Node], "tuple[str, str] | None"]

_COMPUTING_OPS = ("call_function", "call_module", "call_method")


@dataclass(frozen=True)
class TapPoint:
    """A candidate layer: its name, the fx node whose value it is, and the op (module class or operator)."""

    name: str
    node: str
    op: str


def short_class_name(qualified: object) -> str:
    """``torchvision.models.resnet.BasicBlock`` (or the class itself) → ``BasicBlock``."""
    if isinstance(qualified, type):
        return qualified.__name__
    return str(qualified).rsplit(".", 1)[-1]


def nn_module_scopes(node: fx.Node) -> list[Scope]:
    """The module scopes ``torch.export`` records in ``node.meta["nn_module_stack"]``, outermost first, root left out."""
    stack = node.meta.get("nn_module_stack") or {}
    scopes = []
    for value in stack.values():
        path, cls = value[0], value[1]
        if isinstance(path, str) and path:
            scopes.append((path, short_class_name(cls)))
    return scopes


def operator_name(graph_module: fx.GraphModule, node: fx.Node) -> str:
    """A short name for what ``node`` computes: ``conv2d`` for an aten operator, a class name for a module."""
    if node.op == "call_module":
        return type(graph_module.get_submodule(str(node.target))).__name__
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.name.split("::")[-1]
    return getattr(node.target, "__name__", str(node.target))


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a graph input (parameters, constants and their folds are left out)."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            dependent.add(node)
        elif node.op in _COMPUTING_OPS and any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent


def layer_points(
    graph_module: fx.GraphModule,
    scopes_of: ScopesOf = nn_module_scopes,
    fallback: FallbackOf | None = None,
) -> list[TapPoint]:
    """The candidate layers of ``graph_module`` in execution order.

    With module scopes (``scopes_of`` finds any), one point per module: the last input-dependent node inside
    its scope; modules that end at the same node are listed innermost first, as their forwards return. Without,
    one point per input-dependent node, named and typed by ``fallback(node)`` (default: the fx node's name and
    its operator), skipping nodes for which it returns ``None``.
    """
    dependent = input_dependent(graph_module.graph)
    nodes = [node for node in graph_module.graph.nodes if node in dependent and node.op in _COMPUTING_OPS]
    last: dict[str, tuple[int, int, str, str]] = {}
    for index, node in enumerate(nodes):
        for depth, (path, cls) in enumerate(scopes_of(node)):
            last[path] = (index, -depth, node.name, cls)
    if last:
        ordered = sorted(last.items(), key=lambda item: item[1][:2])
        return [TapPoint(path, node_name, cls) for path, (_, _, node_name, cls) in ordered]

    def default_fallback(node: fx.Node) -> tuple[str, str] | None:
        if node.op == "call_function" and node.target is operator.getitem:
            return None
        return node.name, operator_name(graph_module, node)

    name_and_op = fallback or default_fallback
    points, seen = [], set()
    for node in nodes:
        named = name_and_op(node)
        if named is None or named[0] in seen:
            continue
        seen.add(named[0])
        points.append(TapPoint(named[0], node.name, named[1]))
    return points


def first_output(graph: fx.Graph) -> fx.Node:
    """The node of the graph's first output (the logits of a classifier, whatever structure wraps them)."""
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    found: list[fx.Node] = []
    fx.node.map_arg(output.args[0], found.append)
    if not found:
        raise BadInput("model", "the graph has no tensor output")
    return found[0]


def tapped_module(
    graph_module: fx.GraphModule,
    node_names: Sequence[str],
    logits: bool = True,
    relu_rule: str = "gradient",
) -> fx.GraphModule:
    """A copy of ``graph_module`` sharing its weights that returns ``(first output, *values of node_names)``.

    With ``logits=False`` it returns only the values of ``node_names``, and the nodes they do not depend on
    (the rest of the network, the logits among them) are removed from the copy. A ``relu_rule`` other than
    ``gradient`` replaces the copy's rectifiers (:func:`~convlens.models.rectifiers.rectify_fx`).

    The copy uses plain fx code generation, so it takes the inputs positionally and returns a flat tuple,
    whatever pytree structure the original's signature had.
    """
    by_name = {node.name: node for node in graph_module.graph.nodes}
    missing = [name for name in node_names if name not in by_name]
    if missing:
        raise KeyError(f"graph has no node {missing[0]!r}")
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    for node in graph_module.graph.nodes:
        if node.op != "output":
            copies[node] = graph.node_copy(node, lambda arg: copies[arg])
    taps = tuple(copies[by_name[name]] for name in node_names)
    graph.output((copies[first_output(graph_module.graph)], *taps) if logits else taps)
    module = fx.GraphModule(graph_module, graph)
    if relu_rule != "gradient":
        rectify_fx(module, relu_rule)
    if not logits:
        # Dead-code elimination needs the owning module to tell pure submodule calls from impure ones.
        module.graph.eliminate_dead_code()
    if relu_rule != "gradient" or not logits:
        module.recompile()
    return module


class GraphTaps:
    """Runs a GraphModule for its first output and the values of chosen nodes, differentiably (or for the
    values alone, computing only what they need).

    ``fixed_batch`` is the batch size the graph was traced for when it cannot take another: inputs are then
    run in chunks of that size, the last padded with zeros, and outputs joined along the batch dimension.
    """

    def __init__(
        self, graph_module: fx.GraphModule, fixed_batch: int | None = None, cache_size: int = 16
    ) -> None:
        self.module = graph_module
        self.fixed_batch = fixed_batch
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[tuple[str, ...], bool, str], fx.GraphModule] = OrderedDict()
        self._lock = threading.Lock()
        self._device = next((t.device for t in _tensors(graph_module)), torch.device("cpu"))

    def tapped(
        self, node_names: tuple[str, ...], logits: bool = True, relu_rule: str = "gradient"
    ) -> fx.GraphModule:
        """The compiled copy returning these nodes (after the first output if ``logits``), built once."""
        key = (node_names, logits, relu_rule)
        with self._lock:
            module = self._cache.get(key)
            if module is None:
                module = tapped_module(self.module, node_names, logits, relu_rule)
                self._cache[key] = module
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return module

    def run(
        self,
        inputs: torch.Tensor,
        node_names: Sequence[str] = (),
        logits: bool = True,
        relu_rule: str = "gradient",
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The first output (``None`` unless ``logits``) and ``{node name: value}`` for normalised inputs."""
        self._follow(inputs.device)
        names = tuple(dict.fromkeys(node_names))
        module = self.tapped(names, logits, relu_rule)
        if self.fixed_batch is None or inputs.shape[0] == self.fixed_batch:
            values = module(inputs)
        else:
            values = self._run_chunked(module, inputs)
        if not logits:
            return None, dict(zip(names, values, strict=True))
        return values[0], dict(zip(names, values[1:], strict=True))

    def layers(self, points: Sequence[TapPoint], example: torch.Tensor) -> list[LayerInfo]:
        """The points whose value is one floating-point tensor with a batch dimension, with their shapes."""
        nodes = tuple(dict.fromkeys(point.node for point in points))
        self._follow(example.device)
        with torch.no_grad():
            values = dict(zip(nodes, tapped_module(self.module, nodes)(example)[1:], strict=True))
        batch = example.shape[0]
        layers = []
        for point in points:
            value = values[point.node]
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2:
                if value.shape[0] == batch:
                    layers.append(LayerInfo(point.name, point.op, tuple(value.shape[1:])))
        return layers

    def _run_chunked(self, module: fx.GraphModule, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = self.fixed_batch or 1
        chunks = []
        for start in range(0, inputs.shape[0], size):
            chunk = inputs[start : start + size]
            count = chunk.shape[0]
            if count < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - count, *chunk.shape[1:]))])
            chunks.append([value[:count] for value in module(chunk)])
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))

    def _follow(self, device: torch.device) -> None:
        # Copies share the original's tensors only until ``.to`` replaces buffers, so drop them on a move.
        if device == self._device:
            return
        with self._lock:
            if device != self._device:
                self.module.to(device)
                self._cache.clear()
                self._device = device


class GraphModel(Model):
    """A :class:`Model` computed by one GraphModule; subclasses load it and call :meth:`_set_graph`."""

    graph_module: fx.GraphModule
    fixed_batch: int | None = None
    """The batch size the graph is fixed to, or ``None`` if it takes any."""
    fixed_input_size: tuple[int, int] | None = None
    """The (height, width) the graph is fixed to, or ``None`` if it takes any."""

    def _set_graph(self, graph_module: fx.GraphModule, dims: Sequence[int | None]) -> None:
        """Use ``graph_module`` (frozen) for an NxCxHxW input with ``dims`` (``None`` where dynamic)."""
        for parameter in graph_module.parameters():
            parameter.requires_grad_(False)
        self.graph_module = graph_module
        self.fixed_batch = dims[0]
        self.fixed_input_size = (dims[2], dims[3]) if dims[2] is not None and dims[3] is not None else None
        self._taps = GraphTaps(graph_module, fixed_batch=self.fixed_batch)
        self._layers: list[LayerInfo] | None = None
        self._node_of: dict[str, str] = {}

    def layer_points(self) -> list[TapPoint]:
        """Every candidate layer, before :meth:`layers` keeps those that are single tensors."""
        return layer_points(self.graph_module)

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            points = self.layer_points()
            example = self.normalise(torch.zeros(self.fixed_batch or 1, 3, *self.input_size))
            layers = self._taps.layers(points, example)
            kept = {layer.name for layer in layers}
            self._node_of = {point.name: point.node for point in points if point.name in kept}
            self._layers = layers
        return self._layers

    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[str] = (),
        *,
        logits: bool = True,
        relu_rule: str = "gradient",
    ) -> Forward:
        self._check_request(layers, logits, relu_rule)
        if layers:
            self.layers()
        nodes = []
        for name in layers:
            if name not in self._node_of:
                raise BadInput("layer", f"model {self.id!r} has no layer {name!r}")
            nodes.append(self._node_of[name])
        outputs, values = self._taps.run(self.normalise(images), nodes, logits, relu_rule)
        return Forward(outputs, {name: values[node] for name, node in zip(layers, nodes, strict=True)})


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()
