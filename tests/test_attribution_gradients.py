"""Gradient × input, SmoothGrad and Integrated Gradients equal Captum's InputXGradient, NoiseTunnel(Saliency) and
IntegratedGradients, on a random ResNet-18 exported to ONNX, TorchScript and torch.export and on the default
model; the same seed gives the same SmoothGrad; IG starts from the baseline it names (black 0, white 1, grey
0.5, the image blurred) and its attributions add up to the score's change from that baseline; bad parameters
are refused by name.

The oracles are independent of convlens: Captum differentiates the eager module wrapped to take [0, 1] pixels
(the ``pixel_space`` fixture), never convlens's ``Model.forward``; IG's baselines and SmoothGrad's noise
level are built here from what the method promises (the parameter's help and the module docstring), not by
the plugin's functions.

Tolerances are the largest absolute difference relative to the oracle's largest absolute value: 1e-4 where
convlens and Captum run the same float32 graph or the exported one against the eager module (.pt, .pt2),
1e-3 for ONNX (its graph is rebuilt from ONNX operators, which round differently). SmoothGrad is compared
exactly, not statistically: convlens draws its noise batch by batch from ``ctx.generator``
(``randn(b, 3, H, W) * std``), the draws Captum's NoiseTunnel makes from the global generator seeded the same.
"""

from __future__ import annotations

import json

import captum.attr as captum_attr
import cv2
import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Progress, Result
from convlens.images import to_tensor
from convlens.models.base import ModelCard
from convlens.models.module import ModuleModel
from convlens.models.store import ModelStore
from convlens_plugins.attribution.gradients import (
    GRADIENT_METHODS,
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    RULES,
    SMOOTHGRAD,
)

SIZE = 64
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
LABELS = [f"thing {index}" for index in range(1000)]
TOLERANCE = {"eager": 1e-4, "resnet18.pt": 1e-4, "resnet18.pt2": 1e-4, "resnet18.onnx": 1e-3}
FILES = ["resnet18.onnx", "resnet18.pt", "resnet18.pt2"]
BASELINES = ["black", "white", "grey", "blurred"]
BLUR_SIGMA = 0.05
"""The blurred baseline's promised Gaussian: sigma 5 % of the longer side, cut at 3 sigma, edges replicated."""


