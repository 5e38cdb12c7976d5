"""Every image-optimisation method runs on the default model in each of its three formats (ONNX, TorchScript,
torch.export), improves its objective there, and starts from the same value in all three."""

from __future__ import annotations

import pytest

from convlens.testing import metric

FORMATS = ("onnx", "pt", "pt2")
CASES = {
    # method: (parameters of a short run, the metric it improves, +1 if it rises, -1 if it falls)
    "class_model": ({"target": 1, "steps": 4, "lr": 0.05}, "score", +1),
    "activation_max": ({"layer": "_blocks.9", "channel": 4, "preset": "custom", "steps": 4}, "value", +1),
    "feature_vis": (
        {"objective": "channel:_blocks.9:4", "steps": 6, "size": 96, "every": 1, "transforms": False},
        "objective",
        +1,
    ),
    "inversion": ({"layer": "_blocks.1", "steps": 6}, "code_distance", -1),
    "inversion_ladder": (
        {"layers": "_blocks.1, probabilities", "steps": 4, "every": 1},
        "code_distance _blocks.1",
        -1,
    ),
    "deepdream": ({"layer": "_blocks.9", "steps": 5, "octaves": 1, "jitter": 0}, "objective", +1),
    "style_transfer": ({"style": "brick", "size": 96, "steps": 4}, "total", -1),
}


@pytest.fixture(scope="module")
def three_formats(models_dir):
    from convlens.models.store import ModelStore

    store = ModelStore([models_dir])
    return {fmt: store.get(f"efficientnet_lite0.{fmt}") for fmt in FORMATS}


@pytest.mark.parametrize("method", CASES)
def test_each_optimisation_method_improves_its_objective_in_every_format(
    convlens_run, three_formats, sample_image, method
):
    params, name, direction = CASES[method]
    starts = {}
    for fmt, model in three_formats.items():
        values = metric(convlens_run(method, model, sample_image, seed=0, **params), name)
        assert len(values) >= 2, (fmt, values)
        assert direction * (values[-1] - values[0]) > 0, f"{method} on .{fmt}: {name} went {values}"
        starts[fmt] = values[0]
    # One network in three files, one seed: the same first value (ONNX export folds BatchNorm, ~1e-3 apart).
    for fmt, value in starts.items():
        assert value == pytest.approx(starts["pt"], rel=2e-2, abs=1e-3), (fmt, starts)
