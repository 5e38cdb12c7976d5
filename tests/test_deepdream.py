"""DeepDream raises its objective, streams one frame per step, and is reproducible from its seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Progress, Result, to_uint8
from convlens.images import to_tensor
from convlens.testing import make_tiny_model, metric, of_type
from convlens_plugins.optimisation.deepdream import fit_within, octave_sizes


def start_image(model, image):
    """The picture deepdream starts from: long side at most twice the model's input size."""
    return to_tensor(image, fit_within(image.shape[:2], 2 * max(model.input_size)))


def test_objective_rises_over_the_steps(convlens_run, tiny_model, sample_image):
    events = convlens_run("deepdream", tiny_model, sample_image, octaves=1, steps=8, jitter=0)
    values = metric(events, "objective")
    assert len(values) == 8
    assert values[-1] > 2 * values[0]
    assert events[-1].data["objective"] > values[-1]


def test_objective_is_the_mean_square_of_the_layer_at_the_first_step(convlens_run, tiny_model, sample_image):
    events = convlens_run("deepdream", tiny_model, sample_image, layer="relu2", octaves=1, steps=1, jitter=0)
    with torch.no_grad():
        act = tiny_model.forward(start_image(tiny_model, sample_image), ["relu2"]).activations["relu2"]
    assert metric(events, "objective")[0] == pytest.approx(float(act.pow(2).mean()), rel=1e-5)
    assert events[-1].data["layer"] == "relu2"


def test_one_frame_metrics_and_progress_per_step_of_every_octave(convlens_run, tiny_model, sample_image):
    events = convlens_run("deepdream", tiny_model, sample_image, octaves=4, steps=3, octave_scale=1.3)
    frames = of_type(events, Frame)
    assert len(frames) == len(of_type(events, Metrics)) == 12
    assert [(p.step, p.total) for p in of_type(events, Progress)] == [(s, 12) for s in range(1, 13)]
    start = start_image(tiny_model, sample_image).shape[-2:]
    sizes = octave_sizes(tuple(start), 4, 1.3)
    # Each frame is the octave at its own size, smallest first; a viewer's canvas scales it.
    assert [f.pixels().shape for f in frames] == [(*size, 3) for size in sizes for _ in range(3)]
    result = events[-1]
    assert isinstance(result, Result)
    assert result.images["dream"].shape == (*start, 3)
    assert np.array_equal(to_uint8(result.images["dream"]), frames[-1].pixels())
    assert [tuple(s) for s in result.data["octave_sizes"]] == sizes


def test_every_kth_step_of_each_octave_and_its_last_is_shown(convlens_run, tiny_model, sample_image):
    events = convlens_run("deepdream", tiny_model, sample_image, octaves=2, steps=5, every=2)
    assert [f.step for f in of_type(events, Frame)] == [2, 4, 5, 7, 9, 10]
    assert [m.step for m in of_type(events, Metrics)] == [2, 4, 5, 7, 9, 10]
    assert [p.step for p in of_type(events, Progress)] == list(range(1, 11))


def test_a_dream_from_nothing_takes_only_the_pictures_size(convlens_run, tiny_model, sample_image):
    params = dict(octaves=2, steps=3, jitter=0)
    from_mean = convlens_run("deepdream", tiny_model, sample_image, init="mean", **params)
    turned = np.ascontiguousarray(sample_image[::-1, ::-1])  # another picture of the same size
    assert np.array_equal(
        from_mean[-1].images["dream"],
        convlens_run("deepdream", tiny_model, turned, init="mean", **params)[-1].images["dream"],
    )
    from_image = convlens_run("deepdream", tiny_model, sample_image, **params)
    assert not np.allclose(from_mean[-1].images["dream"], from_image[-1].images["dream"], atol=0.1)
    start = start_image(tiny_model, sample_image).shape[-2:]
    assert from_mean[-1].images["dream"].shape == (*start, 3)
    # The first frame is one step from the flat mean colour: its pixels stay within lr-sized steps of it.
    first = of_type(from_mean, Frame)[0].pixels().astype(float) / 255
    mean = np.asarray(tiny_model.card.mean)
    assert np.abs(first - mean).mean() < 0.1
    noise_a, noise_b = (
        of_type(
            convlens_run("deepdream", tiny_model, sample_image, init="noise", seed=seed, **params), Frame
        )[0].pixels()
        for seed in (1, 2)
    )
    assert not np.array_equal(noise_a, noise_b)


def test_same_seed_same_frames_other_seed_other_jitter(frames_by_seed):
    first, other = frames_by_seed("deepdream", dict(octaves=2, steps=3, jitter=8), seeds=(7, 8))
    assert not np.array_equal(first[-1].pixels(), other[-1].pixels())


def test_dreams_without_logits_giving_the_frames_a_full_forward_gives(convlens_run, sample_image):
    full = make_tiny_model()
    asked = []
    layer_only_forward = full.forward

    def forward_with_logits(images, layers=(), *, logits=True):
        asked.append(logits)
        return layer_only_forward(images, layers, logits=True)

    full.forward = forward_with_logits
    params = dict(layer="conv3", octaves=2, steps=3, jitter=8, seed=7)
    expected = convlens_run("deepdream", full, sample_image, **params)
    events = convlens_run("deepdream", make_tiny_model(), sample_image, **params)
    assert asked and not any(asked)
    frames, expected_frames = of_type(events, Frame), of_type(expected, Frame)
    assert len(frames) == len(expected_frames) == 6
    assert all(np.array_equal(a.pixels(), b.pixels()) for a, b in zip(frames, expected_frames, strict=True))
    assert metric(events, "objective") == metric(expected, "objective")
    assert events[-1].data["objective"] == expected[-1].data["objective"]


