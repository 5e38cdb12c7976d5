"""Occlusion equals Captum's ``Occlusion`` on the softmax probability, on a random ResNet-18 exported to ONNX
(run by ONNX Runtime with either engine, checked against the eager module) and on the default model (ONNX
Runtime against its onnx2torch module); its frames fill in row by row; bad windows and strides are refused
before any work: by the API when the request arrives, except a stride larger than the window (each value is
fine alone), which fails the job when it starts.

The oracles are independent of convlens: Captum occludes the eager module wrapped to take [0, 1] pixels, and
the blur fill it is given is built here with OpenCV from the promise (a Gaussian of sigma window / 4), not by
the plugin's ``fill_values``.

Tolerance: 1e-5 absolute on maps of probabilities, float32 noise between ONNX Runtime and torch only.
"""

from __future__ import annotations

import json

import captum.attr as captum_attr
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Progress, Result
from convlens.images import to_tensor
from convlens.models.base import Model
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.models.store import ModelStore
from convlens_plugins.attribution.occlusion import OCCLUSION

TOLERANCE = 1e-5
SIZE = 64
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
JOB_TIMEOUT = 60
"""Seconds a job through the API may take before the test fails as hung (it takes well under one)."""


class Probabilities(nn.Module):
    """Softmax probabilities of ``logits`` (a torch function of [0, 1] pixels): what Captum occludes."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)


def normalised(net: nn.Module, mean, std):
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return lambda images: net((images - mean) / std)


def blurred(inputs: torch.Tensor, window: int) -> torch.Tensor:
    """The ``blur`` fill as promised: the 1x3xHxW image under a Gaussian of sigma ``window / 4``, cut at 4 sigma,
    edges mirrored (OpenCV's ``BORDER_REFLECT``: the edge pixel repeated, as scipy's ``reflect``)."""
    sigma = window / 4
    side = 2 * int(4 * sigma + 0.5) + 1
    pixels = inputs[0].numpy().transpose(1, 2, 0)
    image = cv2.GaussianBlur(pixels, (side, side), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return torch.from_numpy(image.transpose(2, 0, 1).copy())[None]


def captum_occlusion(logits, inputs: torch.Tensor, target: int, window: int, stride: int, baselines):
    with torch.no_grad():
        attribution = captum_attr.Occlusion(Probabilities(logits)).attribute(
            inputs,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=baselines,
            target=target,
            perturbations_per_eval=16,
        )
    assert torch.equal(attribution[0, 0], attribution[0, 2])  # the window spans all channels
    return attribution[0, 0].numpy()


def result_of(events) -> Result:
    assert isinstance(events[-1], Result)
    return events[-1]


@pytest.fixture(scope="module")
def onnx_resnet(resnet18_with_statistics, tmp_path_factory) -> Model:
    """The seeded random ResNet-18 exported by the dynamo exporter and loaded by convlens's store."""
    directory = tmp_path_factory.mktemp("occlusion-models")
    batch = {0: torch.export.Dim("batch", min=1)}
    torch.onnx.export(
        resnet18_with_statistics,
        (torch.rand(2, 3, SIZE, SIZE),),
        str(directory / "resnet18.onnx"),
        dynamo=True,
        dynamic_shapes=(batch,),
        verbose=False,
    )
    labels = [f"thing {index}" for index in range(1000)]
    (directory / "resnet18-labels.txt").write_text("\n".join(labels) + "\n")
    card = {"title": "ResNet-18", "input_size": [SIZE, SIZE], "mean": MEAN, "std": STD}
    (directory / "resnet18.json").write_text(json.dumps({**card, "labels": "resnet18-labels.txt"}))
    model = ModelStore([directory]).get("resnet18")
    assert model.format == "onnx" and model._runtime() is not None  # the fast path is under test
    return model


@pytest.mark.parametrize("engine", ["full", "incremental"])
@pytest.mark.parametrize(
    ("window", "stride", "fill", "baseline"),
    [(16, 8, "grey", 0.5), (16, 10, "zero", 0.0), (24, 12, "mean", "mean"), (16, 16, "blur", "blur")],
)
def test_occlusion_matches_captum_on_an_onnx_resnet18(
    convlens_run, onnx_resnet, resnet18_with_statistics, sample_image, window, stride, fill, baseline, engine
):
    params = {"window": window, "stride": stride, "fill": fill, "engine": engine}
    result = result_of(convlens_run(OCCLUSION, onnx_resnet, sample_image, **params))
    assert result.data["engine"] == engine
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    logits = normalised(resnet18_with_statistics, MEAN, STD)
    with torch.no_grad():
        probabilities = torch.softmax(logits(inputs), dim=1)[0]
    target = int(probabilities.argmax())
    assert result.data["target"] == target
    np.testing.assert_allclose(result.data["base_probability"], probabilities[target], atol=TOLERANCE)
    if baseline == "mean":
        baseline = inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    elif baseline == "blur":
        baseline = blurred(inputs, window)
    oracle = captum_occlusion(logits, inputs, target, window, stride, baseline)
    assert np.abs(oracle).max() > 1e-4  # the random net does react to occlusion
    attribution = result.arrays["attribution"]
    assert attribution.shape == (SIZE, SIZE) and attribution.dtype == np.float32
    np.testing.assert_allclose(attribution, oracle, atol=TOLERANCE)


