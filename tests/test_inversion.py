"""Feature inversion matches the picture's code, resembles the picture from an early layer, keeps its class from
the probabilities alone, reports the objective it promises, is reproducible and refuses nonsense.

The objective's terms are recomputed here from the final image in numpy, with the code from a plain torch
forward of the tiny net's own layers, never from the plugin's loss code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Progress, Result, to_uint8
from convlens.runner import prepare_run
from convlens.testing import metric, of_type
from convlens_plugins.optimisation.inversion import INVERSION, INVERSION_LADDER, PROBABILITIES

EARLY_LAYER = "_blocks.1"
EARLY_STEPS = 60
RISE_TOLERANCE = 0.05
"""How far (relative) a code distance may rise above the lowest one before it: Adam's steps are not monotone."""
EARLY_FINAL_FRACTION = 0.1
"""The early layer's code distance ends below this fraction of its start (measured: 1.71 → 0.047, 0.028)."""
EARLY_PSNR_DB = 21.0
"""Lower bound on the PSNR of the early-layer reconstruction vs the picture (measured: 24.1 dB at seed 0)."""
PROBABILITY_STEPS = 80
"""Steps after which the probabilities-only inversion has left the plateau near 1 (measured: by step ~40, final
code distance 0.002 at lr 0.05)."""


B = 80 / 255
"""The promised typical range of a mean-subtracted pixel (the paper's B), in [0, 1] pixel units."""
V = B / 6.5
"""The promised typical size of a natural image's finite difference (the paper's V)."""


def picture(model, sample_image):
    """The chosen picture at the model's input size, HxWx3 in [0, 1], as the method sees it."""
    return prepare_run(INVERSION, model, sample_image, {}).model_input()[0].numpy().transpose(1, 2, 0)


def top_class(model, image: np.ndarray) -> int:
    return int(model.logits(image.transpose(2, 0, 1)[None].copy()).argmax())


def test_early_layer_code_distance_falls_and_the_reconstruction_resembles_the_picture(
    convlens_run, default_model, sample_image
):
    events = convlens_run(
        INVERSION, default_model, sample_image, layer=EARLY_LAYER, steps=EARLY_STEPS, every=5
    )
    distances = metric(events, "code_distance")
    assert len(distances) == EARLY_STEPS // 5 + 1
    for step, value in enumerate(distances[1:], start=1):
        assert value <= min(distances[:step]) * (1 + RISE_TOLERANCE), distances
    assert distances[-1] < EARLY_FINAL_FRACTION * distances[0]

    result = events[-1]
    assert isinstance(result, Result)
    image = result.arrays["image"]
    original = picture(default_model, sample_image)
    assert image.shape == original.shape
    mse = float(np.mean((image.astype(np.float64) - original) ** 2))
    psnr = 10 * np.log10(1 / mse)
    assert psnr > EARLY_PSNR_DB
    assert result.data["psnr"] == pytest.approx(psnr, abs=0.01)
    start = of_type(events, Frame)[0].pixels() / 255.0  # the frame as streamed, uint8
    assert 10 * np.log10(1 / np.mean((start - original) ** 2)) < EARLY_PSNR_DB - 5
    assert result.data["code_distance"] == pytest.approx(distances[-1])


def test_inversion_of_the_class_probabilities_alone_keeps_the_top_class(
    convlens_run, default_model, sample_image
):
    events = convlens_run(INVERSION, default_model, sample_image, steps=PROBABILITY_STEPS, every=10)
    result = events[-1]
    assert result.data["layer"] == PROBABILITIES
    original_top = top_class(default_model, picture(default_model, sample_image))
    assert top_class(default_model, result.arrays["image"]) == original_top
    assert result.data["top_class"] == original_top == result.data["original_top_class"]
    distances = metric(events, "code_distance")
    assert distances[-1] < 0.5 < distances[0]


