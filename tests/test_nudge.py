"""The linear nudge (``linear_nudge``): one gradient g of z_target − z_true at chelsea, then the picture moved
by ε·sign(g) for a scan of ε, checked against plain torch on the eager EfficientNet-Lite0 (the ``pixel_space``
fixture, never convlens's ``Model.forward``) and against a linear net, where the first-order prediction is
exact.

Tolerances: the gradient is compared relative to its largest component (1e-4: float noise of TorchScript or
ONNX against eager); margins in logits to 2e-3 (float32 logits of about 10, and a sign that may differ where a
gradient component is float noise away from zero moves such a pixel by 2ε, whose first-order effect is that
component's size); probabilities to 1e-4. The deck's point, measured on chelsea (Egyptian cat, runner-up
tabby): up to ε = 0.02/255 the actual change of the margin is within 5 % of g·Δx (measured: 3 % at 0.01/255,
4.6 % at 0.018/255), at 8/255 it is under a tenth of it (4.4 against 140 logits), and the top-1 has become
tabby before ε = 1/255 (at 0.1/255).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Predictions, Progress, Result
from convlens.images import to_tensor
from convlens.models.base import ModelCard
from convlens.models.module import ModuleModel
from convlens.models.store import ModelStore
from convlens.testing import find_method, metric, of_type
from local import FORWARD_ONLY

MIN_EPSILON, MAX_EPSILON, POINTS = 0.01, 8.0, 12
SCAN = {"spacing": "geometric", "min_epsilon": MIN_EPSILON, "max_epsilon": MAX_EPSILON, "points": POINTS}
GRADIENT_TOLERANCE, LOGIT_TOLERANCE, PROBABILITY_TOLERANCE = 1e-4, 2e-3, 1e-4
LINEAR_SIZE, LINEAR_CLASSES = 32, 6


@pytest.fixture(scope="module")
def default_oracle(pixel_space, default_model):
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return pixel_space(build_efficientnet_lite0(), default_model.card.mean, default_model.card.std)


@pytest.fixture(scope="module")
def runs(models_dir, sample_image):
    """``runs(model_id)``: the events of the scan ``SCAN`` on chelsea, run once per model file and kept."""
    from convlens.testing import run_method

    kept = {}

    def run(model_id: str) -> list:
        if model_id not in kept:
            model = ModelStore([models_dir]).get(model_id)
            kept[model_id] = run_method("linear_nudge", model, sample_image, **SCAN)
        return kept[model_id]

    return run


def plain_scan(net: nn.Module, image: torch.Tensor, epsilons: np.ndarray, target: int | None = None) -> dict:
    """The nudge in plain torch: the top-1 y, the target t (the runner-up unless given), g = ∇(z_t − z_y), and
    for each ε (/255) the picture x + ε·sign(g) in [0, 1], its logits, the change of z_t − z_y and g·Δx."""
    pixels = image.clone().requires_grad_(True)
    logits = net(pixels)
    order = logits[0].detach().argsort(descending=True)
    y = int(order[0])
    t = int(order[1]) if target is None else target
    (g,) = torch.autograd.grad(logits[0, t] - logits[0, y], pixels)
    nudged = (image + torch.tensor(epsilons / 255, dtype=torch.float32).view(-1, 1, 1, 1) * g.sign()).clamp(
        0, 1
    )
    with torch.no_grad():
        scan = net(nudged).double()
    margins = scan[:, t] - scan[:, y]
    return {
        "y": y,
        "t": t,
        "g": g,
        "nudged": nudged,
        "logits": scan,
        "change": (margins - margins[0]).numpy(),
        "first_order": ((nudged - image).double() * g.double()).flatten(1).sum(1).numpy(),
    }


def chelsea(image: np.ndarray) -> torch.Tensor:
    return to_tensor(image, (224, 224))


@pytest.mark.parametrize("model_id", ["efficientnet_lite0.pt", "efficientnet_lite0.onnx"])
def test_the_gradient_and_the_scan_match_plain_torch_on_the_eager_module(
    runs, default_oracle, sample_image, model_id
):
    events = runs(model_id)
    result = events[-1]
    assert isinstance(result, Result)
    epsilons = np.concatenate([[0.0], np.geomspace(MIN_EPSILON, MAX_EPSILON, POINTS)])
    expected = plain_scan(default_oracle, chelsea(sample_image), epsilons)
    data, arrays = result.data, result.arrays
    assert (data["true_class"], data["target"]) == (expected["y"], expected["t"])
    assert np.allclose(arrays["epsilons"], epsilons, rtol=1e-12, atol=0)
    gradient = expected["g"][0].permute(1, 2, 0).numpy()
    assert np.abs(arrays["gradient"] - gradient).max() <= GRADIENT_TOLERANCE * np.abs(gradient).max()
    assert data["gradient_l1"] == pytest.approx(float(expected["g"].double().abs().sum()), rel=1e-4)
    assert np.abs(arrays["margin_change"] - expected["change"]).max() <= LOGIT_TOLERANCE
    assert np.abs(arrays["first_order"] - expected["first_order"]).max() <= LOGIT_TOLERANCE
    probabilities = expected["logits"].softmax(1)
    assert metric(events, "target probability") == pytest.approx(
        probabilities[:, expected["t"]].tolist(), abs=PROBABILITY_TOLERANCE
    )
    tops = expected["logits"].argmax(1).tolist()
    assert [row["top1"] for row in data["scan"]] == tops
    first_flip = next(i for i, top in enumerate(tops) if top != expected["y"])
    assert data["flipped_at"] == pytest.approx(epsilons[first_flip])
    assert data["flipped_to"] == tops[first_flip]


def test_the_first_order_prediction_holds_at_small_epsilon_and_fails_at_large(runs):
    events = runs("efficientnet_lite0.pt")
    data = events[-1].data
    small = [row for row in data["scan"] if 0 < row["epsilon"] <= 0.02]
    assert len(small) >= 2
    for row in small:
        assert row["margin_change"] == pytest.approx(row["first_order"], rel=0.05)
        # no pixel of chelsea clips at such ε; float32 rounds each moved pixel by up to half an ulp
        assert row["first_order"] == pytest.approx(row["epsilon_l1"], rel=1e-3)
    largest = data["scan"][-1]
    assert largest["epsilon"] == MAX_EPSILON
    assert 0 < largest["margin_change"] < 0.1 * largest["first_order"]
    assert data["linear_up_to"] >= 0.02 and data["linear_up_to"] < 1.0
    assert data["flipped_at"] < 1.0 and data["flipped_to"] == data["target"]
    assert data["reached_target_at"] == data["flipped_at"]
    changes = metric(events, "margin change")
    assert changes == pytest.approx([row["margin_change"] for row in data["scan"]])
    assert metric(events, "first-order prediction") == pytest.approx(
        [row["first_order"] for row in data["scan"]]
    )


@pytest.fixture(scope="module")
def linear_model() -> ModuleModel:
    """A seeded linear classifier of 32×32 pictures (normalised as ImageNet): z = W·((x − mean)/std) + b."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(3 * LINEAR_SIZE * LINEAR_SIZE, LINEAR_CLASSES)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
        layer.bias.copy_(torch.randn(LINEAR_CLASSES, generator=generator))
    card = ModelCard(
        "linear", input_size=(LINEAR_SIZE, LINEAR_SIZE), labels=[f"c{i}" for i in range(LINEAR_CLASSES)]
    )
    return ModuleModel("linear", nn.Sequential(nn.Flatten(), layer), card)