def test_the_blur_fill_is_the_image_under_a_gaussian_of_a_quarter_window(
    convlens_run, pixel_space, tiny_model, sample_image
):
    """Captum given the blur built here, on the tiny net run in torch: the same float32 numbers, so the maps
    agree to 1e-3 of their largest value, where the random ResNet-18's tiny probabilities allow only 1e-5 absolute."""
    result = result_of(convlens_run(OCCLUSION, tiny_model, sample_image, window=16, stride=8, fill="blur"))
    inputs = to_tensor(sample_image, tiny_model.input_size)
    net = pixel_space(tiny_model.module, tiny_model.card.mean, tiny_model.card.std)
    oracle = captum_occlusion(net, inputs, result.data["target"], 16, 8, blurred(inputs, 16))
    assert np.abs(oracle).max() > 1e-5  # the net does react to the blur
    np.testing.assert_allclose(result.arrays["attribution"], oracle, atol=1e-3 * np.abs(oracle).max())


def test_the_grids_hold_each_positions_probability_and_top_class(
    convlens_run, onnx_resnet, resnet18_with_statistics, sample_image
):
    """Fig. 7 (d), (e): checked position by position against the eager module on hand-built occlusions."""
    result = result_of(convlens_run(OCCLUSION, onnx_resnet, sample_image, window=16, stride=10, target=7))
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    starts = [0, 10, 20, 30, 40, 50]  # ceil((64 - 16) / 10) + 1 positions, the last window cut at the edge
    occluded = inputs.repeat(len(starts) ** 2, 1, 1, 1)
    for index, (y, x) in enumerate((y, x) for y in starts for x in starts):
        occluded[index, :, y : y + 16, x : x + 16] = 0.5
    with torch.no_grad():
        probabilities = torch.softmax(normalised(resnet18_with_statistics, MEAN, STD)(occluded), dim=1)
    grid = result.arrays["probability_grid"]
    assert grid.shape == (6, 6) and result.data["positions"] == 36
    np.testing.assert_allclose(grid.ravel(), probabilities[:, 7].numpy(), atol=TOLERANCE)
    np.testing.assert_array_equal(
        result.arrays["top_class_grid"].ravel(), probabilities.argmax(dim=1).numpy()
    )
    assert result.data["target"] == 7 and result.data["label"] == "thing 7"
    seen = result.data["classes_seen"]
    assert sum(entry["fraction"] for entry in seen) == pytest.approx(1.0)
    assert seen[0]["index"] == int(np.bincount(result.arrays["top_class_grid"].ravel()).argmax())
    assert result.images["probability_map"].shape == (60, 60, 3)
    assert result.images["top_class_map"].shape == (60, 60, 3)


def test_occlusion_matches_captum_on_the_default_model(convlens_run, models_dir, sample_image):
    """ONNX Runtime (convlens) against the eager EfficientNet-Lite0 the file was written from (Captum), coarse
    windows to stay quick."""
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    model = ModelStore([models_dir]).get("efficientnet_lite0")
    result = result_of(convlens_run(OCCLUSION, model, sample_image, window=64, stride=48, fill="grey"))
    target = result.data["target"]
    assert result.data["label"] == model.label(target) and result.data["positions"] == 25
    inputs = to_tensor(sample_image, model.input_size)
    logits = normalised(build_efficientnet_lite0(), model.card.mean, model.card.std)
    oracle = captum_occlusion(logits, inputs, target, 64, 48, 0.5)
    assert oracle.max() > 0.01  # hiding the cat costs the cat class probability
    np.testing.assert_allclose(result.arrays["attribution"], oracle, atol=TOLERANCE)
    assert result.data["scale"] == pytest.approx(float(oracle.max()), abs=TOLERANCE)


