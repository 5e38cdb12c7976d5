"""The one model interface every analysis uses, whatever the file format.

Images enter in pixel space: Nx3xHxW float32 in [0, 1]. Normalisation by the
card's mean and std happens inside, so gradients are w.r.t. the picture a person
sees. Hidden layers are addressed by name (``Model.layers``); ``forward`` returns
their activations inside the autograd graph, so a plugin can take gradients
w.r.t. the input, a class score, or any hidden unit with ``torch.autograd``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInput
from .rectifiers import check_rule


@dataclass(frozen=True)
class LayerInfo:
    """A hidden layer: its name, the operation that makes it, and its output shape for one input (CxHxW)."""

    name: str
    op: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "shape": list(self.shape)}


@dataclass(frozen=True)
class ConvInfo:
    """A 2-D convolution as its file records it.

    ``name`` is the layer (:meth:`Model.layers`) whose value is the convolution's output where the file records
    one; ``weight_name`` the parameter or initialiser holding its weight, ``shape`` that weight's shape (out
    channels, in channels / groups, kernel height, kernel width). ``padding`` is (top, left, bottom, right), or
    the file's ``"same"``/``"valid"`` rule where the amounts depend on the input's size. ``bn_folded``: whether
    a BatchNorm was folded into the weight (``None`` where the file cannot say).
    """

    name: str
    weight_name: str
    shape: tuple[int, int, int, int]
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] | str = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    bn_folded: bool | None = False

    @property
    def in_channels(self) -> int:
        return self.shape[1] * self.groups

    @property
    def depthwise(self) -> bool:
        """One input channel per filter, every input channel its own group (MobileNet's depthwise conv)."""
        return self.groups > 1 and self.shape[1] == 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight_name": self.weight_name,
            "shape": list(self.shape),
            "groups": self.groups,
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "depthwise": self.depthwise,
            "bn_folded": self.bn_folded,
        }


def torch_padding(
    padding: Any, kernel: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int, int, int] | str:
    """``nn.Conv2d``'s ``padding`` (ints, or ``"same"``/``"valid"``) as (top, left, bottom, right).

    ``"same"`` is resolved as torch pads it at stride 1: the total split with the odd pixel at the end.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            return padding
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2)
    pad_h, pad_w = (int(padding), int(padding)) if isinstance(padding, int) else (int(p) for p in padding)
    return (pad_h, pad_w, pad_h, pad_w)


def pair(value: Any) -> tuple[int, int]:
    """An int or a 1- or 2-long sequence as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    values = [int(v) for v in value]
    return (values[0], values[-1])


@dataclass
class ModelCard:
    """What the file alone does not say: a title, input size, normalisation and labels."""

    title: str
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    labels: list[str] = field(default_factory=list)
    default_layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Forward:
    """What :meth:`Model.forward` returns: logits (NxK, ``None`` if not asked for), activations by layer."""

    logits: torch.Tensor | None
    activations: dict[str, torch.Tensor]