def test_streams_frames_and_metrics_every_kth_step_and_the_last(convlens_run, tiny_model, sample_image):
    events = convlens_run(INVERSION, tiny_model, sample_image, layer="conv2", steps=7, every=3)
    assert [f.step for f in of_type(events, Frame)] == [0, 3, 6, 7]
    assert [m.step for m in of_type(events, Metrics)] == [0, 3, 6, 7]
    assert set(of_type(events, Metrics)[0].values) == {"code_distance", "alpha", "tv", "objective"}
    assert [(p.step, p.total) for p in of_type(events, Progress)] == [(s, 7) for s in range(1, 8)]
    assert np.array_equal(of_type(events, Frame)[-1].pixels(), to_uint8(events[-1].images["inversion"]))


def test_the_tv_prior_holds_the_image_smooth(convlens_run, tiny_model, sample_image):
    free = convlens_run(
        INVERSION, tiny_model, sample_image, layer="conv2", steps=10, tv_weight=0.0, alpha_weight=0.0
    )
    smooth = convlens_run(
        INVERSION, tiny_model, sample_image, layer="conv2", steps=10, tv_weight=10.0, alpha_weight=0.0
    )
    assert metric(smooth, "tv")[-1] < 0.9 * metric(free, "tv")[-1]


def code_of(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The code of an HxWx3 image: ``net``'s output, flattened, in float64."""
    with torch.no_grad():
        return net(torch.from_numpy(image.transpose(2, 0, 1).copy())[None].double())[0].flatten().numpy()


@pytest.mark.parametrize("layer", ["conv2", None], ids=["conv2", "probabilities"])
def test_the_reported_terms_are_the_promised_objective_of_the_final_image(
    convlens_run, pixel_space, tiny_model, sample_image, layer
):
    """‖Φ(x) − Φ0‖²/‖Φ0‖², R_α (6-norm of x − mean over B⁶) and R_TV (squared differences over V²), both per
    pixel, and their weighted sum, from the final image, for a layer's code and for the class probabilities."""
    weights = {"alpha_weight": 50.0, "tv_weight": 0.05}  # each weighted term moves the objective
    crop = sample_image[100:164, 150:214]  # at the tiny net's input size: the picture is not resized
    events = convlens_run(INVERSION, tiny_model, crop, layer=layer, steps=4, every=2, **weights)
    result = events[-1]
    assert isinstance(result, Result)
    image = result.arrays["image"].astype(np.float64)
    original = crop.astype(np.float64) / 255

    net = pixel_space(copy.deepcopy(tiny_model.module), tiny_model.card.mean, tiny_model.card.std).double()
    if layer is None:
        net = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    else:
        net.net = net.net[: list(dict(net.net.named_children())).index(layer) + 1]
    code, target = code_of(net, image), code_of(net, original)
    code_distance = np.sum((code - target) ** 2) / np.sum(target**2)

    centred = image - np.asarray(tiny_model.card.mean)
    alpha = np.mean(np.sum((np.abs(centred) / B) ** 6, axis=2))
    across = image[:-1, 1:] - image[:-1, :-1]
    down = image[1:, :-1] - image[:-1, :-1]
    tv = np.mean(np.sum((across**2 + down**2) / V**2, axis=2))
    objective = code_distance + weights["alpha_weight"] * alpha + weights["tv_weight"] * tv

    assert min(code_distance, alpha, tv) > 1e-4  # no term is zero, so each comparison can fail
    data = result.data
    assert data["code_distance"] == pytest.approx(code_distance, rel=1e-4)
    assert data["alpha"] == pytest.approx(alpha, rel=1e-4)
    assert data["tv"] == pytest.approx(tv, rel=1e-4)
    assert data["objective"] == pytest.approx(objective, rel=1e-4)
    assert of_type(events, Metrics)[-1].values == {
        key: data[key] for key in ("code_distance", "alpha", "tv", "objective")
    }


def test_same_seed_same_frames_other_seed_other_noise(frames_by_seed):
    first, other = frames_by_seed(INVERSION, dict(layer="relu2", steps=4, every=1))
    assert len(first) == 5
    assert not np.array_equal(first[0].pixels(), other[0].pixels())


def test_ladder_same_seed_same_frames_other_seed_other_noise(frames_by_seed):
    first, other = frames_by_seed(INVERSION_LADDER, dict(layers="conv1, relu2", steps=2, every=1))
    assert [f.label for f in first[:2]] == ["conv1", "relu2"]
    assert not np.array_equal(first[0].pixels(), other[0].pixels())


def test_ladder_shows_each_layer_and_the_probabilities_side_by_side(convlens_run, tiny_model, sample_image):
    events = convlens_run(INVERSION_LADDER, tiny_model, sample_image, steps=3, every=3)
    result = events[-1]
    layers = result.data["layers"]
    assert layers[-1] == PROBABILITIES and len(layers) >= 3
    assert {f.label for f in of_type(events, Frame) if f.step == 0} == set(layers)
    height, width = tiny_model.input_size
    assert result.images["ladder"].shape == (height, (len(layers) + 1) * (width + 4) - 4, 3)
    assert result.arrays["images"].shape == (len(layers), height, width, 3)
    assert set(result.data["by_layer"]) == set(layers)
    assert set(of_type(events, Metrics)[0].values) == {f"code_distance {layer}" for layer in layers}


def test_ladder_matches_single_inversions_of_the_same_layers(convlens_run, tiny_model, sample_image):
    ladder = convlens_run(INVERSION_LADDER, tiny_model, sample_image, layers="conv1, probabilities", steps=3)
    single = convlens_run(INVERSION, tiny_model, sample_image, layer="conv1", steps=3)
    both = convlens_run(INVERSION, tiny_model, sample_image, steps=3)
    images = ladder[-1].arrays["images"]
    assert np.allclose(images[0], single[-1].arrays["image"], atol=1e-5)
    assert np.allclose(images[1], both[-1].arrays["image"], atol=1e-5)


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        (INVERSION, {"layer": "no_such_layer"}, "params.layer"),
        (INVERSION, {"steps": 0}, "params.steps"),
        (INVERSION, {"steps": 2001}, "params.steps"),
        (INVERSION, {"lr": 0.0}, "params.lr"),
        (INVERSION, {"lr": -0.1}, "params.lr"),
        (INVERSION, {"lr": 10.0}, "params.lr"),
        (INVERSION, {"alpha_weight": -1.0}, "params.alpha_weight"),
        (INVERSION, {"tv_weight": -0.01}, "params.tv_weight"),
        (INVERSION, {"init": "image"}, "params.init"),
        (INVERSION, {"every": 0}, "params.every"),
        (INVERSION_LADDER, {"layers": "conv1,no_such_layer"}, "params.layers"),
        (INVERSION_LADDER, {"layers": "conv1,conv1"}, "params.layers"),
        (INVERSION_LADDER, {"tv_weight": -1.0}, "params.tv_weight"),
    ],
)
def test_bad_parameters_are_refused_naming_them(
    convlens_run, tiny_model, sample_image, method, params, field
):
    with pytest.raises(BadInput) as error:
        convlens_run(method, tiny_model, sample_image, **params)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("method", "params", "shown"),
    [
        (INVERSION, {"layer": "conv2"}, [0, 1]),
        (INVERSION_LADDER, {"layers": "conv1, relu2"}, [0, 0, 1, 1]),  # a frame per layer
    ],
)
def test_run_that_diverges_stops_naming_lr_and_yields_no_result(run_diverging, method, params, shown):
    # The picture's code is one forward pass, then one a step: the third step's is infinite.
    events = run_diverging(
        method,
        {**params, "steps": 10, "every": 1},
        after=3,
        match=rf"{method.name} diverged at step 2: code_distance (inf|nan)",
    )
    assert [f.step for f in of_type(events, Frame)] == shown
