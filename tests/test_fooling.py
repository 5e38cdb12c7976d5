"""Fooling images: evolution runs on an ONNX model given as forward-only (no gradients, ``forward`` raises) and
reaches a confidence ONNX Runtime, run here on the file, agrees with; MAP-Elites keeps for each class the best
picture it showed the model; CMA-ES and NES repeat for a seed, whatever NumPy's global generator does; CMA-ES
climbs; NES, from grey or over a CPPN picture, reaches 99 % on the forward-only model and 99.6 % on the default
model, by ONNX Runtime's own forward of the streamed picture; gradient ascent reaches 99.6 % on the default model, and one of its steps equals the update written out here
(plain torch on the module, SciPy's Gaussian filter); bad parameters are refused by name.

The oracles are independent of convlens: an ``onnxruntime.InferenceSession`` on the exported file with the
card's normalisation done here in numpy, the eager ``nn.Module``, and NumPy for softmax and argmax.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import scipy.ndimage
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Predictions, Result
from convlens.models.base import ModelCard
from convlens.models.onnx import OnnxModel
from convlens.models.store import load_model
from convlens.runner import prepare_run
from convlens.testing import find_method, make_tiny_model, metric, of_type, run_method
from convlens_plugins.adversarial.fooling import FOOLING_EVOLUTION
from convlens_plugins.adversarial.fooling_gradient import FOOLING_GRADIENT

SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
BLANK = np.zeros((8, 8, 3), dtype=np.uint8)
"""The methods start from noise: the run's picture is unused."""


def small_net() -> nn.Module:
    """A seeded random conv net (10 classes) whose last layer is scaled up, so that some pictures get 99 %."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        ).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    with torch.no_grad():
        net[-1].weight.mul_(80.0)
    return net


class ForwardOnly(OnnxModel):
    """An ONNX model that offers no gradients: only ``logits`` (ONNX Runtime) may run it."""

    capabilities = frozenset({"layers"})

    def forward(self, *args, **kwargs):
        raise AssertionError("the search asked for a differentiable forward pass")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fooling") / "small.onnx"
    batch = {0: torch.export.Dim("batch", min=1)}
    torch.onnx.export(
        small_net(),
        (torch.rand(2, 3, SIZE, SIZE),),
        str(path),
        dynamo=True,
        dynamic_shapes=(batch,),
        verbose=False,
    )
    return path


def forward_only(path: Path) -> ForwardOnly:
    card = ModelCard(
        "small", input_size=(SIZE, SIZE), mean=MEAN, std=STD, labels=[f"c{i}" for i in range(10)]
    )
    model = load_model(path, card=card)
    model.__class__ = ForwardOnly
    return model


def runtime_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Softmax (float64) of Nx3xHxW [0, 1] ``images`` by ONNX Runtime on the file, normalised here."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean = np.array(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    logits = session.run(None, {session.get_inputs()[0].name: (images - mean) / std})[0].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def pictures(result: Result) -> np.ndarray:
    """The result's pictures as Nx3xHxW."""
    return result.arrays["images"].transpose(0, 3, 1, 2)


def test_evolution_fools_a_forward_only_onnx_model_and_onnx_runtime_agrees(onnx_file):
    model = forward_only(onnx_file)
    with pytest.raises(BadInput) as refused:
        prepare_run(FOOLING_GRADIENT, model, BLANK, {"targets": "2"})
    assert (refused.value.field, refused.value.status) == ("model", 422)

    events = run_method(
        FOOLING_EVOLUTION,
        model,
        BLANK,
        seed=1,
        targets="2",
        algorithm="map_elites",
        population=16,
        max_queries=400,
        confidence=0.99,
    )
    result = events[-1]
    probabilities = runtime_probabilities(onnx_file, pictures(result))
    (target,) = result.data["targets"]
    assert probabilities[0, 2] >= 0.99
    assert target["confidence"] == pytest.approx(probabilities[0, 2], abs=1e-6)
    assert [entry["class"] for entry in target["top5"]] == list(np.argsort(-probabilities[0])[:5])
    assert result.data["reached"] and result.data["queries"] <= 400
    assert metric(events, "p(c2)")[0] < 0.5, (
        "the first generation already had it: the test would prove nothing"
    )


