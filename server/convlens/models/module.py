"""A :class:`Model` around an eager ``torch.nn.Module``, hidden layers read by forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import BadInput
from .base import Forward, LayerInfo, Model, ModelCard


class ModuleModel(Model):
    """An in-memory module; layers are its named leaf submodules."""

    format = "module"

    def __init__(
        self, model_id: str, module: torch.nn.Module, card: ModelCard, path: Path | None = None
    ) -> None:
        super().__init__(model_id, path or Path(model_id), card)
        self.module = module.eval()
        self._modules = {name: m for name, m in module.named_modules() if name}
        self._layers: list[LayerInfo] | None = None

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            probe = torch.zeros(1, 3, *self.input_size)
            names = list(self._modules)
            with torch.no_grad():
                acts = self.forward(probe, names).activations
            self._layers = [
                LayerInfo(name, type(self._modules[name]).__name__, tuple(acts[name].shape[1:]))
                for name in names
                if name in acts
            ]
        return self._layers

    def forward(self, images: torch.Tensor, layers: Sequence[str] = ()) -> Forward:
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in layers:
            if name not in self._modules:
                raise BadInput("layer", f"model {self.id!r} has no layer {name!r}")
            handles.append(self._modules[name].register_forward_hook(_capture(captured, name)))
        try:
            logits = self.module(self.normalise(images))
        finally:
            for handle in handles:
                handle.remove()
        return Forward(logits, captured)


def _capture(store: dict[str, torch.Tensor], name: str):
    """Keep a tapped output and hand the rest of the network a copy.

    Without the copy, a later in-place op (ResNet's ``relu_``, ``out += identity``)
    would overwrite the kept activation; the copy keeps it in the autograd graph.
    """

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            store[name] = output
            return output.clone()
        return None

    return hook