LINEAR_SCAN = {"spacing": "linear", "max_epsilon": 96.0, "points": 6}


def linear_expectation(model: ModuleModel, image: np.ndarray) -> dict:
    """For the linear net, in numpy: g = (w_t − w_y)/std exactly, and the change of the margin is g·Δx."""
    weights = model.module[1].weight.detach().double().numpy()
    bias = model.module[1].bias.detach().double().numpy()
    mean, std = (np.array(v).reshape(3, 1, 1) for v in (model.card.mean, model.card.std))
    x = to_tensor(image, (LINEAR_SIZE, LINEAR_SIZE))[0].double().numpy()
    logits = weights @ ((x - mean) / std).ravel() + bias
    y, t = (int(i) for i in np.argsort(-logits)[:2])
    g = ((weights[t] - weights[y]).reshape(x.shape)) / std
    epsilons = np.array([96.0 * k / 6 for k in range(7)])
    nudged = np.clip(x + (epsilons / 255).reshape(-1, 1, 1, 1) * np.sign(g), 0, 1)
    scan = (weights @ ((nudged - mean) / std).reshape(len(epsilons), -1).T).T + bias
    return {
        "x": x,
        "y": y,
        "t": t,
        "g": g,
        "epsilons": epsilons,
        "nudged": nudged,
        "logits": scan,
        "change": ((nudged - x) * g).reshape(len(epsilons), -1).sum(1),
    }


def test_on_a_linear_net_the_first_order_prediction_is_the_actual_change(
    convlens_run, linear_model, sample_image
):
    expected = linear_expectation(linear_model, sample_image)
    events = convlens_run("linear_nudge", linear_model, sample_image, **LINEAR_SCAN)
    result = events[-1]
    assert (result.data["true_class"], result.data["target"]) == (expected["y"], expected["t"])
    assert np.allclose(result.arrays["gradient"], expected["g"].transpose(1, 2, 0), rtol=1e-5, atol=1e-7)
    assert np.allclose(result.arrays["first_order"], expected["change"], rtol=1e-5, atol=1e-4)
    assert np.allclose(result.arrays["margin_change"], expected["change"], rtol=1e-5, atol=1e-4)
    rows = result.data["scan"]
    assert rows[-1]["epsilon_l1"] > rows[-1]["first_order"] * 1.01, "no pixel clipped: the test proves less"
    assert result.data["linear_up_to"] == 96.0
    tops = expected["logits"].argmax(1).tolist()
    assert [row["top1"] for row in rows] == tops
    assert result.data["reached_target_at"] == expected["epsilons"][tops.index(expected["t"])]


