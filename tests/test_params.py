"""Parameters declared as data: one declaration validates JSON requests and parses CLI ``key=value``."""

from __future__ import annotations

import math

import pytest

from convlens.errors import BadInput
from convlens.params import (
    Bool,
    Choice,
    ClassIndex,
    Float,
    Int,
    Layer,
    Models,
    Param,
    parse_assignments,
    validate,
)

PARAMS = (
    Int("steps", 10, minimum=1, maximum=500),
    Float("lr", 0.05, minimum=1e-4, maximum=1.0),
    Bool("smooth", False),
    Choice("mode", "plain", ["plain", "guided", "deconvnet"]),
    Choice("size", 3, [3, 5, 7]),
    Layer("layer"),
    ClassIndex("target"),
)


def field_of(raw, model=None):
    with pytest.raises(BadInput) as error:
        validate(PARAMS, raw, model)
    return error.value.field, error.value.reason


def test_defaults_fill_in_what_is_not_given():
    assert validate(PARAMS, {}) == {
        "steps": 10, "lr": 0.05, "smooth": False, "mode": "plain", "size": 3, "layer": None, "target": None,
    }  # fmt: skip


def test_an_unknown_parameter_is_named():
    field, reason = field_of({"step": 3})
    assert field == "params.step" and "steps" in reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"steps": "10"}, "params.steps"),
        ({"steps": 2.5}, "params.steps"),
        ({"lr": "0.1"}, "params.lr"),
        ({"lr": math.nan}, "params.lr"),
        ({"lr": math.inf}, "params.lr"),
        ({"smooth": "yes"}, "params.smooth"),
        ({"mode": "Guided"}, "params.mode"),
        ({"size": 4}, "params.size"),
        ({"layer": 3}, "params.layer"),
        ({"steps": None}, "params.steps"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(raw, field):
    assert field_of(raw)[0] == field


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"steps": 0}, "at least 1"),
        ({"steps": 501}, "at most 500"),
        ({"lr": 0.0}, "at least"),
        ({"lr": 1.5}, "at most"),
    ],
)
def test_a_value_out_of_range_is_refused_saying_the_limit(raw, words):
    assert words in field_of(raw)[1]


def test_bool_is_not_an_integer_and_integer_is_not_a_bool():
    assert field_of({"steps": True})[0] == "params.steps"
    assert field_of({"smooth": 1})[0] == "params.smooth"
    assert field_of({"target": False})[0] == "params.target"


def test_numbers_are_made_canonical():
    values = validate(PARAMS, {"steps": 20.0, "lr": 1, "target": 3.0})
    assert (values["steps"], values["lr"], values["target"]) == (20, 1.0, 3)
    assert type(values["steps"]) is int and type(values["lr"]) is float and type(values["target"]) is int


def test_layer_and_class_are_checked_against_the_model(tiny_model):
    assert validate(PARAMS, {"layer": "conv2", "target": 9}, tiny_model)["layer"] == "conv2"
    assert field_of({"layer": "conv9"}, tiny_model) == ("params.layer", "model 'tiny' has no layer 'conv9'")
    assert field_of({"target": 10}, tiny_model)[0] == "params.target"
    assert field_of({"target": -1}, tiny_model)[0] == "params.target"
    # Without a model only the type is checked; with one, None still means "let the method choose".
    assert validate(PARAMS, {"layer": "conv9"})["layer"] == "conv9"
    assert validate(PARAMS, {"layer": None, "target": None}, tiny_model)["target"] is None


def test_cli_key_value_assignments_are_parsed_by_kind():
    parsed = parse_assignments(
        PARAMS,
        ["steps=20", "lr=1e-2", "smooth=yes", "mode=guided", "size=5", "layer=relu2", "target=auto"],
    )
    assert parsed == {
        "steps": 20,
        "lr": 0.01,
        "smooth": True,
        "mode": "guided",
        "size": 5,
        "layer": "relu2",
        "target": None,
    }
    assert validate(PARAMS, parsed) == parsed
    assert parse_assignments(PARAMS, ["smooth=off", "layer=none"]) == {"smooth": False, "layer": None}


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("steps", "params"),
        ("stepz=3", "params.stepz"),
        ("steps=ten", "params.steps"),
        ("lr=fast", "params.lr"),
        ("smooth=maybe", "params.smooth"),
        ("size=big", "params.size"),
        ("target=cat", "params.target"),
    ],
)
def test_cli_assignments_that_cannot_be_parsed_name_the_parameter(assignment, field):
    with pytest.raises(BadInput) as error:
        parse_assignments(PARAMS, [assignment])
    assert error.value.field == field