def test_channel_param_dreams_on_that_channel_only(convlens_run, tiny_model, sample_image):
    events = convlens_run(
        "deepdream", tiny_model, sample_image, layer="conv3", channel=5, octaves=1, steps=4, jitter=0
    )
    with torch.no_grad():
        act = tiny_model.forward(start_image(tiny_model, sample_image), ["conv3"]).activations["conv3"]
    values = metric(events, "objective")
    assert values[0] == pytest.approx(float(act[:, 5].pow(2).mean()), rel=1e-5)
    assert values[-1] > values[0]
    whole_layer = convlens_run(
        "deepdream", tiny_model, sample_image, layer="conv3", octaves=1, steps=4, jitter=0
    )
    assert not np.allclose(events[-1].images["dream"], whole_layer[-1].images["dream"])
    assert events[-1].data["channel"] == 5


def test_channel_beyond_the_layer_is_refused(convlens_run, tiny_model, sample_image):
    with pytest.raises(BadInput) as error:
        convlens_run("deepdream", tiny_model, sample_image, layer="conv1", channel=8)
    assert error.value.field == "params.channel"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"layer": "no_such_layer"}, "params.layer"),
        ({"steps": 0}, "params.steps"),
        ({"steps": 10**6}, "params.steps"),
        ({"lr": 0.0}, "params.lr"),
        ({"lr": -0.05}, "params.lr"),
        ({"lr": 1e9}, "params.lr"),
        ({"octaves": 0}, "params.octaves"),
        ({"octaves": 99}, "params.octaves"),
        ({"octave_scale": 5.0}, "params.octave_scale"),
        ({"jitter": -1}, "params.jitter"),
        ({"init": "zeros"}, "params.init"),
        ({"every": 0}, "params.every"),
        ({"guide": "no-such-picture"}, "params.guide"),
    ],
)
def test_bad_parameters_are_refused_naming_them(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run("deepdream", tiny_model, sample_image, **params)
    assert error.value.field == field


def test_a_model_broken_on_the_starting_picture_is_refused(convlens_run, sample_image):
    model = make_tiny_model()
    with torch.no_grad():
        model.module.conv2.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(BadInput, match=r"non-finite objective nan, gradient nan on layer 'conv3'") as error:
        convlens_run("deepdream", model, sample_image, layer="conv3", steps=2)
    assert error.value.field == "model" and error.value.status == 422


def test_a_run_that_diverges_stops_before_showing_a_broken_image(run_diverging):
    from convlens.plugins import get_methods

    deepdream = get_methods().get("deepdream")
    params = {"layer": "conv3", "octaves": 2, "steps": 3}
    events = run_diverging(deepdream, params, after=4, match=r"deepdream diverged at step 4: objective inf")
    frames = of_type(events, Frame)
    assert [f.step for f in frames] == [1, 2, 3, 4]
    assert all(bool(torch.isfinite(f.image).all()) for f in frames)


def test_fixed_size_model_sees_every_octave_at_its_input_size(convlens_run, sample_image):
    model = make_tiny_model(dynamic_size=False)
    seen = []
    model.module.conv1.register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    events = convlens_run("deepdream", model, sample_image, octaves=3, steps=2)
    assert set(seen) == {model.input_size}
    assert len(of_type(events, Frame)) == 6
    assert metric(events, "objective")[-1] > metric(events, "objective")[0]


def test_sizes_stay_sensible():
    assert fit_within((300, 451), 128) == (85, 128)
    assert fit_within((100, 50), 512) == (100, 50)
    assert octave_sizes((85, 128), 3, 1.4) == [(43, 65), (61, 91), (85, 128)]
    assert octave_sizes((40, 40), 4, 2.0)[0] == (32, 32)


def guided_value(model, image: torch.Tensor, guide: np.ndarray, layer: str) -> float:
    """The guided objective computed independently in numpy: per dream position, the best dot product with
    any guide position's feature vector, averaged."""
    with torch.no_grad():
        dream = model.forward(image, [layer], logits=False).activations[layer][0].flatten(1).double().numpy()
        guide_image = to_tensor(guide, model.input_size)
        wanted = (
            model.forward(guide_image, [layer], logits=False)
            .activations[layer][0]
            .flatten(1)
            .double()
            .numpy()
        )
    return float((dream.T @ wanted).max(axis=1).mean())


def test_a_guide_image_steers_the_dream_toward_its_features(convlens_run, tiny_model, sample_image):
    from skimage import data

    guide = data.coffee()
    events = convlens_run(
        "deepdream", tiny_model, sample_image, layer="relu2", octaves=1, steps=6, jitter=0, guide="coffee"
    )
    start = start_image(tiny_model, sample_image)
    values = metric(events, "objective")
    assert values[0] == pytest.approx(guided_value(tiny_model, start, guide / 255.0, "relu2"), rel=1e-4)
    final = to_tensor(events[-1].images["dream"], tuple(start.shape[-2:]))
    assert guided_value(tiny_model, final, guide / 255.0, "relu2") > 1.5 * values[0]
    assert events[-1].data["guide"] == "coffee"


@pytest.mark.parametrize(
    ("params", "field"),
    [({"guide": "no-such-image"}, "params.guide"), ({"guide": "coffee", "channel": 1}, "params.guide")],
)
def test_a_bad_guide_is_refused_by_name(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run("deepdream", tiny_model, sample_image, layer="relu2", octaves=1, steps=1, **params)
    assert error.value.field == field
