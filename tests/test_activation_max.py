"""Regularised activation maximisation raises its unit, its regularisers act, it is reproducible and refuses nonsense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Frame, Log, Metrics, Progress, Result, to_uint8
from convlens.testing import metric, of_type
from convlens_plugins.optimisation.activation_max import ACTIVATION_MAX, REGULARISERS

GROWTH_STEPS = 10
"""Steps after which the default model's ``_blocks.9`` channel 5 mean is many times its value on the mean image
(measured without regularisers: 1.92 at the start, 22.5 after 10 steps, 33.8 after 30). The issue's check
reads "after 100 steps"; reaching many times the start in 10 is the stricter form, and keeps the suite short."""

OFF = None
TABLE_1 = {
    "1": (0, 0.5, 4, 50, OFF),
    "2": (0.3, 0, 0, 20, OFF),
    "3": (0.0001, 1.0, 4, OFF, OFF),
    "4": (0, 0.5, 4, OFF, 90),
}
"""Yosinski et al. 2015, Table 1, as the Deep Visualization Toolbox's doc/running-optimize-image.md gives it
(four ``optimize_image.py`` command lines in the table's order): θ_decay, blur radius θ_b_width, θ_b_every,
small-norm percentile θ_n_pct, contribution percentile θ_c_pct; ``OFF``: the line leaves that clipping out."""


def at_mean_colour(image: np.ndarray, model) -> np.ndarray:
    """HxW mask of the pixels a regulariser set to zero in the mean-subtracted space.

    A float image is compared with the mean colour itself, a frame (uint8, as streamed) with its pixel.
    """
    mean = np.asarray(model.card.mean, dtype=np.float32)
    if image.dtype == np.uint8:
        return (image == to_uint8(mean[None, None, :])).all(axis=2)
    return np.abs(image - mean).max(axis=2) < 1e-6


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean square of the differences between neighbouring pixels."""
    return float(np.mean(np.diff(image, axis=0) ** 2) + np.mean(np.diff(image, axis=1) ** 2))


def test_channel_mean_grows_many_times_its_value_on_the_mean_image(convlens_run, default_model, sample_image):
    events = convlens_run(
        ACTIVATION_MAX,
        default_model,
        sample_image,
        layer="_blocks.9",
        channel=5,
        preset="custom",
        steps=GROWTH_STEPS,
    )
    result = events[-1]
    assert isinstance(result, Result)
    start, end = result.data["value_start"], result.data["value_end"]
    assert start > 0
    assert end > 5 * start
    image = result.arrays["image"]
    assert image.shape == (*default_model.input_size, 3) and image.min() >= 0.0 and image.max() <= 1.0
    # The reported value is the channel's mean on the image returned, computed here independently.
    tensor = np.ascontiguousarray(image.transpose(2, 0, 1))[None]

    with torch.no_grad():
        activation = default_model.forward(torch.from_numpy(tensor), ["_blocks.9"], logits=False)
    assert float(activation.activations["_blocks.9"][0, 5].mean()) == pytest.approx(end, rel=1e-3)


@pytest.mark.parametrize(("preset", "pct"), [("1", 50), ("2", 20), ("4", 90)])
def test_clipping_presets_zero_at_least_their_percentile_of_pixels(
    convlens_run, tiny_model, sample_image, preset, pct
):
    events = convlens_run(
        ACTIVATION_MAX, tiny_model, sample_image, layer="relu3", channel=3, preset=preset, steps=6
    )
    frames = of_type(events, Frame)[1:]
    assert len(frames) == 6
    for frame in frames:
        assert at_mean_colour(frame.pixels(), tiny_model).mean() >= pct / 100
    unregularised = of_type(
        convlens_run(
            ACTIVATION_MAX, tiny_model, sample_image, layer="relu3", channel=3, preset="custom", steps=6
        ),
        Frame,
    )
    assert at_mean_colour(unregularised[-1].pixels(), tiny_model).mean() < 0.05


def test_blur_preset_leaves_a_smoother_image_than_no_regulariser(convlens_run, tiny_model, sample_image):
    params = dict(layer="relu2", channel=2, steps=8, init="noise")
    blurred = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, preset="3", **params)[-1]
    free = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, preset="custom", **params)[-1]
    assert blurred.data["blur_width"] == 1.0 and free.data["blur_every"] == 0
    assert high_frequency_energy(blurred.arrays["image"]) < 0.5 * high_frequency_energy(free.arrays["image"])


def test_decay_pulls_the_image_towards_the_mean_colour(convlens_run, tiny_model, sample_image):
    params = dict(layer="conv3", channel=1, steps=6, preset="custom")
    decayed = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, decay=0.3, **params)[-1].arrays["image"]
    free = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, **params)[-1].arrays["image"]
    mean = np.asarray(tiny_model.card.mean, dtype=np.float32)
    assert np.abs(decayed - mean).mean() < 0.5 * np.abs(free - mean).mean()


