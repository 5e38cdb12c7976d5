"""The model files in the models folders, found by suffix, each loaded on first use with its card.

A model's id is its file name (``efficientnet_lite0.onnx``); a bare stem (``efficientnet_lite0``) means the
first of its ``.onnx``, ``.pt2`` and ``.pt`` files. A card, ``<file name>.json`` or else ``<stem>.json``
beside the file, supplies what the file does not say: title, input size, normalisation, labels. The default
model's files with no card beside them (written into a per-user folder, or found in a user's) get the card
convlens ships.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, NotFound
from .base import Model, ModelCard

FORMATS = {".onnx": "onnx", ".pt2": "export", ".pt": "torchscript", ".ts": "torchscript"}
"""Model file suffixes and the backend that reads each."""

STEM_PREFERENCE = (".onnx", ".pt2", ".pt")
"""The suffix a bare stem resolves to, first existing wins."""

CARD_FIELDS = ("title", "input_size", "mean", "std", "labels", "default_layer")

_PACKAGE = Path(__file__).resolve().parents[1]
SHIPPED_CARDS = _PACKAGE / "data" if (_PACKAGE / "data").is_dir() else _PACKAGE.parents[1] / "models"
"""Where the default model's card and labels ship: an installed package's ``data/`` (the wheel copies them from
``models/``), else the source checkout's ``models/``."""


class ModelStore:
    """Model files in ``default_dir`` and ``dirs`` (earlier folders win on equal file names), loaded lazily and
    cached. ``default_dir`` is convlens' own folder, the only one :meth:`ensure_default` writes into."""

    def __init__(self, dirs: Sequence[str | Path], default_dir: str | Path | None = None) -> None:
        self.default_dir = Path(default_dir) if default_dir is not None else None
        self.dirs: list[Path] = []
        for directory in [*([self.default_dir] if self.default_dir else []), *map(Path, dirs)]:
            if not any(_same(directory, seen) for seen in self.dirs):
                self.dirs.append(directory)
        self._models: dict[str, Model] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- discovery ---------------------------------------------------------------------------------
    def files(self) -> dict[str, Path]:
        """Model id → path, for every model file in the folders now (hidden and temporary files left out)."""
        found: dict[str, Path] = {}
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.suffix in FORMATS and not path.name.startswith(".") and path.is_file():
                    found.setdefault(path.name, path)
        return found

    def ids(self) -> list[str]:
        return list(self.files())

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self.resolve(model_id, self.files()) is not None

    @property
    def default_id(self) -> str:
        """The default model's ONNX file when present, else the first model; NotFound when there is none."""
        from .default import DEFAULT_MODEL_ID

        files = self.files()
        if DEFAULT_MODEL_ID in files:
            return DEFAULT_MODEL_ID
        if not files:
            raise NotFound("model", f"no model files in {', '.join(str(d) for d in self.dirs)}")
        return next(iter(files))

    @staticmethod
    def resolve(model_id: str, files: dict[str, Path]) -> str | None:
        """The id ``model_id`` names: itself, or for a bare stem its first ``.onnx``/``.pt2``/``.pt`` file."""
        if model_id in files:
            return model_id
        for suffix in STEM_PREFERENCE:
            if f"{model_id}{suffix}" in files:
                return f"{model_id}{suffix}"
        return None

    # -- loading -----------------------------------------------------------------------------------
    def get(self, model_id: str) -> Model:
        """The loaded model; each file is loaded once, by one thread, while others wait for it."""
        files = self.files()
        resolved = self.resolve(model_id, files) if isinstance(model_id, str) else None
        if resolved is None:
            raise NotFound("model", f"unknown model {model_id!r}; expected one of {sorted(files)}")
        model = self._models.get(resolved)
        if model is not None:
            return model
        with self._lock:
            lock = self._locks.setdefault(resolved, threading.Lock())
        with lock:
            model = self._models.get(resolved)
            if model is None:
                model = load_model(files[resolved], model_id=resolved)
                self._models[resolved] = model
        return model

    def ensure_default(self, log: Callable[[str], None] = print) -> None:
        """Write the default model's files missing from ``default_dir``; never into a folder of ``dirs``."""
        from .default import ensure_default_models

        if self.default_dir is not None:
            ensure_default_models(self.default_dir, log)


def _same(a: Path, b: Path) -> bool:
    return a == b or (a.exists() and b.exists() and a.samefile(b))