def relative_error(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert expected.abs().max() > 0, "the oracle is all zeros: the comparison would prove nothing"
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def eager(resnet18_with_statistics) -> ModuleModel:
    card = ModelCard(title="eager", input_size=(SIZE, SIZE), mean=MEAN, std=STD, labels=LABELS)
    return ModuleModel("eager", resnet18_with_statistics, card)


@pytest.fixture(scope="module")
def resnet_oracle(pixel_space, resnet18_with_statistics) -> nn.Module:
    """The eager ResNet-18 taking [0, 1] pixels: what Captum differentiates."""
    return pixel_space(resnet18_with_statistics, MEAN, STD)


@pytest.fixture(scope="module")
def store(
    resnet18_with_statistics, tmp_path_factory: pytest.TempPathFactory, export_three_formats
) -> ModelStore:
    """The random ResNet-18 as resnet18.onnx, .pt2 and .pt (as tests/test_model_store.py writes them)."""
    module = resnet18_with_statistics
    directory = tmp_path_factory.mktemp("gradient-models")
    export_three_formats(module, directory, SIZE)
    (directory / "resnet18-labels.txt").write_text("\n".join(LABELS) + "\n")
    card = {"title": "ResNet-18 (random)", "input_size": [SIZE, SIZE], "mean": list(MEAN), "std": list(STD)}
    (directory / "resnet18.json").write_text(json.dumps({**card, "labels": "resnet18-labels.txt"}))
    return ModelStore([directory])


def reference_baseline(inputs: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline ``kind`` as promised, built with numpy and OpenCV: black 0, white 1, grey 0.5, or the
    1x3xHxW image under a Gaussian of sigma ``BLUR_SIGMA`` × its longer side (cut at 3 sigma, edges replicated)."""
    if kind != "blurred":
        return torch.full_like(inputs, {"black": 0.0, "white": 1.0, "grey": 0.5}[kind])
    sigma = BLUR_SIGMA * max(inputs.shape[-2:])
    side = 2 * int(3 * sigma) + 1
    pixels = inputs[0].numpy().transpose(1, 2, 0)
    blurred = cv2.GaussianBlur(pixels, (side, side), sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return torch.from_numpy(blurred.transpose(2, 0, 1).copy())[None]


def run(convlens_run, analysis, model, image, /, **params) -> tuple[list, Result]:
    events = convlens_run(analysis, model, image, **params)
    assert isinstance(events[-1], Result)
    return events, events[-1]


def check_target(result: Result, oracle: nn.Module, inputs: torch.Tensor, target, tolerance: float) -> int:
    with torch.no_grad():
        logits = oracle(inputs)[0].double()
    expected = target if target is not None else int(logits.argmax())
    assert result.data["target"] == expected
    assert abs(result.data["score"] - float(logits[expected])) <= tolerance * float(logits.abs().max())
    return expected


def input_x_gradient_oracle(oracle: nn.Module, inputs: torch.Tensor, target: int) -> torch.Tensor:
    inputs = inputs.clone().requires_grad_(True)
    return captum_attr.InputXGradient(oracle).attribute(inputs, target=target)[0].detach()


def smoothgrad_oracle(oracle: nn.Module, inputs, target, samples, std, batch_size, seed) -> torch.Tensor:
    tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(oracle))
    torch.manual_seed(seed)
    attribution = tunnel.attribute(
        inputs,
        nt_type="smoothgrad",
        nt_samples=samples,
        nt_samples_batch_size=batch_size,
        stdevs=std,
        target=target,
        abs=False,
    )
    return attribution[0].detach()


def integrated_gradients_oracle(
    oracle: nn.Module, inputs, target, baseline, steps, rule, batch_size
) -> tuple[torch.Tensor, float]:
    attribution, delta = captum_attr.IntegratedGradients(oracle).attribute(
        inputs,
        baselines=reference_baseline(inputs, baseline),
        target=target,
        n_steps=steps,
        method=rule,
        internal_batch_size=batch_size,
        return_convergence_delta=True,
    )
    return attribution[0].detach(), float(delta[0])


def check_methods_against_captum(convlens_run, model, oracle, image, tolerance, target=None) -> None:
    inputs = to_tensor(image, model.input_size)
    _, result = run(convlens_run, INPUT_X_GRADIENT, model, image, target=target)
    target = check_target(result, oracle, inputs, target, tolerance)
    expected = input_x_gradient_oracle(oracle, inputs, target)
    assert result.arrays["attributions"].shape == (3, *model.input_size)
    assert relative_error(result.arrays["attributions"], expected) < tolerance

    settings = {"samples": 6, "noise_level": 0.2, "batch_size": 4}
    _, result = run(convlens_run, SMOOTHGRAD, model, image, target=target, seed=7, **settings)
    # The promise: noise std = noise_level × (max - min) of the image the model sees.
    std = 0.2 * float(inputs.max() - inputs.min())
    assert result.data["noise_std"] == pytest.approx(std, rel=1e-6)
    expected = smoothgrad_oracle(oracle, inputs, target, 6, std, 4, seed=7)
    assert relative_error(result.arrays["attributions"], expected) < tolerance

    _, result = run(convlens_run, INTEGRATED_GRADIENTS, model, image, target=target, steps=12, batch_size=5)
    expected, _ = integrated_gradients_oracle(oracle, inputs, target, "black", 12, "gausslegendre", 5)
    assert relative_error(result.arrays["attributions"], expected) < tolerance


@pytest.mark.parametrize("model_id", FILES)
def test_every_method_matches_captum_on_every_format_of_resnet18(
    convlens_run, store, resnet_oracle, sample_image, model_id
):
    # The oracle runs Captum on the eager torchvision module, so the exported file is checked too.
    check_methods_against_captum(
        convlens_run, store.get(model_id), resnet_oracle, sample_image, TOLERANCE[model_id]
    )


def test_every_method_matches_captum_for_a_chosen_class(convlens_run, eager, resnet_oracle, sample_image):
    check_methods_against_captum(
        convlens_run, eager, resnet_oracle, sample_image, TOLERANCE["eager"], target=281
    )


def test_every_method_matches_captum_on_the_default_model(
    convlens_run, pixel_space, models_dir, sample_image
):
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    model = ModelStore([models_dir]).get("efficientnet_lite0.onnx")
    # Captum on the eager EfficientNet-Lite0 the file was written from (measured: 6e-7 apart).
    oracle = pixel_space(build_efficientnet_lite0(), model.card.mean, model.card.std)
    check_methods_against_captum(convlens_run, model, oracle, sample_image, 1e-4)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", BASELINES)
def test_integrated_gradients_matches_captum_for_each_rule_and_baseline(
    convlens_run, eager, resnet_oracle, sample_image, rule, baseline
):
    _, result = run(
        convlens_run,
        INTEGRATED_GRADIENTS,
        eager,
        sample_image,
        steps=9,
        method=rule,
        baseline=baseline,
        batch_size=4,
    )
    target = result.data["target"]
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    expected, delta = integrated_gradients_oracle(resnet_oracle, inputs, target, baseline, 9, rule, 4)
    # Captum weighs every trapezoid point 1/n (the ends 1/2n): its weights add up to (n-1)/n, not 1.
    captum_weight = 8 / 9 if rule == "riemann_trapezoid" else 1.0
    assert relative_error(result.arrays["attributions"] * captum_weight, expected) < 1e-4
    # Captum's convergence delta is the same completeness check.
    change = result.data["score"] - result.data["baseline_score"]
    assert result.data["attribution_sum"] * captum_weight - change == pytest.approx(
        delta, abs=1e-4 * abs(change) + 1e-5
    )
    if captum_weight == 1.0:
        assert result.data["completeness_error"] == pytest.approx(delta, abs=1e-4 * abs(change) + 1e-5)


@pytest.mark.parametrize("baseline", BASELINES)
def test_integrated_gradients_attributions_add_up_to_the_score_change_from_the_named_baseline(
    convlens_run, eager, resnet_oracle, sample_image, baseline
):
    # Class 415: each baseline moves its score by more than 0.2 (the top class's moves 0.1 from the blur).
    params = {"steps": 64, "baseline": baseline, "target": 415}
    _, result = run(convlens_run, INTEGRATED_GRADIENTS, eager, sample_image, **params)
    data = result.data
    inputs = to_tensor(sample_image, (SIZE, SIZE))
    with torch.no_grad():
        score = float(resnet_oracle(inputs)[0, data["target"]])
        baseline_score = float(resnet_oracle(reference_baseline(inputs, baseline))[0, data["target"]])
    change = score - baseline_score
    assert abs(change) > 0.2  # a real change of score, so the check can fail
    assert data["score"] == pytest.approx(score, rel=1e-5, abs=1e-5)
    assert data["baseline_score"] == pytest.approx(baseline_score, rel=1e-5, abs=1e-5)
    assert float(result.arrays["attributions"].sum(dtype=np.float64)) == pytest.approx(
        data["attribution_sum"], rel=1e-5
    )
    assert abs(data["attribution_sum"] - change) < 0.03 * abs(change)
    assert data["completeness_relative_error"] == pytest.approx(
        abs(data["attribution_sum"] - change) / abs(change), abs=1e-4
    )


def test_integrated_gradients_reports_progress_per_batch(convlens_run, eager, sample_image):
    events, _ = run(convlens_run, INTEGRATED_GRADIENTS, eager, sample_image, steps=10, batch_size=4)
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(4, 10), (8, 10), (10, 10)]


def test_smoothgrad_is_the_same_for_the_same_seed_and_differs_for_another(
    convlens_run, tiny_model, sample_image
):
    def attributions(seed):
        return run(convlens_run, SMOOTHGRAD, tiny_model, sample_image, samples=5, seed=seed)[1].arrays[
            "attributions"
        ]

    first, again, other = attributions(3), attributions(3), attributions(4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_smoothgrad_shows_the_running_mean_after_each_batch(convlens_run, tiny_model, sample_image):
    events, result = run(convlens_run, SMOOTHGRAD, tiny_model, sample_image, samples=7, batch_size=3)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [(e.step, e.total) for e in events if isinstance(e, Progress)] == [(3, 7), (6, 7), (7, 7)]
    assert len(frames) == 4  # one per batch, then the final one
    assert not np.allclose(frames[0].image, frames[2].image)  # the map changes as copies come in
    np.testing.assert_allclose(frames[2].image, result.images["smoothgrad"])
    signed = run(convlens_run, SMOOTHGRAD, tiny_model, sample_image, samples=7, batch_size=3, reduce="signed")
    np.testing.assert_allclose(
        [e for e in signed[0] if isinstance(e, Frame)][2].image, signed[1].images["signed"]
    )


@pytest.mark.parametrize("analysis", GRADIENT_METHODS, ids=lambda m: m.name)
def test_each_method_shows_a_heatmap_and_a_signed_view(convlens_run, tiny_model, sample_image, analysis):
    _, result = run(convlens_run, analysis, tiny_model, sample_image, overlay=1.0)
    attributions = result.arrays["attributions"]
    magnitude = np.abs(attributions).max(axis=0)
    scale = np.percentile(magnitude, 99)
    assert result.data["scale"] == pytest.approx(scale, rel=1e-5)
    np.testing.assert_allclose(result.images["map"], np.minimum(magnitude / scale, 1.0), atol=1e-5)
    # Coloured by matplotlib's inferno (the README's promise), 256 colours of 8 bits.
    inferno = matplotlib.colormaps["inferno"](np.rint(result.images["map"] * 255).astype(int))[..., :3]
    np.testing.assert_allclose(result.images[analysis.name], inferno, atol=0.5 / 255 + 1e-6)
    signed = result.images["signed"]
    channel_sum = attributions.sum(axis=0)
    strong = np.abs(channel_sum) > result.data["signed_scale"]
    assert strong.any() and (~strong).any()
    # Strongly positive pixels are red, strongly negative ones blue, and a zero would be white.
    assert (signed[strong & (channel_sum > 0)][:, 0] > 0.6).all()
    assert (signed[strong & (channel_sum < 0)][:, 2] > 0.6).all()


@pytest.mark.parametrize(
    ("analysis", "params", "field"),
    [
        (INTEGRATED_GRADIENTS, {"steps": 0}, "params.steps"),
        (INTEGRATED_GRADIENTS, {"steps": 10**6}, "params.steps"),
        (INTEGRATED_GRADIENTS, {"steps": 1, "method": "riemann_trapezoid"}, "params.steps"),
        (INTEGRATED_GRADIENTS, {"batch_size": 0}, "params.batch_size"),
        (INTEGRATED_GRADIENTS, {"baseline": "pink"}, "params.baseline"),
        (INTEGRATED_GRADIENTS, {"method": "simpson"}, "params.method"),
        (SMOOTHGRAD, {"samples": 0}, "params.samples"),
        (SMOOTHGRAD, {"samples": 10**6}, "params.samples"),
        (SMOOTHGRAD, {"noise_level": -0.1}, "params.noise_level"),
        (INPUT_X_GRADIENT, {"target": 10}, "params.target"),
    ],
)
def test_bad_parameters_are_refused_by_name(convlens_run, tiny_model, sample_image, analysis, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run(analysis, tiny_model, sample_image, **params)
    assert error.value.field == field


def test_the_module_exports_its_three_methods():
    names = [method.name for method in GRADIENT_METHODS]
    assert names == ["input_x_gradient", "smoothgrad", "integrated_gradients"]
    assert all(
        method.needs == {"gradients"} and method.topic == "Which pixels matter" for method in GRADIENT_METHODS
    )
