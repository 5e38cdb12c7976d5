"""FGSM, BIM and PGD (L∞ and L2) equal torchattacks' FGSM, BIM, PGD and PGDL2 on the tiny model and on the default
model (ONNX and TorchScript), untargeted and targeted; the result stays within epsilon and in [0, 1]; the same seed
gives the same PGD bit for bit; targeted attacks on chelsea reach their class with the default budget; each step is
streamed (frame, metrics, progress) and the step the top-1 label flips is logged; bad parameters are refused by name.

The oracle is independent of convlens: torchattacks attacks the eager module wrapped to take [0, 1] pixels (the
``pixel_space`` fixture), never convlens's ``Model.forward``; PGD's random start is drawn by torchattacks from the
global generator seeded with the run's seed, the draws convlens makes from ``ctx.generator``. Norms, top classes and
probabilities are recomputed here with plain torch. Units: epsilon and step are /255 (L2: the [0, 1] image's L2
norm × 255).

Tolerances: 1e-6 absolute on [0, 1] pixels (float noise: one rounding of a pixel value). A sign step amplifies a
gradient's noise only where a component is near zero; measured, none differs. L2 steps carry the gradient's own
noise, which ten steps on EfficientNet compound to 6e-3 (ONNX) and 2e-2 (.pt), so on the default model L2 is
compared over two steps (6e-8 apart).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Log, Metrics, Progress, Result
from convlens.images import to_tensor
from convlens.models.store import ModelStore
from convlens.testing import find_method, of_type
from convlens_plugins.adversarial.attacks import ADVERSARIAL_ATTACK

TOLERANCE = 1e-6
SEED = 3
LYNX, TOASTER = 287, 859


def oracle_attack(oracle: nn.Module, inputs: torch.Tensor, seed: int, target: int | None = None, **params):
    """torchattacks' attack for ``params`` (convlens's names and /255 units) on ``inputs``."""
    attack, norm = params.get("attack", "pgd"), params.get("norm", "linf")
    epsilon, step = params.get("epsilon", 8.0) / 255, params.get("step", 2.0) / 255
    steps, random_start = params.get("steps", 10), params.get("random_start", True)
    if attack == "fgsm":
        method = torchattacks.FGSM(oracle, eps=epsilon)
    elif attack == "bim":
        method = torchattacks.BIM(oracle, eps=epsilon, alpha=step, steps=steps)
    elif norm == "linf":
        method = torchattacks.PGD(oracle, eps=epsilon, alpha=step, steps=steps, random_start=random_start)
    else:
        method = torchattacks.PGDL2(oracle, eps=epsilon, alpha=step, steps=steps, random_start=random_start)
    with torch.no_grad():
        label = int(oracle(inputs).argmax())
    if target is not None:
        method.set_mode_targeted_by_label(quiet=True)
        label = target
    torch.manual_seed(seed)
    return method(inputs, torch.tensor([label]))


def attack(convlens_run, model, image, seed: int = SEED, **params) -> tuple[list, Result]:
    events = convlens_run("adversarial_attack", model, image, seed=seed, **params)
    assert isinstance(events[-1], Result)
    return events, events[-1]


def adversarial_tensor(result: Result) -> torch.Tensor:
    return torch.from_numpy(result.arrays["adversarial"]).permute(2, 0, 1)[None]


def check_against_torchattacks(convlens_run, model, oracle, image, tolerance, **params) -> None:
    _, result = attack(convlens_run, model, image, **params)
    inputs = to_tensor(image, model.input_size)
    expected = oracle_attack(oracle, inputs, SEED, **params)
    assert (expected - inputs).abs().max() > 0, (
        "torchattacks left the image as it was: the test would prove nothing"
    )
    assert float((adversarial_tensor(result) - expected).abs().max()) <= tolerance


@pytest.fixture(scope="module")
def tiny_oracle(pixel_space):
    from convlens.testing import make_tiny_model

    model = make_tiny_model()
    return pixel_space(model.module, model.card.mean, model.card.std)


@pytest.fixture(scope="module")
def default_oracle(pixel_space, default_model):
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return pixel_space(build_efficientnet_lite0(), default_model.card.mean, default_model.card.std)


CASES = [
    {"attack": "fgsm"},
    {"attack": "bim"},
    {"attack": "pgd"},
    {"attack": "pgd", "random_start": False, "epsilon": 4.0, "step": 1.0, "steps": 6},
    {"attack": "pgd", "norm": "l2", "epsilon": 200.0, "step": 40.0},
    {"attack": "pgd", "norm": "l2", "epsilon": 100.0, "step": 30.0, "random_start": False},
]


@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("target", [None, 3])
def test_each_attack_matches_torchattacks_on_the_tiny_model(
    convlens_run, tiny_model, tiny_oracle, sample_image, params, target
):
    check_against_torchattacks(
        convlens_run, tiny_model, tiny_oracle, sample_image, TOLERANCE, target=target, **params
    )


DEFAULT_CASES = [
    {"attack": "fgsm"},
    {"attack": "bim"},
    {"attack": "pgd"},
    {"attack": "pgd", "norm": "l2", "epsilon": 200.0, "step": 40.0, "steps": 2},
]


@pytest.mark.parametrize("params", DEFAULT_CASES)
@pytest.mark.parametrize("model_id", ["efficientnet_lite0.onnx", "efficientnet_lite0.pt"])
def test_each_attack_matches_torchattacks_on_the_default_model(
    convlens_run, models_dir, default_oracle, sample_image, params, model_id
):
    model = ModelStore([models_dir]).get(model_id)
    check_against_torchattacks(convlens_run, model, default_oracle, sample_image, TOLERANCE, **params)


@pytest.mark.parametrize("params", CASES)
def test_the_adversarial_image_stays_within_epsilon_and_in_the_unit_range(
    convlens_run, tiny_model, sample_image, params
):
    params = {**params, "step": 60.0}
    _, result = attack(convlens_run, tiny_model, sample_image, **params)
    inputs = to_tensor(sample_image, tiny_model.input_size)[0].permute(1, 2, 0).numpy().astype(np.float64)
    adversarial = result.arrays["adversarial"].astype(np.float64)
    delta = adversarial - inputs
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    epsilon = params.get("epsilon", 8.0) / 255
    if params.get("norm", "linf") == "linf":
        assert np.abs(delta).max() <= epsilon + 1e-7
        assert np.abs(delta).max() >= epsilon - 1e-6, (
            "with a step of 60/255 the attack reaches the ball's edge"
        )
    else:
        assert np.linalg.norm(delta) <= epsilon * (1 + 1e-6)
        assert np.linalg.norm(delta) >= 0.9 * epsilon, (
            "with a step of 60/255 the attack nears the ball's edge"
        )
    np.testing.assert_allclose(result.arrays["perturbation"], delta, atol=1e-6)
    assert result.data["linf"] == pytest.approx(np.abs(delta).max() * 255, rel=1e-5)
    assert result.data["l2"] == pytest.approx(np.linalg.norm(delta) * 255, rel=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_is_bit_identical_for_the_same_seed_and_differs_for_another(
    convlens_run, tiny_model, sample_image, norm
):
    params = {"attack": "pgd", "norm": norm, "epsilon": 100.0 if norm == "l2" else 8.0, "steps": 3}
    first, again, other = (
        attack(convlens_run, tiny_model, sample_image, seed=seed, **params)[1].arrays["adversarial"]
        for seed in (5, 5, 6)
    )
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(("attack_name", "target"), [("fgsm", LYNX), ("pgd", TOASTER)])
def test_a_targeted_attack_on_the_default_model_reaches_its_class(
    convlens_run, default_model, default_oracle, sample_image, attack_name, target
):
    _, result = attack(convlens_run, default_model, sample_image, attack=attack_name, target=target)
    with torch.no_grad():
        before = int(default_oracle(to_tensor(sample_image, default_model.input_size)).argmax())
        after = int(default_oracle(adversarial_tensor(result)).argmax())
    assert before != target
    assert after == target
    assert result.data["top5_after"][0]["class"] == target
    assert result.data["reached_target_at"] is not None


def test_each_step_is_streamed_and_the_flip_is_logged_where_it_happens(
    convlens_run, tiny_model, tiny_oracle, sample_image
):
    params = {"attack": "bim", "epsilon": 3.0, "step": 0.5, "steps": 6}
    events, result = attack(convlens_run, tiny_model, sample_image, **params)
    inputs = to_tensor(sample_image, tiny_model.input_size)
    # BIM's state after k steps is torchattacks' BIM run for k steps.
    states = [inputs] + [
        oracle_attack(tiny_oracle, inputs, SEED, **{**params, "steps": k}) for k in range(1, 7)
    ]
    with torch.no_grad():
        probabilities = [tiny_oracle(state)[0].double().softmax(0) for state in states]
    true_class = int(probabilities[0].argmax())
    flips = [k for k, p in enumerate(probabilities) if int(p.argmax()) != true_class]
    assert flips and flips[0] > 1, "choose parameters whose flip comes after the first step"
    assert result.data["flipped_at"] == flips[0]
    logs = [log.message for log in of_type(events, Log)]
    assert len(logs) == 1 and logs[0].startswith(f"step {flips[0]}:")

    frames = of_type(events, Frame)
    assert [frame.step for frame in frames] == list(range(7))
    pixels = frames[-1].pixels()
    side = tiny_model.input_size[1]
    assert pixels.shape == (tiny_model.input_size[0], 3 * side, 3)
    expected_left = np.round(inputs[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(pixels[:, :side].astype(float) - expected_left).max() <= 1
    expected_right = np.round(states[-1][0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(pixels[:, 2 * side :].astype(float) - expected_right).max() <= 1
    assert "×" in frames[0].label

    metrics = of_type(events, Metrics)
    assert [m.step for m in metrics] == list(range(7))
    for state, p, m in zip(states, probabilities, metrics, strict=True):
        assert m.values["true class probability"] == pytest.approx(float(p[true_class]), abs=1e-6)
        assert m.values["linf (/255)"] == pytest.approx(float((state - inputs).abs().max()) * 255, abs=1e-4)
        assert m.values["l2 (/255)"] == pytest.approx(float((state - inputs).norm()) * 255, rel=1e-5)
    assert [p.step for p in of_type(events, Progress)] == list(range(7))

    top = probabilities[-1].topk(5)
    assert [entry["class"] for entry in result.data["top5_after"]] == top.indices.tolist()
    after = [entry["probability"] for entry in result.data["top5_after"]]
    np.testing.assert_allclose(after, top.values.numpy(), atol=1e-6)
    assert [entry["class"] for entry in result.data["top5_before"]] == probabilities[0].topk(
        5
    ).indices.tolist()
    assert set(result.images) == {"adversarial", "perturbation"}


def test_a_wide_frame_is_shrunk_to_512_pixels(convlens_run, default_model, sample_image):
    events, _ = attack(convlens_run, default_model, sample_image, attack="fgsm")
    assert all(frame.pixels().shape[1] <= 512 for frame in of_type(events, Frame))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"epsilon": -1.0}, "params.epsilon"),
        ({"epsilon": 256.0}, "params.epsilon"),
        ({"steps": 0}, "params.steps"),
        ({"target": 10}, "params.target"),
        ({"attack": "fgsm", "norm": "l2"}, "params.norm"),
        ({"attack": "bim", "norm": "l2"}, "params.norm"),
    ],
)
def test_bad_parameters_are_refused_by_name(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as caught:
        convlens_run("adversarial_attack", tiny_model, sample_image, **params)
    assert caught.value.field == field


def test_the_method_is_registered():
    assert find_method("adversarial_attack") is ADVERSARIAL_ATTACK
