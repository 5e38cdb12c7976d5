"""Networks a method trained inside its job, kept as convlens models once the job ends.

A method hands them back in ``Result.models``; the run's end writes each as ONNX, TorchScript and a card into
convlens' own folder of trained models (``Config.trained_dir``), which the model store reads like any models
folder, so every other method runs on them. Files are named ``<job id>-<name>.onnx|.pt|.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .export import write_traced_onnx

FORMATS = (".onnx", ".pt")


@dataclass
class TrainedModel:
    """A trained network as a convlens model: ``module`` takes Nx3xHxW pixels already normalised by ``mean`` and
    ``std`` (convlens models take pictures in [0, 1]) and returns N x classes logits; ``example`` is one input
    (1x3xHxW, or a batch) it was checked on; ``description`` says how it was trained."""

    module: nn.Module
    title: str
    input_size: tuple[int, int]
    labels: list[str]
    example: torch.Tensor
    description: str = ""
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def card(self, job_id: str, name: str) -> dict[str, Any]:
        """The card written beside the files (:mod:`convlens.models.store` reads it)."""
        return {
            "title": self.title,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "labels": list(self.labels),
            "description": self.description,
            "trained_by": {"job": job_id, "name": name},
            **self.extra,
        }


def model_stem(job_id: str, name: str) -> str:
    """The files' stem (also the id the bare name resolves to in the model store)."""
    return f"{job_id}-{name}"


def write_trained(folder: Path, job_id: str, models: dict[str, TrainedModel]) -> list[str]:
    """Write each model as ``<job id>-<name>.onnx``, ``.pt`` and ``.json`` into ``folder``; their model ids.

    Each file is written under a hidden name and renamed, so the store, which skips hidden files, never lists
    a half-written one; the card comes first, so a listed file always has its card.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    for name, trained in models.items():
        stem = model_stem(job_id, name)
        module = trained.module.eval()
        example = trained.example if trained.example.shape[0] > 1 else trained.example.repeat(2, 1, 1, 1)
        card = json.dumps(trained.card(job_id, name), indent=2)
        _replace(folder / f"{stem}.json", lambda path, text=card: path.write_text(text, encoding="utf-8"))
        _replace(folder / f"{stem}.pt", partial(_write_torchscript, module, example))
        _replace(folder / f"{stem}.onnx", partial(_write_onnx, module, example))
        ids += [f"{stem}{suffix}" for suffix in FORMATS]
    return ids


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    hidden = path.with_name(f".{path.name}.tmp")
    write(hidden)
    hidden.replace(path)


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # Traced, not scripted: a demo's module is plain tensor code; TorchScript's deprecation warnings say nothing
    # a user can act on.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, (example,)), str(path))


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter writes opset 17 directly (onnx2torch's highest) in 0.7 s for a small net;
    # the dynamo exporter's lowest opset is 18 and it took 3 s on these 2 cores.
    write_traced_onnx(module, example, path, {0: "batch"})