def test_frames_fill_in_row_by_row(convlens_run, tiny_model, sample_image):
    """One frame per batch; with one row of windows per batch, each frame finishes 8 more pixel rows."""
    events = convlens_run(OCCLUSION, tiny_model, sample_image, window=16, stride=8, batch_size=7)
    frames = [event for event in events if isinstance(event, Frame)]
    progress = [event for event in events if isinstance(event, Progress)]
    assert len(frames) == 7 and [p.step for p in progress] == [7 * (k + 1) for k in range(7)]
    assert all(p.total == 49 for p in progress)
    picture = to_tensor(sample_image, (SIZE, SIZE))[0].numpy().transpose(1, 2, 0)
    grey = np.repeat(picture.mean(axis=2, keepdims=True), 3, axis=2)
    for step, frame in enumerate(frames[:-1]):
        finished = 8 * (step + 1)
        np.testing.assert_allclose(frame.image[finished:], grey[finished:], atol=1e-6)
        assert np.abs(frame.image[:finished] - grey[:finished]).max() > 0.05
    np.testing.assert_allclose(frames[-1].image, result_of(events).images["occlusion"], atol=1e-6)


def test_fills_hide_what_they_should(convlens_run, tiny_model):
    """On a flat grey picture, grey, mean and blur fills change nothing; black does. On chelsea all differ."""
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    for fill in ("grey", "mean", "blur"):
        result = result_of(convlens_run(OCCLUSION, tiny_model, flat, window=16, stride=16, fill=fill))
        np.testing.assert_allclose(result.arrays["attribution"], 0.0, atol=1e-6)
        np.testing.assert_allclose(
            result.arrays["probability_grid"], result.data["base_probability"], atol=1e-6
        )
    black = result_of(convlens_run(OCCLUSION, tiny_model, flat, window=16, stride=16, fill="zero"))
    assert np.abs(black.arrays["attribution"]).max() > 1e-4
    from skimage import data

    maps = [
        result_of(
            convlens_run(OCCLUSION, tiny_model, data.astronaut(), window=16, stride=8, fill=fill, target=3)
        )
        for fill in ("grey", "zero", "mean", "blur")
    ]
    for first in range(4):
        for second in range(first + 1, 4):
            assert not np.allclose(maps[first].arrays["attribution"], maps[second].arrays["attribution"])


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"window": 65}, "params.window", "a 65-pixel window does not fit in the 64x64 model input"),
        ({"window": 0}, "params.window", "at least 1"),
        ({"window": "big"}, "params.window", "expected an integer"),
        ({"stride": 0}, "params.stride", "at least 1"),
        ({"window": 16, "stride": 17}, "params.stride", "larger than the 16-pixel window"),
        ({"fill": "noise"}, "params.fill", "expected one of"),
        ({"target": 10}, "params.target", "class index"),
        ({"batch_size": 0}, "params.batch_size", "at least 1"),
        ({"batch_size": 513}, "params.batch_size", "at most 512"),
        ({"engine": "turbo"}, "params.engine", "expected one of"),
    ],
)
def test_bad_windows_and_strides_are_refused_before_any_work(tiny_model, sample_image, params, field, words):
    from convlens.runner import iterate, prepare_run

    calls = []
    original = tiny_model.logits
    tiny_model.logits = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    with pytest.raises(BadInput) as error:
        list(iterate(OCCLUSION, prepare_run(OCCLUSION, tiny_model, sample_image, params)))
    assert error.value.field == field and words in error.value.reason
    assert error.value.status == 400 and not calls


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"window": 500}, "params.window", "a 500-pixel window does not fit in the 224x224 model input"),
        ({"stride": 0}, "params.stride", "at least 1"),
        ({"engine": "turbo"}, "params.engine", "expected one of"),
    ],
)
def test_the_api_refuses_bad_windows_when_the_job_is_asked_for(client, params, field, words):
    answer = client.post(
        "/api/jobs",
        json={"method": "occlusion", "model": DEFAULT_MODEL, "image": "chelsea", "params": params},
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == field and words in answer.get_json()["error"]


def test_a_stride_larger_than_the_window_fails_the_job_naming_the_stride(app, client):
    """Each value alone is fine, so the job is accepted; the method refuses the pair before any occlusion."""
    params = {"window": 16, "stride": 17}
    answer = client.post(
        "/api/jobs",
        json={"method": "occlusion", "model": DEFAULT_MODEL, "image": "chelsea", "params": params},
    )
    assert answer.status_code == 202
    job_id = answer.get_json()["id"]
    ended = app.extensions["convlens"].jobs.get(job_id).ended
    if not ended.wait(JOB_TIMEOUT):  # a hang guard: the job fails before its first occlusion
        pytest.fail(
            f"job {job_id} had not ended after {JOB_TIMEOUT} s: {client.get(f'/api/jobs/{job_id}').json}"
        )
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["state"] == "failed" and job["frames"] == 0
    assert job["error"]["field"] == "params.stride"
    assert "larger than the 16-pixel window" in job["error"]["error"]


def drill_down_run(convlens_run, model, image, **params) -> tuple[list, Result]:
    events = convlens_run(OCCLUSION, model, image, **params)
    return events, result_of(events)


def test_drill_down_off_or_refining_everywhere_gives_captums_map(
    convlens_run, onnx_resnet, resnet18_with_statistics, sample_image
):
    """``drill_down`` 0 is the exact path; a threshold so small that every position is refined computes them all:
    both give Captum's map and say that nothing was estimated."""
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    logits = normalised(resnet18_with_statistics, MEAN, STD)
    for threshold, approximation in ((0.0, "exact"), (1e-12, "drill_down")):
        _, result = drill_down_run(
            convlens_run, onnx_resnet, sample_image, window=16, stride=4, drill_down=threshold
        )
        assert result.data["approximation"] == approximation
        assert result.data["positions_computed"] == result.data["positions"] == 169
        assert result.data["error_estimate"] == 0.0
        oracle = captum_occlusion(logits, inputs, result.data["target"], 16, 4, 0.5)
        np.testing.assert_allclose(result.arrays["attribution"], oracle, atol=TOLERANCE)


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_drill_downs_error_against_captums_map_is_within_its_estimate(
    convlens_run, onnx_resnet, resnet18_with_statistics, sample_image, threshold
):
    """The error is measured here against Captum's exact map (L∞ over the map's maximum); positions were skipped,
    so the map is an approximation, and the result's estimate is not below the measured error."""
    _, result = drill_down_run(
        convlens_run, onnx_resnet, sample_image, window=16, stride=4, drill_down=threshold
    )
    assert result.data["approximation"] == "drill_down" and result.data["drill_down"] == threshold
    assert 49 <= result.data["positions_computed"] < result.data["positions"]  # 7x7 coarse, not all fine
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    logits = normalised(resnet18_with_statistics, MEAN, STD)
    oracle = captum_occlusion(logits, inputs, result.data["target"], 16, 4, 0.5)
    error = float(np.abs(result.arrays["attribution"] - oracle).max() / np.abs(oracle).max())
    assert 0 < error <= result.data["error_estimate"]


def test_drill_down_streams_a_whole_map_first_then_refines_it(convlens_run, onnx_resnet, sample_image):
    """Event order: the first frame comes after every 4th position (4x4 of the 13x13 grid), a whole map with
    no pixel left grey; the second after the coarse pass (7x7); then one per refining batch, the last one the
    result. Progress counts the positions computed, never going back."""
    events, result = drill_down_run(
        convlens_run, onnx_resnet, sample_image, window=16, stride=4, drill_down=0.2, batch_size=8
    )
    frame_at = [index for index, event in enumerate(events) if isinstance(event, Frame)]
    after_frames = [events[index + 1] for index in frame_at]
    assert all(isinstance(event, Progress) for event in after_frames)
    assert [event.step for event in after_frames[:2]] == [16, 49]
    assert after_frames[0].total == 49 and after_frames[1].total == result.data["positions_computed"] > 49
    steps = [event.step for event in events if isinstance(event, Progress)]
    assert steps == sorted(steps) and steps[-1] == result.data["positions_computed"]
    frames = [events[index] for index in frame_at]
    picture = to_tensor(sample_image, (SIZE, SIZE))[0].numpy().transpose(1, 2, 0)
    grey = np.repeat(picture.mean(axis=2, keepdims=True), 3, axis=2)
    assert (np.abs(frames[0].image - grey).max(axis=2) > 1e-3).mean() > 0.9  # the map everywhere, at once
    assert len(frames) >= 4 and np.abs(frames[0].image - frames[-1].image).max() > 1e-3
    np.testing.assert_allclose(frames[-1].image, result.images["occlusion"], atol=1e-6)


@pytest.mark.parametrize(
    ("value", "words"),
    [(-0.1, "at least 0"), (1.5, "at most 1"), ("lots", "expected a number"), (True, "expected a number")],
)
def test_bad_drill_down_thresholds_are_refused_naming_the_field(
    client, tiny_model, sample_image, value, words
):
    from convlens.runner import prepare_run

    with pytest.raises(BadInput) as error:
        prepare_run(OCCLUSION, tiny_model, sample_image, {"drill_down": value})
    assert error.value.field == "params.drill_down" and words in error.value.reason
    answer = client.post(
        "/api/jobs",
        json={
            "method": "occlusion",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"drill_down": value},
        },
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "params.drill_down" and words in answer.get_json()["error"]
