"""A torch module written out as the three files convlens reads (``.onnx``, ``.pt``, ``.pt2``) with its card.

The module is a torchvision classifier by name (``resnet18``), ``module:attr`` of the user's own (a class or a
function taking no arguments, or an ``nn.Module``), or a module object. Each format is written on its own: one that
fails is reported with its reason and the others are still written. The ``.onnx`` file comes from the
``torch.export`` program, as the ``.pt2`` does; where no program can be made, from the TorchScript-based exporter
(a trace, as the ``.pt`` file is), and the report says so and why. Every file written is then loaded back
through :class:`convlens.models.store.ModelStore` and its logits compared with the eager module's; a file whose
logits differ is removed and reported. The files take normalised input, as the README's export snippet writes
them; the card's mean and std say what convlens applies to an RGB picture in [0, 1] first.

Nothing can be downloaded here, so torchvision models are built with ``weights=None`` (random, seeded weights)
unless ``weights`` names a state-dict file.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput
from .models.default import ONNX_OPSET, ModuleWriter, _write_atomically

FORMATS = ("onnx", "pt", "pt2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TOLERANCE = {"pt": 1e-4, "pt2": 1e-4, "onnx": 1e-3}
"""Largest |Δlogit| from the eager module, relative to the largest |logit| (at least 1), for a file to be kept.
ONNX is looser: its exporter and ONNX Runtime reorder float sums (README, "Exporting your own model")."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ExportReport:
    """What :func:`export_model` did: the files kept, each failed format's reason, and each file's largest
    |Δlogit| from the eager module (loaded back through convlens)."""

    name: str
    out_dir: Path
    card: Path
    num_classes: int
    files: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    onnx_exporter: str | None = None
    """Which exporter wrote the ``.onnx`` file: ``"dynamo"`` (from the ``torch.export`` program) or
    ``"torchscript"`` (a trace, where no program could be made); None when none was written."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out": str(self.out_dir),
            "card": str(self.card),
            "num_classes": self.num_classes,
            "files": {fmt: str(path) for fmt, path in self.files.items()},
            "errors": self.errors,
            "max_abs_diff": self.max_abs_diff,
            "notes": self.notes,
            "onnx_exporter": self.onnx_exporter,
        }


def export_model(
    module_or_spec: Any,
    out_dir: str | Path,
    name: str | None = None,
    input_size: Sequence[int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    labels: str | Path | Sequence[str] | None = None,
    weights: str | Path | None = None,
    title: str | None = None,
    formats: Sequence[str] = FORMATS,
) -> ExportReport:
    """Write ``<name>.onnx``, ``<name>.pt``, ``<name>.pt2`` and the card ``<name>.json`` (plus
    ``<name>.labels.txt``) into ``out_dir``; :class:`BadInput` for a module that is not an image classifier or
    a wrong argument, a format that cannot be written is in :attr:`ExportReport.errors` instead.

    ``labels`` is a text file (one class a line) or a list; by default ImageNet's for a torchvision model with
    1000 classes, else none (convlens shows ``class N``).
    """
    import torch

    size = _size(input_size)
    mean, std = _triple(mean, "mean"), _triple(std, "std")
    formats = _formats(formats)
    out_dir = _out_dir(out_dir)
    module, default_name = _module(module_or_spec)
    name = _name(name or default_name)
    torchvision_name = isinstance(module_or_spec, str) and ":" not in module_or_spec
    notes: list[str] = []
    if weights is not None:
        _load_weights(module, Path(weights))
    elif torchvision_name:
        notes.append(
            f"{module_or_spec} has random weights (weights=None, seeded; nothing is downloaded here)"
        )
    module.eval()
    num_classes = _num_classes(module, size, mean, std)
    label_list = _labels(labels, num_classes, imagenet=torchvision_name)

    # Made only now: a module refused above leaves no folder behind.
    _make_folder(out_dir)
    card_path = out_dir / f"{name}.json"
    report = ExportReport(name, out_dir, card_path, num_classes, notes=notes)
    card: dict[str, Any] = {
        "title": title or name,
        "input_size": list(size),
        "mean": list(mean),
        "std": list(std),
    }
    if label_list is not None:
        labels_path = out_dir / f"{name}.labels.txt"
        labels_path.write_text("".join(f"{label}\n" for label in label_list), encoding="utf-8")
        card["labels"] = labels_path.name
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

    # Batch 2: torch.export would make a batch of 1 a constant.
    example = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    writer = _Writer(module, (example - _column(mean)) / _column(std))
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", torch.jit.TracerWarning)
                _write_atomically(path, getattr(writer, f"write_{fmt}"))
        except Exception as error:  # noqa: BLE001 - any exporter failure is this format's, reported
            report.errors[fmt] = _reason(error)
            path.unlink(missing_ok=True)  # an earlier export's file would disagree with this report
            continue
        report.files[fmt] = path
        if fmt == "onnx":
            report.onnx_exporter = "dynamo" if writer.onnx_fallback is None else "torchscript"
            if writer.onnx_fallback is not None:
                report.notes.append(
                    f"onnx: written by the TorchScript-based exporter (a trace) since {writer.onnx_fallback}"
                )
        for warning in caught:
            if issubclass(warning.category, torch.jit.TracerWarning):
                # A traced branch or Python number is fixed to the example's: right for it, maybe not for others.
                report.notes.append(f"{fmt}: {str(warning.message).split('. ')[0]}")
                break
    _check_logits(report, module, example, mean, std)
    if "onnx" not in report.files:
        report.onnx_exporter = None
    return report


class _ExportFailed(RuntimeError):
    """The ``torch.export`` program could not be made: the reason for both the ``.pt2`` and ``.onnx`` files."""


class _Writer(ModuleWriter):
    """The module's files; a failure of its ``torch.export`` program is kept, to name it for both files it makes,
    and the ``.onnx`` file is then traced instead."""

    def __init__(self, module: Any, example: Any) -> None:
        super().__init__(module, example)
        self._program_error: Exception | None = None
        self.onnx_fallback: str | None = None
        """Why the ``.onnx`` file written was traced, not made from the ``torch.export`` program."""

    def write_onnx(self, path: Path) -> None:
        try:
            super().write_onnx(path)
        except _ExportFailed as failure:
            try:
                write_traced_onnx(self.module, self.example, path, {0: "batch", 2: "height", 3: "width"})
            except Exception as error:  # noqa: BLE001 - the reason both exporters failed is the report's
                raise _ExportFailed(
                    f"{failure}; the TorchScript-based exporter failed too ({_reason(error)})"
                ) from None
            self.onnx_fallback = str(failure)

    @property
    def program(self) -> Any:
        """The module exported with dynamic batch, and dynamic height and width where the module allows it."""
        if self._program is None and self._program_error is None:
            try:
                self._program = self._export()
            except Exception as error:  # noqa: BLE001 - kept, so the .onnx file names the same reason
                self._program_error = error
        if self._program_error is not None:
            reason = _reason(self._program_error)
            if "data-dependent" in reason:
                reason += "; its forward branches on a tensor's value (data-dependent Python control flow)"
            raise _ExportFailed(f"torch.export failed ({reason})")
        return self._program

    def _export(self) -> Any:
        import torch
        from torch.export import Dim

        batch = Dim("batch", min=1)
        height, width = self.example.shape[2:]
        tries = [{0: batch}]
        # torch.export takes no intermediate size to be 1, so a stride-32 net needs 33 pixels at least.
        if height >= 33 and width >= 33:
            tries.insert(0, {0: batch, 2: Dim("height", min=33), 3: Dim("width", min=33)})
        # On a failure torch.export prints the partial graph to stderr and its symbolic-shape logger warns; the
        # report names the failure in one line instead.
        shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
        level = shapes_log.level
        shapes_log.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                for dims in tries[:-1]:
                    try:
                        return torch.export.export(self.module, (self.example,), dynamic_shapes=(dims,))
                    except Exception:  # noqa: BLE001, S112 - the module may fix its size; a fixed size is next
                        continue
                return torch.export.export(self.module, (self.example,), dynamic_shapes=(tries[-1],))
        finally:
            shapes_log.setLevel(level)


def write_traced_onnx(module: Any, example: Any, path: Path, axes: dict[int, str]) -> None:
    """``module`` traced to ONNX at :data:`ONNX_OPSET` (onnx2torch's highest) by the TorchScript-based exporter,
    its ``images`` input free along ``axes`` (``{0: "batch"}``, ...), its ``logits`` along the batch."""
    import torch

    # Its deprecation warnings say nothing a user can act on; its TracerWarnings are kept, as the .pt file's are.
    with warnings.catch_warnings(), torch.no_grad(), _without_onnx_graph_dump():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": axes, "logits": {0: "batch"}},
        )


@contextlib.contextmanager
def _without_onnx_graph_dump():
    """The TorchScript-based exporter prints its whole graph from C++ when an operator has no ONNX form, whatever
    ``verbose`` says, and to stdout, where the CLI writes its JSON: sent to stderr, and that to /dev/null, here."""
    import torch

    torch._C._jit_set_onnx_log_output_stream("stderr")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        torch._C._jit_set_onnx_log_output_stream("stdout")


def _check_logits(report: ExportReport, module: Any, example: Any, mean, std) -> None:
    """Load each written file through a :class:`ModelStore` on ``out_dir``; drop those whose logits differ."""
    import numpy as np
    import torch

    from .models.store import ModelStore

    with torch.no_grad():
        expected = module((example - _column(mean)) / _column(std)).float().numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    store = ModelStore([report.out_dir])
    for fmt, path in list(report.files.items()):
        try:
            got = store.get(path.name).logits(example)
        except Exception as error:  # noqa: BLE001 - a file convlens cannot read is as good as not written
            report.errors[fmt] = f"written, but convlens cannot load it: {_reason(error)}"
        else:
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            report.max_abs_diff[fmt] = diff
            if diff <= TOLERANCE[fmt] * scale:
                continue
            report.errors[fmt] = f"its logits differ from the eager module's by up to {diff:.3g}"
        path.unlink(missing_ok=True)
        del report.files[fmt]


def _module(spec: Any) -> tuple[Any, str]:
    """The ``nn.Module`` that ``spec`` names, and a default file name for it."""
    import torch

    if isinstance(spec, torch.nn.Module):
        return spec, type(spec).__name__.lower()
    if not isinstance(spec, str) or not spec:
        raise BadInput(
            "model", f"expected a torchvision model name, module:attr or an nn.Module, not {spec!r}"
        )
    if ":" in spec:
        return _user_module(spec), spec.rsplit(":", 1)[1].rsplit(".", 1)[-1].lower()
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if spec not in names:
        raise BadInput(
            "model",
            f"{spec!r} is not a torchvision classification model (see torchvision.models.list_models()), "
            "nor module:attr",
        )
    torch.manual_seed(0)
    return torchvision.models.get_model(spec, weights=None), spec


def _user_module(spec: str) -> Any:
    import torch

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInput("model", f"expected module:attr (my_pkg.nets:Net), got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure importing the user's module is the spec's fault
        raise BadInput("model", f"cannot import {module_name!r} ({_reason(error)})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInput("model", f"{module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not isinstance(target, torch.nn.Module):
        if not callable(target):
            raise BadInput("model", f"{spec} is a {type(target).__name__}, not an nn.Module or a callable")
        try:
            target = target()
        except Exception as error:  # noqa: BLE001 - the user's constructor; its message says why
            raise BadInput(
                "model", f"{spec}() failed ({_reason(error)}); it must take no arguments"
            ) from None
    if not isinstance(target, torch.nn.Module):
        raise BadInput("model", f"{spec}() returned a {type(target).__name__}, not an nn.Module")
    return target


def _load_weights(module: Any, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable, not a state dict, or not a torch file
        raise BadInput("weights", f"cannot read {str(path)!r} ({_reason(error)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadInput("weights", f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - missing or unexpected keys, wrong shapes
        raise BadInput("weights", f"{str(path)!r} does not fit the model ({_reason(error)})") from None


def _num_classes(module: Any, size: tuple[int, int], mean, std) -> int:
    """N, when the module maps a 1x3xHxW picture to 1xN logits; else :class:`BadInput` naming ``model``."""
    import torch

    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    shape = f"1x3x{size[0]}x{size[1]}"
    try:
        with torch.no_grad():
            output = module((image - _column(mean)) / _column(std))
    except Exception as error:  # noqa: BLE001 - the user's forward; its message says why
        raise BadInput("model", f"its forward fails on a {shape} input ({_reason(error)})") from None
    if (
        not isinstance(output, torch.Tensor)
        or output.ndim != 2
        or output.shape[0] != 1
        or output.shape[1] < 1
    ):
        got = "x".join(map(str, output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__
        raise BadInput(
            "model", f"not an image classifier: for a {shape} input it returns {got}, not 1xN logits"
        )
    if not output.is_floating_point():
        raise BadInput("model", f"not an image classifier: its output is {output.dtype}, not float logits")
    return int(output.shape[1])


def _labels(labels: Any, num_classes: int, imagenet: bool) -> list[str] | None:
    if labels is None:
        if not (imagenet and num_classes == 1000):
            return None
        from .models.store import SHIPPED_CARDS

        labels = SHIPPED_CARDS / "imagenet_classes.txt"
    if isinstance(labels, str | Path):
        try:
            lines = Path(labels).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise BadInput("labels", f"cannot read {str(labels)!r} ({error})") from None
        while lines and not lines[-1].strip():
            lines.pop()
        labels = [line.strip() for line in lines]
    labels = [str(label) for label in labels]
    if any("\n" in label for label in labels):
        raise BadInput("labels", "a label may not contain a line break")
    if len(labels) != num_classes:
        raise BadInput("labels", f"{len(labels)} labels for a model with {num_classes} logits")
    return labels


def _size(value: Sequence[int]) -> tuple[int, int]:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in values
    ):
        raise BadInput("size", f"expected a height and width of 1 to 4096 pixels, got {value!r}")
    return values[0], values[1]


def _triple(value: Sequence[float], key: str) -> tuple[float, float, float]:
    values = list(value) if isinstance(value, list | tuple) else []
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise BadInput(key, f"expected three numbers (R, G, B), got {value!r}")
    if key == "std" and not all(v > 0 for v in values):
        raise BadInput(key, f"must be positive, got {value!r}")
    return float(values[0]), float(values[1]), float(values[2])


def _formats(formats: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in chosen if fmt not in FORMATS]
    if unknown or not chosen:
        raise BadInput("formats", f"expected some of {list(FORMATS)}, got {list(formats)!r}")
    return chosen


def _out_dir(value: str | Path) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise BadInput("out", f"{str(path)!r} is a file, not a folder")
    return path


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInput("out", f"cannot make the folder {str(path)!r} ({error.strerror})") from None


def _name(value: str) -> str:
    if not _NAME.fullmatch(value) or Path(value).suffix in {".onnx", ".pt", ".pt2", ".ts", ".json"}:
        raise BadInput(
            "name", f"expected a file stem of letters, digits, '_', '.', '-' (no suffix), got {value!r}"
        )
    return value


def _column(values: Sequence[float]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, with its type: exporter messages run to pages."""
    if isinstance(error, _ExportFailed):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