class Model(ABC):
    """A loaded image classifier. Subclasses implement one file format."""

    format: str = ""

    def __init__(self, model_id: str, path: Path, card: ModelCard) -> None:
        self.id = model_id
        self.path = Path(path)
        self.card = card
        self._normalisers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- description -------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.card.title

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.card.input_size)  # type: ignore[return-value]

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def capabilities(self) -> frozenset[str]:
        """Subset of :data:`convlens.methods.NEEDS` this model supports."""
        return frozenset({"gradients", "layers", "relu_rules"})

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def to_json(self, with_layers: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "format": self.format,
            "file": self.path.name,
            "input_size": list(self.input_size),
            "num_classes": len(self.labels),
            "capabilities": sorted(self.capabilities),
            "default_layer": self.suggest_layer(),
        }
        if with_layers:
            data["layers"] = [layer.to_json() for layer in self.layers()]
        return data

    # -- layers ------------------------------------------------------------------------------------
    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """The named hidden layers, in execution order."""

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers()]

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers():
            if layer.name == name:
                return layer
        raise BadInput("layer", f"model {self.id!r} has no layer {name!r}")

    def suggest_layer(self, depth: float = 0.6) -> str | None:
        """A sensible default layer: the card's ``default_layer``, else the spatial layer at ``depth`` of the way."""
        if self.card.default_layer:
            return self.card.default_layer
        spatial = [layer for layer in self.layers() if len(layer.shape) == 3]
        if not spatial:
            return None
        return spatial[min(len(spatial) - 1, int(depth * len(spatial)))].name

    # -- weights -----------------------------------------------------------------------------------
    def conv_layers(self) -> list[ConvInfo]:
        """The model's 2-D convolutions whose weights the file holds, in file order (none by default)."""
        return []

    def conv_layer(self, name: str) -> ConvInfo:
        """The convolution ``name``; a name that is no convolution of this model is a ``BadInput``."""
        for conv in self.conv_layers():
            if conv.name == name:
                return conv
        raise BadInput("layer", f"{name!r} is not a convolution of model {self.id!r}")

    def conv_weight(self, name: str) -> np.ndarray:
        """The weight of convolution ``name`` as stored in the file: float32, (out, in / groups, kh, kw)."""
        weight = self._read_conv_weight(self.conv_layer(name))
        return np.array(weight, dtype=np.float32, copy=True)

    def _read_conv_weight(self, conv: ConvInfo) -> np.ndarray:
        """The weight of ``conv``, one of :meth:`conv_layers`; formats that list convolutions read it."""
        raise BadInput("layer", f"model {self.id!r} cannot read its convolution weights")

    # -- computation -------------------------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std(images.dtype, images.device)
        return (images - mean) / std

    def _mean_std(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The card's mean and std as 1x3x1x1 tensors, made once per dtype and device.

        Optimisation steps normalise twice each; building the tensors from lists each time cost ~7% of a
        128-px style-transfer step in a server (a small allocation that waits for the GIL).
        """
        key = (dtype, device, tuple(self.card.mean), tuple(self.card.std))
        found = self._normalisers.get(key)
        if found is None:
            with torch.inference_mode(False):  # normal tensors, usable later under autograd
                found = tuple(
                    torch.tensor(values, dtype=dtype, device=device).view(1, 3, 1, 1)
                    for values in (self.card.mean, self.card.std)
                )
            self._normalisers[key] = found
        return found

    @abstractmethod
    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[str] = (),
        *,
        logits: bool = True,
        relu_rule: str = "gradient",
    ) -> Forward:
        """Logits and the activations at ``layers`` for Nx3xHxW images in [0, 1], differentiable.

        With ``logits=False`` only what ``layers`` need is computed and ``Forward.logits`` is ``None``: the
        cheap way for a method that looks at hidden layers only. It needs at least one layer
        (:meth:`_check_request`). ``relu_rule`` is how gradients pass back through the rectifiers (ReLU,
        ReLU6, clips at 0): ``gradient``, ``deconvnet`` or ``guided`` (:mod:`convlens.models.rectifiers`);
        the forward values are the same under every rule.
        """

    def _check_request(self, layers: Sequence[str], logits: bool, relu_rule: str = "gradient") -> None:
        """Refuse a forward that would return nothing (``logits=False`` with no layers) or an unknown rule."""
        if not logits and not layers:
            raise BadInput("layers", "a forward without logits needs at least one layer")
        check_rule(relu_rule)
        if relu_rule != "gradient" and "relu_rules" not in self.capabilities:
            raise BadInput("relu_rule", f"model {self.id!r} cannot change its backward rules", status=422)

    def logits(self, images: torch.Tensor | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Forward-only logits (NxK numpy) for a batch of images in [0, 1], run in chunks of ``batch_size``."""
        tensor = torch.as_tensor(images, dtype=torch.float32)
        outputs = []
        with torch.inference_mode():
            for start in range(0, tensor.shape[0], batch_size):
                result = self.forward(tensor[start : start + batch_size], logits=True)
                outputs.append(result.logits.float().cpu().numpy())
        return np.concatenate(outputs, axis=0)

    def predict(self, image: torch.Tensor | np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        """Top-``k`` classes of one 1x3xHxW image: index, label and probability."""
        logits = self.logits(image)[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:k]
        return [{"index": int(i), "label": self.label(int(i)), "probability": float(probs[i])} for i in top]

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"