def load_model(path: str | Path, card: ModelCard | None = None, model_id: str | None = None) -> Model:
    """Load the model file at ``path`` with the backend its suffix names.

    Without ``card``, the card beside the file is read; what it leaves out is filled in from the file (its
    fixed input size, ``class N`` labels for each output) or the ImageNet defaults. For ONNX and torch.export
    files ``card.extra["dynamic_size"]`` says whether the file takes inputs of any size.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound("model", f"no model file {str(path)!r}")
    backend = _backend(path)
    card_file = card_path(path) if card is None else None
    if card is None:
        spec = _read_card(card_file) if card_file else {}
        card = _card_from(spec, card_file or path, path.stem)
        size_given, dynamic_given = "input_size" in spec, "dynamic_size" in spec
    else:
        size_given = dynamic_given = True
    try:
        model = backend(model_id or path.name, path, card)
    except BadInput:
        raise
    except Exception as error:  # noqa: BLE001 - any loader failure means the file cannot be used
        raise BadInput("model", f"cannot load {path.name} ({type(error).__name__}: {error})") from None
    if hasattr(model, "fixed_input_size"):
        fixed = model.fixed_input_size
        if fixed and not size_given:
            card.input_size = fixed
        elif fixed and tuple(card.input_size) != tuple(fixed):
            where = card_file.name if card_file else "the card"
            raise BadInput(
                "model",
                f"{where} says input_size {list(card.input_size)}, but {path.name} takes {list(fixed)}",
            )
        if not dynamic_given:
            card.extra["dynamic_size"] = fixed is None
    if not card.labels:
        zeros = np.zeros((1, 3, *model.input_size), dtype=np.float32)
        card.labels = [f"class {index}" for index in range(model.logits(zeros).shape[1])]
    return model


def _backend(path: Path) -> type[Model]:
    kind = FORMATS.get(path.suffix)
    if kind == "onnx":
        from .onnx import OnnxModel

        return OnnxModel
    if kind == "export":
        from .exported import ExportedModel

        return ExportedModel
    if kind == "torchscript":
        from .torchscript import TorchScriptModel

        return TorchScriptModel
    raise BadInput("model", f"{path.name}: unknown model format; expected one of {sorted(FORMATS)}")


def card_path(model_path: Path) -> Path | None:
    """``<file name>.json`` beside the model, else ``<stem>.json``, else for the default model's files the card
    in :data:`SHIPPED_CARDS`, else ``None``."""
    from .default import DEFAULT_MODEL_STEM

    for candidate in (model_path.with_name(f"{model_path.name}.json"), model_path.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    shipped = SHIPPED_CARDS / f"{DEFAULT_MODEL_STEM}.json"
    if model_path.stem == DEFAULT_MODEL_STEM and shipped.is_file():
        return shipped
    return None


def _read_card(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput("model", f"card {path.name} is not readable JSON ({error})") from None
    if not isinstance(spec, dict):
        raise BadInput("model", f"card {path.name} is not a JSON object")
    return spec


def _card_from(spec: dict[str, Any], card_file: Path, stem: str) -> ModelCard:
    """A :class:`ModelCard` from the JSON object in ``card_file``, defaults for what it leaves out."""
    name = card_file.name
    card = ModelCard(title=str(spec.get("title") or stem))
    if "input_size" in spec:
        card.input_size = _pair(spec["input_size"], name)
    for key in ("mean", "std"):
        if key in spec:
            setattr(card, key, _triple(spec[key], key, name))
    if "labels" in spec:
        card.labels = _labels(spec["labels"], card_file)
    if spec.get("default_layer") is not None:
        card.default_layer = str(spec["default_layer"])
    card.extra = {key: value for key, value in spec.items() if key not in CARD_FIELDS}
    if "bagnet" in spec:
        card.extra["bagnet"] = _bagnet(spec["bagnet"], name)
    return card


def _bagnet(value: Any, card_name: str) -> dict[str, Any]:
    """The card's ``bagnet`` object: ``patch`` and ``stride`` in pixels, ``layer`` the logit map's name."""
    if not isinstance(value, dict):
        raise BadInput("model", f"card {card_name}: bagnet must be an object, not {value!r}")
    for key in ("patch", "stride"):
        number = value.get(key)
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise BadInput(
                "model",
                f"card {card_name}: bagnet.{key} must be a whole number of pixels >= 1, not {number!r}",
            )
    if not isinstance(value.get("layer"), str) or not value["layer"]:
        raise BadInput(
            "model",
            f"card {card_name}: bagnet.layer must name the layer of logit maps, not {value.get('layer')!r}",
        )
    return {"patch": value["patch"], "stride": value["stride"], "layer": value["layer"]}


def _pair(value: Any, card_name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise BadInput(
            "model", f"card {card_name}: input_size must be [height, width] in pixels, not {value!r}"
        )
    return int(value[0]), int(value[1])


def _triple(value: Any, key: str, card_name: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int | float) for v in value)
    ):
        raise BadInput("model", f"card {card_name}: {key} must be three numbers (R, G, B), not {value!r}")
    if key == "std" and not all(v > 0 for v in value):
        raise BadInput("model", f"card {card_name}: std must be positive, not {value!r}")
    return float(value[0]), float(value[1]), float(value[2])


def _labels(value: Any, card_file: Path) -> list[str]:
    if isinstance(value, list):
        return [str(label) for label in value]
    if not isinstance(value, str):
        raise BadInput("model", f"card {card_file.name}: labels must be a file name or a list, not {value!r}")
    labels_file = card_file.parent / value
    try:
        lines = labels_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(
            "model", f"card {card_file.name}: cannot read labels file {value!r} ({error})"
        ) from None
    # One label per line, so a blank line inside the file is a (nameless) class; blank lines at the end are not.
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]