@pytest.mark.parametrize("preset", sorted(TABLE_1))
def test_each_preset_runs_with_the_papers_table_1_settings(convlens_run, tiny_model, sample_image, preset):
    decay, blur_width, blur_every, norm_pct, contribution_pct = TABLE_1[preset]
    result = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, layer="relu1", preset=preset, steps=1)[-1]
    used = {name: result.data[name] for name in REGULARISERS}
    assert used == {
        "decay": decay,
        "blur_width": blur_width,
        "blur_every": blur_every,
        "norm_pct": 0 if norm_pct is OFF else norm_pct,  # a percentile of 0 clips nothing
        "contribution_pct": 0 if contribution_pct is OFF else contribution_pct,
    }


def test_preset_settings_win_unless_custom_and_an_explicit_lr_wins(convlens_run, tiny_model, sample_image):
    preset = convlens_run(
        ACTIVATION_MAX, tiny_model, sample_image, layer="relu1", preset="2", decay=0.9, steps=1
    )
    assert preset[-1].data["decay"] == 0.3 and preset[-1].data["norm_pct"] == 20.0
    custom = convlens_run(
        ACTIVATION_MAX, tiny_model, sample_image, layer="relu1", preset="custom", decay=0.9, lr=0.01, steps=1
    )
    assert custom[-1].data["decay"] == 0.9 and custom[-1].data["lr"] == 0.01


def test_streams_frames_and_metrics_every_kth_step_and_the_last(convlens_run, tiny_model, sample_image):
    events = convlens_run(
        ACTIVATION_MAX, tiny_model, sample_image, layer="conv2", channel=4, steps=7, every=3
    )
    assert [f.step for f in of_type(events, Frame)] == [0, 3, 6, 7]
    assert [m.step for m in of_type(events, Metrics)] == [0, 3, 6, 7]
    assert set(of_type(events, Metrics)[0].values) == {"objective", "value"}
    assert [(p.step, p.total) for p in of_type(events, Progress)] == [(s, 7) for s in range(1, 8)]
    result = events[-1]
    assert np.array_equal(of_type(events, Frame)[-1].pixels(), to_uint8(result.images["activation_max"]))
    assert result.data["value_start"] == metric(events, "value")[0]
    assert result.data["value_end"] == metric(events, "value")[-1]


def test_class_logit_without_a_layer_and_centre_neuron_of_a_channel(convlens_run, tiny_model, sample_image):
    logit = convlens_run(ACTIVATION_MAX, tiny_model, sample_image, target=3, preset="custom", steps=5)[-1]
    assert logit.data["layer"] is None and logit.data["index"] == 3 and "class 3" in logit.data["unit"]
    assert logit.data["value_end"] > logit.data["value_start"]
    centre = convlens_run(
        ACTIVATION_MAX,
        tiny_model,
        sample_image,
        layer="conv3",
        channel=0,
        unit="centre",
        preset="custom",
        steps=5,
    )[-1]
    assert "centre neuron (8, 8)" in centre.data["unit"]
    assert centre.data["value_end"] > centre.data["value_start"]


def test_same_seed_same_frames_other_seed_other_frames(frames_by_seed):
    first, other = frames_by_seed(
        ACTIVATION_MAX, dict(layer="relu2", channel=1, steps=4, init="noise", jitter=4)
    )
    assert len(first) == 5
    assert not np.array_equal(first[-1].pixels(), other[-1].pixels())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"layer": "conv9"}, "params.layer"),
        ({"layer": "conv1", "channel": 8}, "params.channel"),
        ({"layer": "conv1", "channel": -1}, "params.channel"),
        ({"steps": 0}, "params.steps"),
        ({"steps": 2001}, "params.steps"),
        ({"lr": 0.0}, "params.lr"),
        ({"lr": -0.1}, "params.lr"),
        ({"lr": 10.0}, "params.lr"),
        ({"preset": "5"}, "params.preset"),
        ({"norm_pct": 101.0}, "params.norm_pct"),
        ({"target": 10}, "params.target"),
        ({"unit": "max"}, "params.unit"),
    ],
)
def test_bad_parameters_are_refused_naming_them(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run(ACTIVATION_MAX, tiny_model, sample_image, **params)
    assert error.value.field == field


def test_run_that_diverges_stops_naming_the_lr(run_diverging):
    params = {"layer": "relu2", "channel": 0, "steps": 10}
    events = run_diverging(ACTIVATION_MAX, params, after=3, match=r"diverged at step 3")
    assert [f.step for f in of_type(events, Frame)] == [0, 1, 2]


def test_preset_4_raises_a_centre_neuron_many_times_and_warns_on_a_channel_mean(
    convlens_run, default_model, sample_image
):
    # Table 1's set 4 keeps the 10% of pixels that contribute most: the paper's use, one neuron.
    params = dict(layer="_blocks.9", channel=4, preset="4", steps=100, every=100)
    neuron = convlens_run(ACTIVATION_MAX, default_model, sample_image, unit="centre", **params)
    start, end = neuron[-1].data["value_start"], neuron[-1].data["value_end"]
    assert start > 0 and end > 4 * start, (start, end)
    assert not [e for e in of_type(neuron, Log) if e.level == "warning"]
    channel = convlens_run(ACTIVATION_MAX, default_model, sample_image, unit="mean", **dict(params, steps=1))
    warnings = [e.message for e in of_type(channel, Log) if e.level == "warning"]
    assert len(warnings) == 1 and "unit: centre" in warnings[0]