def test_declarations_describe_themselves_for_the_browser_form():
    schema = Float("lr", 0.05, minimum=1e-4, maximum=1.0, help="step").to_json()
    assert schema == {
        "name": "lr", "type": "float", "title": "Lr", "description": "step", "default": 0.05,
        "nullable": False, "minimum": 1e-4, "maximum": 1.0,
    }  # fmt: skip
    assert Choice("mode", "a", ["a", "b"]).to_json()["enum"] == ["a", "b"]
    assert Layer().to_json()["nullable"] is True


def test_bad_declarations_fail_when_written():
    with pytest.raises(ValueError, match="unknown kind"):
        Param("x", "tensor")
    with pytest.raises(ValueError, match="needs choices"):
        Param("x", "choice", "a")


def test_a_channel_is_checked_against_the_layer_it_indexes(tiny_model):
    params = (Layer("layer"), Int("channel", 0, minimum=-1, channel_of="layer"))
    channels = tiny_model.layer("conv1").shape[0]
    assert (
        validate(params, {"layer": "conv1", "channel": channels - 1}, tiny_model)["channel"] == channels - 1
    )
    with pytest.raises(BadInput) as error:
        validate(params, {"layer": "conv1", "channel": channels}, tiny_model)
    assert (error.value.field, error.value.reason) == (
        "params.channel",
        f"layer 'conv1' has {channels} channels (0–{channels - 1}), got {channels}",
    )
    # -1 (a sentinel such as "the strongest") and a layer left to the method are not range-checked here.
    assert validate(params, {"layer": "conv1", "channel": -1}, tiny_model)["channel"] == -1
    assert validate(params, {"layer": None, "channel": 10_000}, tiny_model)["channel"] == 10_000
    assert params[1].to_json()["channel_of"] == "layer"


MODELS = (Models("models", run_model="first"), Models("transfer", None, run_model="excluded", maximum=3))


def test_a_models_parameter_takes_a_list_of_ids_or_every_model():
    assert validate(MODELS, {}) == {"models": "*", "transfer": None}
    values = validate(MODELS, {"models": ["b.pt", "a.onnx"], "transfer": []})
    assert values == {"models": ["b.pt", "a.onnx"], "transfer": []}
    assert parse_assignments(MODELS, ["models=*", "transfer=a.onnx, b.pt2"]) == {
        "models": "*",
        "transfer": ["a.onnx", "b.pt2"],
    }
    assert parse_assignments(MODELS, ["transfer=none", "models="]) == {"transfer": None, "models": []}
    assert MODELS[1].to_json() == {
        "name": "transfer", "type": "models", "title": "Transfer", "description": "", "default": None,
        "nullable": True, "maximum": 3, "run_model": "excluded", "every": "*",
    }  # fmt: skip
    with pytest.raises(ValueError, match="run_model"):
        Param("models", "models", "*")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a.onnx", "a list of model ids"),
        ({"a.onnx": True}, "a list of model ids"),
        (3, "a list of model ids"),
        ([3], "non-empty strings"),
        ([""], "non-empty strings"),
        ([["a.onnx"]], "non-empty strings"),
        (["a.onnx", "b.pt", "a.onnx"], "listed twice"),
        (["a", "b", "c", "d"], "at most 3 models, got 4"),
        (["a.onnx\n"], "not a model id"),
        (["\ud800.onnx"], "not a model id"),
        (["a\u200b.onnx"], "not a model id"),
        (["m" * 256], "not a model id"),
    ],
)
def test_a_bad_models_value_is_refused_naming_the_field(value, words):
    with pytest.raises(BadInput) as error:
        validate(MODELS, {"transfer": value})
    assert error.value.field == "params.transfer" and words in error.value.reason