def test_map_elites_keeps_for_each_class_the_best_picture_the_model_saw(onnx_file):
    model = forward_only(onnx_file)
    shown: list[np.ndarray] = []
    honest = model.logits

    def recorded(images, batch_size=32):
        shown.append(np.array(images, dtype=np.float32, copy=True))
        return honest(images, batch_size)

    model.logits = recorded
    targets = [2, 0, 9]
    events = run_method(
        FOOLING_EVOLUTION,
        model,
        BLANK,
        seed=2,
        targets="2, 0, 9",
        algorithm="map_elites",
        encoding="direct",
        resolution=4,
        population=12,
        max_queries=300,
        confidence=0.99,
    )
    result = events[-1]
    seen = np.concatenate(shown)
    probabilities = np.concatenate([runtime_probabilities(onnx_file, batch) for batch in shown])
    assert result.data["queries"] == len(seen) <= 300
    for index, (target, entry) in enumerate(zip(targets, result.data["targets"], strict=True)):
        best = int(np.argmax(probabilities[:, target]))
        assert np.array_equal(pictures(result)[index], seen[best])
        assert entry["confidence"] == pytest.approx(probabilities[best, target], abs=1e-6)
        reached = np.flatnonzero(probabilities[:, target] >= 0.99)
        assert entry["queries_to_99"] == (int(reached[0]) + 1 if reached.size else None)
    assert any(entry["queries_to_99"] for entry in result.data["targets"])
    assert any(entry["queries_to_99"] is None for entry in result.data["targets"])

    names = ["c2", "c0", "c9"]
    frames = of_type(events, Frame)
    assert {frame.label for frame in frames} == {"c2 | c0 | c9"}
    assert frames[-1].pixels().shape == (SIZE, 3 * SIZE, 3)
    assert torch.equal(frames[-1].image[0, :, :, SIZE : 2 * SIZE], torch.from_numpy(pictures(result)[1]))
    assert all(list(p.tops) == names for p in of_type(events, Predictions))
    for name in names:
        confidences = metric(events, f"p({name})")
        assert confidences == sorted(confidences), "a champion was replaced by a worse picture"
    queries = metric(events, "queries")
    assert queries == sorted(queries) and queries[-1] == len(seen)


@pytest.mark.parametrize(
    ("algorithm", "encoding"), [("cma_es", "cppn"), ("cma_es", "direct"), ("nes", "direct"), ("nes", "cppn")]
)
def test_searches_repeat_for_a_seed_whatever_the_global_generator_does(onnx_file, algorithm, encoding):
    model = forward_only(onnx_file)
    honest = model.logits
    disturbances = iter(range(10**6))

    def disturbed(images, batch_size=32):
        np.random.seed(next(disturbances))  # another job in the process drawing from NumPy's global generator
        np.random.standard_normal(7)
        return honest(images, batch_size)

    params = {
        "targets": "2, 0",
        "algorithm": algorithm,
        "encoding": encoding,
        "resolution": 8,
        "max_queries": 96,
        "pattern_queries": 16,
    }
    first = run_method(FOOLING_EVOLUTION, model, BLANK, seed=5, **params)
    model.logits = disturbed
    again = run_method(FOOLING_EVOLUTION, model, BLANK, seed=5, **params)
    other = run_method(FOOLING_EVOLUTION, model, BLANK, seed=6, **params)
    assert first[-1].data["queries"] == 96
    assert np.array_equal(first[-1].arrays["images"], again[-1].arrays["images"])
    frames = [of_type(run, Frame) for run in (first, again)]
    assert all(np.array_equal(a.pixels(), b.pixels()) for a, b in zip(*frames, strict=True))
    assert not np.array_equal(first[-1].arrays["images"], other[-1].arrays["images"])


def test_cma_es_climbs_toward_its_class(onnx_file):
    events = run_method(
        FOOLING_EVOLUTION,
        forward_only(onnx_file),
        BLANK,
        seed=1,
        targets="2",
        algorithm="cma_es",
        encoding="direct",
        resolution=8,
        max_queries=640,
        confidence=0.99,
    )
    confidences = metric(events, "p(c2)")
    assert confidences[0] < 0.3 and confidences[-1] > 0.9
    assert runtime_probabilities(onnx_file, pictures(events[-1]))[0, 2] == pytest.approx(
        confidences[-1], abs=1e-6
    )


