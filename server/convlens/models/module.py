"""A :class:`Model` around an eager ``torch.nn.Module``, hidden layers read by forward hooks.

Without logits, the forward is cut short: the hook of the last requested layer to return raises, once every
requested layer has returned as many times as it does in a whole forward (counted once, on a blank image),
so a submodule called more than once is still read at its last call. A network whose submodules are called
a number of times that depends on the input is read at the count of the blank image.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from .base import ConvInfo, Forward, LayerInfo, Model, ModelCard, pair, torch_padding
from .rectifiers import RectifierMode


class _AllCaptured(Exception):
    """Ends a forward whose logits are not wanted once every requested activation is in."""


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
        self._calls: dict[str, int] = {}

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._probe()
        return self._layers

    def _probe(self) -> None:
        """One forward of a blank image, every submodule hooked: its output shape and its calls per forward."""
        shapes: dict[str, tuple[int, ...]] = {}
        calls = dict.fromkeys(self._modules, 0)

        def record(name: str):
            def hook(_module, _inputs, output):
                calls[name] += 1
                if isinstance(output, torch.Tensor):
                    shapes[name] = tuple(output.shape[1:])

            return hook

        handles = [module.register_forward_hook(record(name)) for name, module in self._modules.items()]
        try:
            with torch.no_grad():
                self.module(self.normalise(torch.zeros(1, 3, *self.input_size)))
        finally:
            for handle in handles:
                handle.remove()
        self._calls = calls
        self._layers = [
            LayerInfo(name, type(module).__name__, shapes[name])
            for name, module in self._modules.items()
            if name in shapes
        ]

    def conv_layers(self) -> list[ConvInfo]:
        return [
            ConvInfo(
                name,
                f"{name}.weight",
                tuple(module.weight.shape),
                module.groups,
                pair(module.stride),
                torch_padding(module.padding, module.kernel_size, module.dilation),
                pair(module.dilation),
            )
            for name, module in self._modules.items()
            if isinstance(module, torch.nn.Conv2d)
        ]

    def _read_conv_weight(self, conv: ConvInfo) -> np.ndarray:
        return self._modules[conv.name].weight.detach().cpu().numpy()

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
            if name not in self._modules:
                raise BadInput("layer", f"model {self.id!r} has no layer {name!r}")
        names = tuple(dict.fromkeys(layers))
        calls_left = None
        if not logits:
            if self._layers is None:
                self._probe()
            calls_left = {name: self._calls[name] for name in names}
        captured: dict[str, torch.Tensor] = {}
        handles = [
            self._modules[name].register_forward_hook(_capture(captured, name, calls_left)) for name in names
        ]
        rules = RectifierMode(relu_rule) if relu_rule != "gradient" else contextlib.nullcontext()
        try:
            with rules:
                outputs = self.module(self.normalise(images))
        except _AllCaptured:
            outputs = None
        finally:
            for handle in handles:
                handle.remove()
        return Forward(outputs if logits else None, captured)


def _capture(store: dict[str, torch.Tensor], name: str, calls_left: dict[str, int] | None):
    """Keep a tapped output and hand the rest of the network a copy.

    Without the copy, a later in-place op (ResNet's ``relu_``, ``out += identity``)
    would overwrite the kept activation; the copy keeps it in the autograd graph.
    With ``calls_left`` (calls to come of each requested layer), the hook that sees the
    last of them ends the forward. The hook ignores forwards run by other threads, which
    share the module and so its hooks.
    """
    thread = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() != thread:
            return None
        if isinstance(output, torch.Tensor):
            store[name] = output
        if calls_left is not None:
            calls_left[name] -= 1
            if all(count <= 0 for count in calls_left.values()):
                raise _AllCaptured
        return output.clone() if isinstance(output, torch.Tensor) else None

    return hook
