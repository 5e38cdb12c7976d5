"""Method parameters declared as data.

One declaration gives the browser its form (``to_json``), the server and CLI their
validation (``validate``) and the CLI its ``key=value`` parsing (``parse``). Values
that depend on the model (a layer name, a class index) are checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BadInput

if TYPE_CHECKING:
    from .models.base import Model

KINDS = ("int", "float", "bool", "choice", "string", "layer", "class", "image", "dataset", "models")
EVERY_MODEL = "*"
"""The value of a ``models`` parameter that means every model the server's model store lists."""
MAX_MODELS = 16
"""The most model ids a ``models`` parameter takes by default (its ``maximum``)."""
MAX_MODEL_ID = 255
"""The longest model id, in characters: a file name."""
RUN_MODEL_PLACES = ("first", "excluded")
MAX_INT = 2**53
"""The largest magnitude of an ``int`` or ``class`` value: every integer up to it is exact as a JSON number."""
SCHEMA_TYPES = {
    "int": "integer",
    "class": "integer",
    "float": "number",
    "bool": "boolean",
    "string": "string",
    "layer": "string",
    "image": "string",
    "dataset": "string",
}


def plain_int(text: str) -> int | None:
    """``text`` as a non-negative integer when it is 1 to 9 ASCII digits, else ``None``.

    ASCII only: ``str.isdigit()`` also takes "１２", "١٢" and "²"; and ``int()`` refuses strings of over 4,300
    digits with a ValueError, which would be a 500 rather than the caller's 4xx.
    """
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    return None


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``choice``, ``string``,
    ``layer`` (a named layer of the model), ``class`` (an output class index) or
    ``image`` (the id of a sample or upload: a second picture, such as a style image;
    the method finds its pixels in ``ctx.pictures[name]``) or ``dataset`` (the id of a data set; the method finds
    the :class:`convlens.datasets.Dataset` in ``ctx.datasets[name]``) or ``models`` (a list of model ids as
    ``GET /api/models`` lists them, or ``"*"`` for every model the server's store lists; the method finds the
    loaded :class:`~convlens.models.base.Model` objects in ``ctx.models[name]``, in the order given; ``maximum``
    is the most ids a list may hold, ``run_model`` where the run's own model goes: ``"first"``, before the
    others, or ``"excluded"``, never among them).
    A ``default`` of ``None`` with ``nullable`` means "let the method decide"
    (the top predicted class, the model's suggested layer).
    ``channel_of`` names the ``layer`` parameter an ``int`` indexes the channels of (the units of a flat
    layer): with that layer chosen, a value past its last channel is refused when the run is requested.
    Negative values are left to ``minimum`` (``-1`` often means "the strongest").
    """

    name: str
    kind: str
    default: Any = None
    title: str = ""
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    channel_of: str | None = None
    run_model: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}")
        if (self.kind == "models") != (self.run_model in RUN_MODEL_PLACES):
            raise ValueError(
                f"parameter {self.name!r}: run_model is one of {list(RUN_MODEL_PLACES)} for models, else None"
            )
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a choice needs choices")

    def to_json(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "name": self.name,
            "type": self.kind,
            "title": self.title or self.name.replace("_", " ").capitalize(),
            "description": self.help,
            "default": self.default,
            "nullable": self.nullable,
        }
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.channel_of:
            schema["channel_of"] = self.channel_of
        if self.run_model:
            schema["run_model"] = self.run_model
            schema["every"] = EVERY_MODEL
        return schema

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of the values :meth:`check` accepts without a model (the OpenAPI document's)."""
        if self.kind == "models":
            names = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_ID}}
            names["maxItems"] = int(self.maximum if self.maximum is not None else MAX_MODELS)
            names["uniqueItems"] = True
            schema: dict[str, Any] = {"anyOf": [{"const": EVERY_MODEL}, names]}
        elif self.kind == "choice":
            schema = {"enum": list(self.choices)}
        else:
            schema = {"type": SCHEMA_TYPES[self.kind]}
            if self.kind in ("int", "class"):
                schema |= {"minimum": -MAX_INT, "maximum": MAX_INT}
            if self.kind in ("image", "dataset"):
                schema["minLength"] = 1
            if self.minimum is not None:
                schema["minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        schema["description"] = self.help or self.title or self.name
        if self.default is not None:
            schema["default"] = self.default
        if self.nullable:
            return {"anyOf": [schema, {"type": "null"}], "description": schema["description"]}
        return schema

    def parse(self, text: str) -> Any:
        """The value of a CLI ``key=value`` string, before validation."""
        if self.nullable and text.strip().lower() in ("", "none", "null", "auto"):
            return None
        if self.kind in ("int", "class"):
            try:
                return int(text)
            except ValueError:
                raise BadInput(f"params.{self.name}", f"expected an integer, got {text!r}") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise BadInput(f"params.{self.name}", f"expected a number, got {text!r}") from None
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise BadInput(f"params.{self.name}", f"expected true or false, got {text!r}")
        if self.kind == "choice" and all(isinstance(c, int) for c in self.choices):
            return self.parse_int_choice(text)
        if self.kind == "models":
            text = text.strip()
            if text == EVERY_MODEL:
                return EVERY_MODEL
            return [part.strip() for part in text.split(",")] if text else []
        return text

    def parse_int_choice(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise BadInput(
                f"params.{self.name}", f"expected one of {list(self.choices)}, got {text!r}"
            ) from None

    def check(self, value: Any, model: Model | None) -> Any:
        """``value`` made canonical, or ``BadInput`` naming ``params.<name>`` and why."""
        field = f"params.{self.name}"
        if value is None:
            if self.nullable:
                return None
            raise BadInput(field, "a value is required")
        if self.kind == "models":
            return _model_ids(field, value, int(self.maximum if self.maximum is not None else MAX_MODELS))
        if self.kind in ("int", "class"):
            value = _integer(field, value)
        elif self.kind == "float":
            value = _number(field, value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise BadInput(field, f"expected true or false, got {value!r}")
        elif self.kind in ("string", "layer", "image", "dataset"):
            if not isinstance(value, str):
                raise BadInput(field, f"expected a string, got {value!r}")
            if self.kind == "image" and not value:
                raise BadInput(field, "expected an image id (a sample or an upload)")
            if self.kind == "dataset" and not value:
                raise BadInput(field, "expected a data set id (see GET /api/datasets)")
        if self.kind == "choice" and value not in self.choices:
            raise BadInput(field, f"expected one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise BadInput(field, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise BadInput(field, f"must be at most {self.maximum}, got {value}")
        if model is not None and self.kind == "layer":
            names = model.layer_names()
            if value not in names:
                raise BadInput(field, f"model {model.id!r} has no layer {value!r}")
        if model is not None and self.kind == "class":
            count = len(model.labels)
            if not 0 <= value < count:
                raise BadInput(field, f"class index must be in [0, {count - 1}], got {value}")
        return value


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BadInput(field, f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise BadInput(field, f"expected an integer, got {value!r:.80}")
    if not -MAX_INT <= value <= MAX_INT:  # so a method's arithmetic and numpy's int64 never overflow
        raise BadInput(
            field, f"must be from {-MAX_INT} to {MAX_INT}, got an integer of {len(str(value))} digits"
        )
    return value


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(field, f"expected a number, got {value!r:.80}")
    try:
        number = float(value)  # an integer of 309 digits or more is too large for a float: OverflowError
    except OverflowError:
        raise BadInput(field, f"must be finite, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise BadInput(field, f"must be finite, got {value!r}")
    return number


def _model_ids(field: str, value: Any, most: int) -> str | list[str]:
    """``"*"``, or a list of at most ``most`` distinct model ids: printable strings, each a file name's length."""
    if value == EVERY_MODEL:
        return EVERY_MODEL
    if not isinstance(value, list):
        raise BadInput(
            field, f'expected a list of model ids or "{EVERY_MODEL}" (every model), got {value!r:.80}'
        )
    if len(value) > most:
        raise BadInput(field, f"at most {most} models, got {len(value)}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise BadInput(field, f"expected model ids (non-empty strings), got {item!r:.80}")
        # A lone surrogate from JSON's \ud800 or a control character is no file name; it is refused here
        # rather than failing later when written to a log or a result file.
        if len(item) > MAX_MODEL_ID or not item.isprintable():
            raise BadInput(field, f"{item!r:.80} is not a model id (see GET /api/models)")
    seen = set()
    for item in value:
        if item in seen:
            raise BadInput(field, f"model {item!r} is listed twice")
        seen.add(item)
    return list(value)


def Int(name: str, default: int | None, **kw: Any) -> Param:  # noqa: N802 - reads as a type in declarations
    return Param(name, "int", default, **kw)


def Float(name: str, default: float | None, **kw: Any) -> Param:  # noqa: N802
    return Param(name, "float", default, **kw)


def Bool(name: str, default: bool, **kw: Any) -> Param:  # noqa: N802
    return Param(name, "bool", default, **kw)


def Choice(name: str, default: Any, choices: Sequence[Any], **kw: Any) -> Param:  # noqa: N802
    return Param(name, "choice", default, choices=tuple(choices), **kw)


def Layer(name: str = "layer", **kw: Any) -> Param:  # noqa: N802
    """A layer of the model; ``None`` lets the method pick (see ``Model.suggest_layer``)."""
    kw.setdefault("nullable", True)
    return Param(name, "layer", None, **kw)


def Picture(name: str, default: str | None = None, **kw: Any) -> Param:  # noqa: N802
    """An image of the server's library (a sample id or an upload id); its pixels are ``ctx.pictures[name]``."""
    return Param(name, "image", default, **kw)


def Dataset(name: str = "dataset", default: str | None = "skimage_crops", **kw: Any) -> Param:  # noqa: N802
    """A data set of the server's library (:mod:`convlens.datasets`); the object is ``ctx.datasets[name]``."""
    return Param(name, "dataset", default, **kw)


def Models(  # noqa: N802
    name: str = "models", default: str | list[str] | None = EVERY_MODEL, *, run_model: str, **kw: Any
) -> Param:
    """Models of the server's store (ids, or ``"*"`` for all of them); the loaded ones are ``ctx.models[name]``.

    ``run_model``: ``"first"`` puts the run's own model before the chosen ones (and takes it out of them),
    ``"excluded"`` leaves it out of them (``"*"`` is then every other model).
    """
    kw.setdefault("nullable", default is None)
    kw.setdefault("maximum", MAX_MODELS)
    return Param(name, "models", default, run_model=run_model, **kw)


def ClassIndex(name: str = "target", **kw: Any) -> Param:  # noqa: N802
    """An output class; ``None`` means the model's top prediction for the image."""
    kw.setdefault("nullable", True)
    return Param(name, "class", None, **kw)


def validate(
    params: Sequence[Param], raw: Mapping[str, Any] | None, model: Model | None = None
) -> dict[str, Any]:
    """Every declared parameter's checked value, defaults filled in; unknown names are an error."""
    raw = dict(raw or {})
    known = {p.name for p in params}
    for name in raw:
        if name not in known:
            raise BadInput(f"params.{name}", f"unknown parameter; expected one of {sorted(known)}")
    values = {p.name: p.check(raw.get(p.name, p.default), model) for p in params}
    if model is not None:
        for param in params:
            if param.channel_of:
                _check_channel(param, values[param.name], values.get(param.channel_of), model)
    return values


def _check_channel(param: Param, channel: int | None, layer: str | None, model: Model) -> None:
    """``channel`` within the channels of ``layer`` (when both are given)."""
    if channel is None or layer is None or channel < 0:
        return
    shape = model.layer(layer).shape
    count = shape[0] if shape else 1
    if channel >= count:
        raise BadInput(
            f"params.{param.name}",
            f"layer {layer!r} has {count} channels (0–{count - 1}), got {channel}",
        )


def parse_assignments(params: Sequence[Param], assignments: Sequence[str]) -> dict[str, Any]:
    """``["steps=10", "layer=_blocks.9"]`` parsed by each parameter's kind."""
    by_name = {p.name: p for p in params}
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep:
            raise BadInput("params", f"expected key=value, got {item!r}")
        name = name.strip()
        if name not in by_name:
            raise BadInput(f"params.{name}", f"unknown parameter; expected one of {sorted(by_name)}")
        values[name] = by_name[name].parse(text)
    return values