def streamed_pictures(events) -> np.ndarray:
    """The last streamed frame's picture as 1x3xHxW (one target: one panel, unshrunk)."""
    return of_type(events, Frame)[-1].image.numpy()


@pytest.mark.parametrize("encoding", ["direct", "cppn"])
def test_nes_fools_a_forward_only_onnx_model_and_onnx_runtime_agrees_on_the_streamed_picture(
    onnx_file, encoding
):
    events = run_method(
        FOOLING_EVOLUTION,
        forward_only(onnx_file),
        BLANK,
        seed=1,
        targets="2",
        algorithm="nes",
        encoding=encoding,
        resolution=8,
        population=16,
        max_queries=1600,
        pattern_queries=160,
        confidence=0.99,
    )
    result = events[-1]
    (target,) = result.data["targets"]
    streamed = streamed_pictures(events)
    assert np.array_equal(streamed, pictures(result))
    assert runtime_probabilities(onnx_file, streamed)[0, 2] >= 0.99
    assert target["confidence"] == pytest.approx(runtime_probabilities(onnx_file, streamed)[0, 2], abs=1e-6)
    assert result.data["reached"] and result.data["queries"] - 16 < target["queries_to_99"] <= 1600, (
        "it went on after the bar, or stopped short of it"
    )
    queries, confidences = metric(events, "queries"), metric(events, "p(c2)")
    before = confidences[queries.index(160)] if encoding == "cppn" else confidences[0]
    assert before < 0.9, "the CPPN or the first generation already had it: NES would prove nothing"


