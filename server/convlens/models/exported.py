"""``torch.export`` files (``.pt2``): the saved program's GraphModule, hidden layers read off its graph.

Layer names come from the module scopes ``torch.export`` keeps on every node (``nn_module_stack``). A program
saved with in-place operators (``relu_``, ``add_``) is functionalised first, so that a tapped activation is
not overwritten by a later in-place operator.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx

from ..errors import BadInput
from .base import ModelCard
from .fx_taps import GraphModel


class ExportedModel(GraphModel):
    """A ``torch.export.save`` file."""

    format = "export"

    def __init__(self, model_id: str, path: Path, card: ModelCard) -> None:
        super().__init__(model_id, path, card)
        graph_module = _load(self.path)
        self._set_graph(graph_module, _input_dims(graph_module, self.path.name))


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