def test_each_frame_shows_original_sign_and_nudged_with_their_top_five(
    convlens_run, linear_model, sample_image
):
    expected = linear_expectation(linear_model, sample_image)
    events = convlens_run("linear_nudge", linear_model, sample_image, **LINEAR_SCAN)
    frames, predictions = of_type(events, Frame), of_type(events, Predictions)
    assert [f.step for f in frames] == [p.step for p in predictions] == list(range(7))
    assert [m.step for m in of_type(events, Metrics)] == list(range(7))
    assert (of_type(events, Progress)[-1].step, of_type(events, Progress)[-1].total) == (7, 7)
    sign = 0.5 + 0.5 * np.sign(expected["g"])
    probabilities = np.exp(expected["logits"] - expected["logits"].max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for k, (frame, shown) in enumerate(zip(frames, predictions, strict=True)):
        assert frame.label == "original | sign(g) | nudged"
        pixels = frame.image[0].double().numpy()
        assert pixels.shape == (3, LINEAR_SIZE, 3 * LINEAR_SIZE)
        for panel, picture in enumerate((expected["x"], sign, expected["nudged"][k])):
            assert (
                np.abs(pixels[:, :, panel * LINEAR_SIZE : (panel + 1) * LINEAR_SIZE] - picture).max() < 1e-6
            )
        for name, row in (("original", probabilities[0]), ("nudged", probabilities[k])):
            top = np.argsort(-row)[:5]
            assert [c["class"] for c in shown.tops[name]] == top.tolist()
            assert [c["probability"] for c in shown.tops[name]] == pytest.approx(row[top], abs=1e-6)


def test_a_repeat_with_another_seed_gives_the_same_scan_bit_for_bit(convlens_run, models_dir, sample_image):
    model = ModelStore([models_dir]).get("efficientnet_lite0.pt")
    first, second = (
        convlens_run("linear_nudge", model, sample_image, seed=seed, max_epsilon=2.0, points=3)
        for seed in (1, 2)
    )
    for name, array in first[-1].arrays.items():
        assert np.array_equal(array, second[-1].arrays[name]), name
    assert first[-1].data == second[-1].data
    for a, b in zip(of_type(first, Frame), of_type(second, Frame), strict=True):
        assert np.array_equal(a.pixels(), b.pixels())


def test_a_target_that_is_the_pictures_top_class_is_refused(convlens_run, linear_model, sample_image):
    top = linear_expectation(linear_model, sample_image)["y"]
    with pytest.raises(BadInput) as error:
        convlens_run("linear_nudge", linear_model, sample_image, target=top)
    assert error.value.field == "params.target"


class SquareRootOfLargeInputs(nn.Module):
    """Finite logits, a NaN gradient: ``where`` takes the square root of every input, negative ones too."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).where(images.flatten(1) < 100, images.flatten(1).sqrt())[:, :LINEAR_CLASSES]


def test_a_gradient_that_is_not_finite_stops_the_run_naming_the_model(sample_image):
    card = ModelCard("nan", input_size=(8, 8), labels=[f"c{i}" for i in range(LINEAR_CLASSES)])
    model = ModuleModel("nan", SquareRootOfLargeInputs(), card)
    from convlens.runner import iterate, prepare_run

    method = find_method("linear_nudge")
    events = []
    with pytest.raises(BadInput, match="gradient") as error:
        events.extend(iterate(method, prepare_run(method, model, sample_image, {})))
    assert (error.value.field, error.value.status) == ("model", 422)
    assert not events, "nothing is shown before the gradient is known to be finite"


@pytest.mark.parametrize(
    ("model", "params", "status", "field"),
    [
        ("efficientnet_lite0.onnx", {"max_epsilon": -1}, 400, "params.max_epsilon"),
        ("efficientnet_lite0.onnx", {"max_epsilon": 0}, 400, "params.max_epsilon"),
        ("efficientnet_lite0.onnx", {"max_epsilon": 256}, 400, "params.max_epsilon"),
        ("efficientnet_lite0.onnx", {"points": 0}, 400, "params.points"),
        ("efficientnet_lite0.onnx", {"min_epsilon": 0}, 400, "params.min_epsilon"),
        ("efficientnet_lite0.onnx", {"min_epsilon": 8, "max_epsilon": 4}, 400, "params.min_epsilon"),
        ("efficientnet_lite0.onnx", {"spacing": "log"}, 400, "params.spacing"),
        ("efficientnet_lite0.onnx", {"target": 1000}, 400, "params.target"),
        ("efficientnet_lite0.onnx", {"target": -1}, 400, "params.target"),
        (FORWARD_ONLY, {}, 422, "method"),
    ],
)
def test_bad_requests_through_the_api_are_4xx_naming_the_field(
    client, forward_only_model, model, params, status, field
):
    body = {"method": "linear_nudge", "model": model, "image": "chelsea", "params": params}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["field"] == field
    assert answer.get_json()["error"]
    if status == 422:
        assert "gradients" in answer.get_json()["error"]