def test_nes_reaches_the_papers_bar_on_the_default_model(default_model, models_dir):
    events = run_method(
        FOOLING_EVOLUTION,
        default_model,
        BLANK,
        seed=0,
        targets="king penguin",
        algorithm="nes",
        encoding="direct",
        resolution=16,
        population=32,
        max_queries=8000,
    )
    result = events[-1]
    session = onnxruntime.InferenceSession(
        str(models_dir / "efficientnet_lite0.onnx"), providers=["CPUExecutionProvider"]
    )
    mean = np.array(default_model.card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(default_model.card.std, dtype=np.float32).reshape(1, 3, 1, 1)
    logits = session.run(None, {session.get_inputs()[0].name: (streamed_pictures(events) - mean) / std})[0]
    probabilities = np.exp(logits.astype(np.float64) - logits.max())
    probabilities /= probabilities.sum()
    assert result.data["reached"] and probabilities[0, 145] >= 0.996
    assert metric(events, "p(king penguin)")[0] < 0.01


def test_gradient_ascent_reaches_the_papers_bar_on_the_default_model(default_model, models_dir):
    events = run_method(
        "fooling_gradient", default_model, BLANK, seed=0, targets="king penguin, starfish", max_steps=40
    )
    result = events[-1]
    assert result.data["reached"] and result.data["steps"] <= 40
    session = onnxruntime.InferenceSession(
        str(models_dir / "efficientnet_lite0.onnx"), providers=["CPUExecutionProvider"]
    )
    mean = np.array(default_model.card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(default_model.card.std, dtype=np.float32).reshape(1, 3, 1, 1)
    logits = session.run(None, {session.get_inputs()[0].name: (pictures(result) - mean) / std})[0].astype(
        np.float64
    )
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert probabilities[0, 145] >= 0.996 and probabilities[1, 327] >= 0.996
    frame, tops = of_type(events, Frame)[-1], of_type(events, Predictions)[-1].tops
    assert frame.label == "king penguin | starfish" and frame.pixels().shape == (224, 448, 3)
    for row, name in enumerate(("king penguin", "starfish")):
        assert [entry["class"] for entry in tops[name]] == list(np.argsort(-probabilities[row])[:5])


def test_a_gradient_step_with_decay_and_blur_is_the_update_written_out():
    model = make_tiny_model()
    events = run_method(
        FOOLING_GRADIENT,
        model,
        BLANK,
        seed=4,
        targets="3, 8",
        max_steps=1,
        confidence=1.0,
        step=2.0,
        decay=0.1,
        blur=1.5,
    )
    rng = np.random.default_rng(4)
    start = torch.from_numpy(np.clip(rng.normal(0.5, 0.25, (2, 3, 64, 64)), 0, 1).astype(np.float32))
    pixels = start.clone().requires_grad_(True)
    mean = torch.tensor(model.card.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.card.std).view(1, 3, 1, 1)
    log_probabilities = torch.log_softmax(model.module((pixels - mean) / std).double(), dim=1)
    (gradient,) = torch.autograd.grad(log_probabilities[0, 3] + log_probabilities[1, 8], pixels)
    moved = (
        (start + 2 / 255 * gradient / gradient.abs().mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1).numpy()
    )
    moved = 0.5 + 0.9 * (moved - 0.5)
    expected = scipy.ndimage.gaussian_filter(moved, sigma=(0, 0, 1.5, 1.5), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(pictures(events[-1]), expected, atol=1e-5)
    assert not np.allclose(pictures(events[-1]), start.numpy(), atol=1e-3)


def test_gradient_ascent_repeats_for_a_seed_and_differs_for_another():
    model = make_tiny_model()
    first, again, other = (
        run_method(FOOLING_GRADIENT, model, BLANK, seed=seed, targets="1", max_steps=3)[-1]
        for seed in (7, 7, 8)
    )
    assert np.array_equal(first.arrays["images"], again.arrays["images"])
    assert not np.array_equal(first.arrays["images"], other.arrays["images"])


def test_non_finite_logits_stop_the_run_naming_the_model():
    model = make_tiny_model()
    model.logits = lambda images, batch_size=32: np.full((len(images), 10), math.nan, dtype=np.float32)
    with pytest.raises(BadInput, match="non-finite logits") as caught:
        run_method(FOOLING_EVOLUTION, model, BLANK, targets="1", max_queries=32)
    assert (caught.value.field, caught.value.status) == ("model", 422)


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("fooling_evolution", {"targets": ""}, "params.targets"),
        ("fooling_evolution", {"targets": " , "}, "params.targets"),
        ("fooling_evolution", {"targets": "10"}, "params.targets"),
        ("fooling_evolution", {"targets": "-1"}, "params.targets"),
        ("fooling_evolution", {"targets": "3, 3"}, "params.targets"),
        ("fooling_evolution", {"targets": "no such class"}, "params.targets"),
        ("fooling_evolution", {"targets": ",".join(map(str, range(9)))}, "params.targets"),
        ("fooling_evolution", {"population": 0}, "params.population"),
        ("fooling_evolution", {"max_queries": 10**9}, "params.max_queries"),
        (
            "fooling_evolution",
            {"algorithm": "cma_es", "population": 32, "max_queries": 20},
            "params.max_queries",
        ),
        ("fooling_evolution", {"encoding": "direct", "resolution": 65}, "params.resolution"),
        ("fooling_evolution", {"confidence": 1.5}, "params.confidence"),
        ("fooling_evolution", {"algorithm": "nes", "population": 15}, "params.population"),
        ("fooling_evolution", {"algorithm": "nes", "resolution": 65}, "params.resolution"),
        ("fooling_evolution", {"pattern_queries": -1}, "params.pattern_queries"),
        ("fooling_evolution", {"algorithm": "nsga"}, "params.algorithm"),
        ("fooling_gradient", {"targets": "10"}, "params.targets"),
        ("fooling_gradient", {"max_steps": 0}, "params.max_steps"),
        ("fooling_gradient", {"blur": -1.0}, "params.blur"),
    ],
)
def test_bad_parameters_are_refused_by_name(method, params, field):
    with pytest.raises(BadInput) as caught:
        run_method(method, make_tiny_model(), BLANK, **params)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("params", "field"), [({"targets": "1000"}, "params.targets"), ({"population": 0}, "params.population")]
)
def test_the_server_answers_bad_parameters_with_a_400_naming_them(client, params, field):
    answer = client.post(
        "/api/jobs",
        json={
            "method": "fooling_evolution",
            "model": "efficientnet_lite0.onnx",
            "image": "chelsea",
            "params": params,
        },
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == field and answer.get_json()["error"]


def test_the_methods_are_registered():
    assert find_method("fooling_evolution") is FOOLING_EVOLUTION
    assert find_method("fooling_gradient") is FOOLING_GRADIENT
