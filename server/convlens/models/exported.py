"""``torch.export`` files (``.pt2``): the saved program's GraphModule, hidden layers read off its graph.

Layer names come from the module scopes ``torch.export`` keeps on every node (``nn_module_stack``). A program
saved with in-place operators (``relu_``, ``add_``) is functionalised first, so that a tapped activation is
not overwritten by a later in-place operator.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from ..errors import BadInput
from .base import ConvInfo, ModelCard, pair, torch_padding
from .fx_taps import GraphModel, nn_module_scopes

_CONVOLUTIONS = {
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv2d.padding,
    torch.ops.aten.convolution.default,
}


class ExportedModel(GraphModel):
    """A ``torch.export.save`` file."""

    format = "export"

    def __init__(self, model_id: str, path: Path, card: ModelCard) -> None:
        super().__init__(model_id, path, card)
        graph_module = _load(self.path)
        self._set_graph(graph_module, _input_dims(graph_module, self.path.name))

    def conv_layers(self) -> list[ConvInfo]:
        """Each 2-D convolution whose weight is a parameter of the program, named by its module scope."""
        convs: dict[str, ConvInfo] = {}
        for node in self.graph_module.graph.nodes:
            if node.op != "call_function" or node.target not in _CONVOLUTIONS:
                continue
            normalised = normalize_function(
                node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
            )
            arguments = normalised.kwargs if normalised is not None else {}
            weight = arguments.get("weight")
            scopes = nn_module_scopes(node)
            if arguments.get("transposed") or getattr(weight, "op", None) != "get_attr" or not scopes:
                continue
            shape = tuple(_attribute(self.graph_module, weight.target).shape)
            if len(shape) != 4:
                continue
            dilation = pair(arguments.get("dilation", 1))
            name = scopes[-1][0]
            convs.setdefault(
                name,
                ConvInfo(
                    name,
                    str(weight.target),
                    shape,
                    int(arguments.get("groups", 1)),
                    pair(arguments.get("stride", 1)),
                    torch_padding(arguments.get("padding", 0), shape[2:], dilation),
                    dilation,
                ),
            )
        return list(convs.values())

    def _read_conv_weight(self, conv: ConvInfo) -> np.ndarray:
        return _attribute(self.graph_module, conv.weight_name).detach().cpu().numpy()


def _attribute(graph_module: fx.GraphModule, target: str) -> torch.Tensor:
    """The parameter or buffer a ``get_attr`` node reads (``layer1.0.conv1.weight``)."""
    return functools.reduce(getattr, target.split("."), graph_module)


def _load(path: Path) -> fx.GraphModule:
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # noqa: BLE001 - zip, JSON and version errors alike mean "not a usable file"
        reason = f"{type(error).__name__}: {error}"
        raise BadInput("model", f"{path.name} is not a readable torch.export file ({reason})") from None
    if _mutates(program.graph_module.graph):
        program = program.run_decompositions({})
    return program.module()


def _mutates(graph: fx.Graph) -> bool:
    return any(
        isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
        for node in graph.nodes
        if node.op == "call_function"
    )


def _input_dims(graph_module: fx.GraphModule, file_name: str) -> list[int | None]:
    """The image input's sizes, ``None`` where the program accepts any (a symbolic dimension)."""
    placeholders = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise BadInput(
            "model", f"{file_name} takes {len(placeholders)} inputs; convlens needs one image input"
        )
    shape = getattr(placeholders[0].meta.get("val"), "shape", None)
    if shape is None:
        return [None, None, None, None]
    if len(shape) != 4:
        raise BadInput("model", f"{file_name}: the input is {len(shape)}-D, not NxCxHxW")
    return [int(size) if isinstance(size, int) else None for size in shape]
