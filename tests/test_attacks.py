"""FGSM, BIM and PGD (L∞ and L2) equal torchattacks' FGSM, BIM, PGD and PGDL2 on the tiny model, on the default
model (ONNX, TorchScript, torch.export) and on a random ResNet-18 (eager, TorchScript, torch.export; ONNX, whose
BatchNorms are folded, under L2), untargeted and targeted; the result stays within epsilon and in [0, 1]; the same seed
gives the same PGD bit for bit; targeted attacks on chelsea reach their class with the default budget; each step is
streamed (frame, metrics, progress) and the step the top-1 label flips is logged; bad parameters are refused by name.

The oracle is independent of convlens: torchattacks attacks the eager module wrapped to take [0, 1] pixels (the
``pixel_space`` fixture), never convlens's ``Model.forward``, and for FGSM, BIM and PGD fed its pixels in
channels-last order, as convlens feeds a CPU network (``FedChannelsLast``: the same mathematics in the same memory
order; in another order a convolution's float noise becomes whole sign steps); PGD's random start is drawn by
torchattacks from the global generator seeded with the run's seed, the draws convlens makes from
``ctx.generator``. Norms, top classes and probabilities are recomputed here with plain torch. Units: epsilon and
step are /255 (L2: the [0, 1] image's L2 norm × 255).

Tolerances: 1e-6 absolute on [0, 1] pixels (float noise: one rounding of a pixel value). A sign step amplifies a
gradient's noise only where a component is near zero; measured, none differs. L2 steps carry the gradient's own
noise, which ten steps on EfficientNet compound to 6e-3 (ONNX) and 2e-2 (.pt), so on the default model L2 is
compared over two steps (6e-8 apart).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Log, Metrics, Predictions, Progress, Result
from convlens.images import to_tensor
from convlens.models.store import ModelStore
from convlens.testing import find_method, of_type
from convlens_plugins.adversarial.attacks import ADVERSARIAL_ATTACK, attack_steps
from local import FORWARD_ONLY

TOLERANCE = 1e-6
SEED = 3
LYNX, TOASTER = 287, 859


class _ChannelsLast(torch.autograd.Function):
    """Pixels in channels-last order; their gradient back in contiguous order (PGDL2 ``.view``s it)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.contiguous()


class FedChannelsLast(nn.Module):
    """``net`` fed its pixels in channels-last order, as convlens's FGSM, BIM and PGD feed a CPU network.

    Only the memory order changes, not the mathematics: a convolution sums in another order, so the logits differ
    by float noise (1e-7), which ``sign(∇)`` would turn into whole steps of difference; in the same order both
    sides compute the same floats and the comparison stays exact.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.eval()  # torchattacks puts the module back in the mode it was given

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_ChannelsLast.apply(images))


def oracle_attack(oracle: nn.Module, inputs: torch.Tensor, seed: int, target: int | None = None, **params):
    """torchattacks' attack for ``params`` (convlens's names and /255 units) on ``inputs``, the network fed
    channels-last pixels as convlens feeds it (:class:`FedChannelsLast`)."""
    oracle = FedChannelsLast(oracle)
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
@pytest.mark.parametrize(
    "model_id", ["efficientnet_lite0.onnx", "efficientnet_lite0.pt", "efficientnet_lite0.pt2"]
)
def test_each_attack_matches_torchattacks_on_the_default_model(
    convlens_run, models_dir, default_oracle, sample_image, params, model_id
):
    model = ModelStore([models_dir]).get(model_id)
    check_against_torchattacks(convlens_run, model, default_oracle, sample_image, TOLERANCE, **params)


RESNET_SIZE = 64


@pytest.fixture(scope="module")
def resnet18_store(resnet18_with_statistics, export_three_formats, tmp_path_factory) -> ModelStore:
    """The random ResNet-18 at 64 px (ImageNet normalisation, unlabelled) as ``.onnx``, ``.pt`` and ``.pt2``."""
    directory = tmp_path_factory.mktemp("attack-models")
    export_three_formats(resnet18_with_statistics, directory, RESNET_SIZE)
    card = {"title": "ResNet-18 (random)", "input_size": [RESNET_SIZE, RESNET_SIZE]}
    (directory / "resnet18.json").write_text(json.dumps(card))
    return ModelStore([directory])


RESNET_CASES = [
    (model_file, params)
    for model_file in ("eager", "resnet18.pt", "resnet18.pt2", "resnet18.onnx")
    for params in DEFAULT_CASES
]


@pytest.mark.parametrize(("model_file", "params"), RESNET_CASES)
def test_each_attack_matches_torchattacks_on_a_random_resnet18_in_each_format(
    convlens_run, resnet18_store, resnet18_with_statistics, pixel_space, sample_image, params, model_file
):
    from convlens.models.module import ModuleModel

    model = resnet18_store.get("resnet18.pt")
    network = resnet18_with_statistics
    if model_file == "eager":
        model = ModuleModel("resnet18 (eager)", resnet18_with_statistics, model.card)
    else:
        model = resnet18_store.get(model_file)
    if model_file.endswith(".onnx"):
        # torch.onnx folded the BatchNorms into the convolutions: the file computes other floats than the eager
        # module, which sign steps make whole steps apart. torchattacks gets the file's own network, as
        # onnx2torch converts it at opset 17, its newest (an independent reading of the same graph).
        import onnx
        import onnx2torch

        graph = onnx.version_converter.convert_version(onnx.load(resnet18_store.files()[model_file]), 17)
        for node in graph.graph.node:  # no shape here has a 0 for allowzero to keep, which onnx2torch refuses
            kept = [attribute for attribute in node.attribute if attribute.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
        network = onnx2torch.convert(graph).eval()
    oracle = pixel_space(network, model.card.mean, model.card.std)
    check_against_torchattacks(convlens_run, model, oracle, sample_image, TOLERANCE, **params)


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
    assert result.data["flipped_to"]["class"] == int(probabilities[flips[0]].argmax())
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
    assert {frame.label for frame in frames} == {"original | perturbation | adversarial"}

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
        ({"attack": "cw", "c": 0.0}, "params.c"),
        ({"attack": "cw", "c": -1.0}, "params.c"),
        ({"attack": "cw", "lr": 0.0}, "params.lr"),
        ({"attack": "deepfool", "target": 3}, "params.target"),
    ],
)
def test_bad_parameters_are_refused_by_name(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as caught:
        convlens_run("adversarial_attack", tiny_model, sample_image, **params)
    assert caught.value.field == field


def test_the_method_is_registered():
    assert find_method("adversarial_attack") is ADVERSARIAL_ATTACK


# -- Carlini-Wagner L2 and DeepFool ---------------------------------------------------------------------------


class Counted(nn.Module):
    """``net`` counting its forward passes, its logits shifted by ``shift`` (argmax, softmax and every margin
    unchanged): torchattacks' CW takes the largest other logit as ``max((1 - one_hot) * logits)`` and the class's as
    ``max(one_hot * logits)``, which are 0 instead when those logits are negative; shifted, none is."""

    def __init__(self, net: nn.Module, shift: float) -> None:
        super().__init__()
        self.net, self.shift, self.calls = net, shift, 0
        # In eval mode: torchattacks puts a module back in the mode it was given, and a new one is in training
        # mode, which would leave the shared oracle's BatchNorms computing batch statistics for later tests.
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(images) + self.shift


def inside(image: np.ndarray, model) -> torch.Tensor:
    """The picture at the model's size, kept off 0 and 1 by one grey level: torchattacks' CW starts from an
    infinite ``w`` at 0 and 1 (so those pixels never move), convlens from ``atanh(1 - 1e-6)`` as the paper's code."""
    return to_tensor(image, model.input_size).clamp(1 / 255, 254 / 255)


def states_of(model, inputs: torch.Tensor, **params) -> list:
    defaults = {"norm": "l2", "epsilon": 0.0, "step": 0.0, "targeted": False}
    return list(attack_steps(model, inputs, **{**defaults, **params}))


@pytest.mark.parametrize(
    ("c", "lr", "steps", "target"), [(100.0, 0.01, 50, None), (30.0, 0.01, 100, None), (100.0, 0.01, 50, 4)]
)
def test_cw_equals_torchattacks_cw_over_the_steps_torchattacks_runs(
    tiny_model, tiny_oracle, sample_image, c, lr, steps, target
):
    inputs = inside(sample_image, tiny_model)
    oracle = Counted(tiny_oracle, shift=100.0)
    with torch.no_grad():
        true_class = int(oracle(inputs).argmax())
    method = torchattacks.CW(oracle, c=c, kappa=0, steps=steps, lr=lr)
    if target is not None:
        method.set_mode_targeted_by_label(quiet=True)
    oracle.calls = 0
    expected = method(inputs, torch.tensor([true_class if target is None else target]))
    # torchattacks stops when its cost rose since its last check; convlens runs every step it is asked for, so it
    # is asked for as many as torchattacks ran (Adam's path does not depend on the step count).
    ran = oracle.calls
    assert ran >= 15
    states = states_of(
        tiny_model,
        inputs,
        attack="cw",
        steps=ran,
        c=c,
        lr=lr,
        label=target if target is not None else true_class,
        targeted=target is not None,
    )
    assert (expected - inputs).abs().max() > 0, (
        "torchattacks found no adversarial: the test would prove nothing"
    )
    assert [index for index, _, _ in states] == list(range(ran + 1))
    best = states[-1][1]
    assert float((best - expected).abs().max()) <= TOLERANCE
    assert best.min() >= 0 and best.max() <= 1
    with torch.no_grad():
        assert torch.allclose(states[-1][2], tiny_oracle(best), atol=1e-6)
    after = int(tiny_oracle(best).argmax())
    assert after != true_class if target is None else after == target


def test_cw_on_the_default_model_equals_torchattacks_cw(models_dir, default_oracle, sample_image):
    model = ModelStore([models_dir]).get("efficientnet_lite0.pt")
    inputs = inside(sample_image, model)
    oracle = Counted(default_oracle, shift=0.0)  # ImageNet logits of the classes that matter are positive
    with torch.no_grad():
        true_class = int(oracle(inputs).argmax())
    oracle.calls = 0
    expected = torchattacks.CW(oracle, c=1, kappa=0, steps=4, lr=0.01)(inputs, torch.tensor([true_class]))
    assert (expected - inputs).abs().max() > 0
    states = states_of(model, inputs, attack="cw", steps=oracle.calls, c=1.0, lr=0.01, label=true_class)
    assert float((states[-1][1] - expected).abs().max()) <= TOLERANCE


def test_cw_finds_a_smaller_l2_than_the_smallest_pgd_l2_ball_that_fools(
    convlens_run, tiny_model, tiny_oracle, sample_image
):
    _, cw = attack(convlens_run, tiny_model, sample_image, attack="cw", c=30.0, lr=0.01, steps=100)
    assert cw.data["flipped_at"] is not None and cw.data["norm"] == "l2"
    adversarial = adversarial_tensor(cw)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    inputs = to_tensor(sample_image, tiny_model.input_size)
    with torch.no_grad():
        true_class = int(tiny_oracle(inputs).argmax())
        assert int(tiny_oracle(adversarial).argmax()) != true_class
    cw_l2 = float((adversarial.double() - inputs.double()).norm()) * 255
    # The smallest ball of a doubling series in which torchattacks' PGD-L2 (20 steps of a fifth of it) fools.
    fooled = []
    for epsilon in (25.0, 50.0, 100.0, 200.0, 400.0, 800.0):
        pgd = oracle_attack(
            tiny_oracle, inputs, SEED, attack="pgd", norm="l2", epsilon=epsilon, step=epsilon / 5, steps=20
        )
        with torch.no_grad():
            if int(tiny_oracle(pgd).argmax()) != true_class:
                fooled.append(float((pgd.double() - inputs.double()).norm()) * 255)
    assert fooled, "PGD-L2 fooled the model in none of the balls"
    assert cw_l2 < fooled[0]
    assert cw.data["l2"] == pytest.approx(cw_l2, rel=1e-5)


def test_deepfool_equals_torchattacks_deepfool_over_all_classes(tiny_model, tiny_oracle, sample_image):
    inputs = to_tensor(sample_image, tiny_model.input_size)
    with torch.no_grad():
        true_class = int(tiny_oracle(inputs).argmax())
    expected = torchattacks.DeepFool(tiny_oracle, steps=10, overshoot=0.02)(
        inputs, torch.tensor([true_class])
    )
    states = states_of(
        tiny_model, inputs, attack="deepfool", steps=10, overshoot=0.02, candidates=10, label=true_class
    )
    assert (expected - inputs).abs().max() > 0
    assert float((states[-1][1] - expected).abs().max()) <= TOLERANCE
    assert int(states[-1][2].argmax()) != true_class
    assert int(states[-2][2].argmax()) == true_class, "it stops at the first state whose top class changed"


def test_deepfool_on_the_default_model_equals_torchattacks_on_its_top_ten_classes(
    models_dir, default_oracle, sample_image
):
    model = ModelStore([models_dir]).get("efficientnet_lite0.pt2")
    inputs = to_tensor(sample_image, model.input_size)
    with torch.no_grad():
        logits = default_oracle(inputs)[0]
    top = logits.topk(10).indices

    class TopTen(nn.Module):
        """The eager model's logits of the picture's ten most probable classes (its top class first)."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return default_oracle(images)[:, top]

    expected = torchattacks.DeepFool(TopTen(), steps=3, overshoot=0.02)(inputs, torch.tensor([0]))
    states = states_of(
        model, inputs, attack="deepfool", steps=3, overshoot=0.02, candidates=10, label=int(top[0])
    )
    assert (expected - inputs).abs().max() > 0
    difference = states[-1][1] - expected
    assert float(difference.abs().max()) <= TOLERANCE


def test_deepfool_on_an_affine_classifier_lands_on_the_nearest_boundary_in_one_step():
    from convlens.models.base import ModelCard
    from convlens.models.module import ModuleModel

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(5, 3 * 8 * 8, generator=generator), torch.randn(5, generator=generator)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with torch.no_grad():
        net[1].weight.copy_(weight), net[1].bias.copy_(bias)
    card = ModelCard(
        title="affine", input_size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), labels=list("abcde")
    )
    model = ModuleModel("affine", net.eval(), card)
    image = 0.5 + 0.01 * torch.randn(1, 3, 8, 8, generator=generator, dtype=torch.float64).float()

    # The closed form, in float64 numpy: the nearest of the hyperplanes f_l = f_y.
    x, w, b = image.double().flatten().numpy(), weight.double().numpy(), bias.double().numpy()
    f = w @ x + b
    y = int(f.argmax())
    others = [k for k in range(5) if k != y]
    distances = [abs(f[k] - f[y]) / np.linalg.norm(w[k] - w[y]) for k in others]
    nearest = others[int(np.argmin(distances))]
    minimal = w[nearest] - w[y]
    minimal = abs(f[nearest] - f[y]) * minimal / np.dot(minimal, minimal)

    states = states_of(model, image, attack="deepfool", steps=5, overshoot=0.0, candidates=10, label=y)
    step_one = (states[1][1] - image).double().flatten().numpy()
    np.testing.assert_allclose(step_one, minimal, rtol=1e-4, atol=1e-7)
    assert np.linalg.norm(step_one) == pytest.approx(min(distances), rel=1e-5)
    moved = w @ (x + step_one) + b
    assert moved[nearest] == pytest.approx(moved[y], abs=1e-5), "on the boundary between the two classes"

    overshot = states_of(model, image, attack="deepfool", steps=5, overshoot=0.02, candidates=10, label=y)
    assert len(overshot) == 2, "past the boundary after one step, so it stops"
    assert int(overshot[-1][2].argmax()) == nearest
    assert float((overshot[-1][1] - image).double().norm()) == pytest.approx(1.02 * min(distances), rel=1e-5)


# -- what the page is built on --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"attack": "bim", "epsilon": 3.0, "step": 0.5, "steps": 4},
        {"attack": "pgd", "norm": "l2", "epsilon": 100.0, "step": 30.0, "steps": 4},
        {"attack": "cw", "c": 30.0, "steps": 4},
        {"attack": "deepfool", "steps": 4},
    ],
)
@pytest.mark.parametrize("model_name", ["tiny", "default"])
def test_each_step_is_one_frame_of_three_equal_panels_with_both_top5s_and_one_scale(
    convlens_run, tiny_model, default_model, sample_image, params, model_name
):
    model = tiny_model if model_name == "tiny" else default_model
    if model_name == "default" and params["attack"] != "bim":
        params = {**params, "steps": 1}
    events, result = attack(convlens_run, model, sample_image, **params)
    frames, tops, metrics = of_type(events, Frame), of_type(events, Predictions), of_type(events, Metrics)
    assert len(frames) == len(tops) == len(metrics) and [t.step for t in tops] == [f.step for f in frames]
    assert {frame.label for frame in frames} == {"original | perturbation | adversarial"}
    scales = {m.values["perturbation scale (×)"] for m in metrics}
    assert len(scales) == 1
    scale = scales.pop()
    assert scale == result.data["perturbation_scale"] and scale > 0
    if params.get("norm", "linf") == "linf" and params["attack"] == "bim":
        assert scale == pytest.approx(0.5 * 255 / params["epsilon"])

    height, width = model.input_size
    panel = min(width, 512 // 3)
    inputs = to_tensor(sample_image, model.input_size)
    adversarial = adversarial_tensor(result)
    expected_panels = [inputs, (0.5 + scale * (adversarial - inputs)).clamp(0, 1), adversarial]
    if panel < width:
        size = (round(height * panel / width), panel)
        expected_panels = [
            torch.nn.functional.interpolate(p, size=size, mode="area") for p in expected_panels
        ]
    pixels = frames[-1].pixels().astype(float)
    assert pixels.shape[1] == 3 * panel
    for index, expected in enumerate(expected_panels):
        shown = pixels[:, index * panel : (index + 1) * panel]
        assert np.abs(shown - expected[0].permute(1, 2, 0).numpy() * 255).max() <= 1.01, index

    with torch.no_grad():
        probabilities = [model.forward(x).logits[0].double().softmax(0) for x in (inputs, adversarial)]
    for name, p in zip(("original", "adversarial"), probabilities, strict=True):
        top = p.topk(5)
        shown = tops[-1].tops[name]
        assert [entry["class"] for entry in shown] == top.indices.tolist()
        assert [entry["label"] for entry in shown] == [model.label(i) for i in top.indices.tolist()]
        np.testing.assert_allclose([e["probability"] for e in shown], top.values.numpy(), atol=1e-5)


def test_a_forward_that_goes_non_finite_stops_the_run_naming_the_step(sample_image):
    from convlens.runner import iterate, prepare_run
    from convlens.testing import make_tiny_model

    model = make_tiny_model()
    honest, calls = model.forward, []

    def forward_going_to_nan(images, layers=(), **kw):
        calls.append(1)
        result = honest(images, layers, **kw)
        if len(calls) > 3:  # the first top-5, then steps 0 and 1 are finite
            result.logits = result.logits * float("nan")
        return result

    model.forward = forward_going_to_nan
    ctx = prepare_run(ADVERSARIAL_ATTACK, model, sample_image, {"attack": "bim", "steps": 5}, seed=0)
    events = []
    with pytest.raises(BadInput, match="non-finite logits at step 2") as error:
        events.extend(iterate(ADVERSARIAL_ATTACK, ctx))
    assert (error.value.field, error.value.status) == ("model", 422)
    assert [frame.step for frame in of_type(events, Frame)] == [0, 1]
    assert not of_type(events, Result)


def test_attack_steps_on_a_batch_equals_torchattacks_on_the_batch(tiny_model, tiny_oracle, sample_image):
    from skimage import data

    pictures = [sample_image, data.astronaut(), data.coffee()]
    inputs = torch.cat([to_tensor(picture, tiny_model.input_size) for picture in pictures])
    labels = torch.tensor([1, 4, 7])
    generator = torch.Generator().manual_seed(SEED)
    states = list(
        attack_steps(
            tiny_model,
            inputs,
            attack="pgd",
            norm="linf",
            epsilon=8 / 255,
            step=2 / 255,
            steps=10,
            label=labels,
            targeted=False,
            generator=generator,
        )
    )
    torch.manual_seed(SEED)
    expected = torchattacks.PGD(
        FedChannelsLast(tiny_oracle), eps=8 / 255, alpha=2 / 255, steps=10, random_start=True
    )(inputs, labels)
    assert float((states[-1][1] - expected).abs().max()) <= TOLERANCE
    assert states[-1][2].shape == (3, 10)

    with torch.no_grad():
        labels = tiny_oracle(inputs).argmax(
            dim=1
        )  # DeepFool moves only pictures whose top class is the label
    fooled = torchattacks.DeepFool(tiny_oracle, steps=10, overshoot=0.02)(inputs, labels)
    states = states_of(
        tiny_model, inputs, attack="deepfool", steps=10, overshoot=0.02, candidates=10, label=labels
    )
    assert float((states[-1][1] - fooled).abs().max()) <= TOLERANCE


class Recording(nn.Module):
    """A convolution and a linear layer that records the memory order of each batch it is given; with ``view``
    they are joined by ``.view``, which a channels-last activation cannot take (a ``RuntimeError``)."""

    def __init__(self, view: bool) -> None:
        super().__init__()
        generator = torch.random.get_rng_state()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4 * 7 * 7, 5)
        torch.random.set_rng_state(generator)
        self.view, self.orders = view, []
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.orders.append("channels_last" if not images.is_contiguous() else "contiguous")
        hidden = torch.relu(self.conv(images))
        return self.fc(hidden.view(len(hidden), -1) if self.view else hidden.flatten(1))


@pytest.mark.parametrize("view", [False, True])
def test_the_network_is_fed_channels_last_pixels_unless_it_cannot_take_them(sample_image, pixel_space, view):
    from convlens.models.base import ModelCard
    from convlens.models.module import ModuleModel

    net = Recording(view)
    card = ModelCard(title="recording", input_size=(16, 16), labels=list("abcde"))
    model = ModuleModel("recording", net, card)
    inputs = to_tensor(sample_image, model.input_size)
    oracle = pixel_space(net, card.mean, card.std)
    with torch.no_grad():
        label = int(oracle(inputs).argmax())
    net.orders.clear()
    states = list(
        attack_steps(
            model,
            inputs,
            attack="pgd",
            norm="linf",
            epsilon=8 / 255,
            step=2 / 255,
            steps=4,
            label=label,
            targeted=False,
            generator=torch.Generator().manual_seed(SEED),
        )
    )
    orders = net.orders
    if view:  # one refused try, then every forward in contiguous order
        assert orders == ["channels_last"] + ["contiguous"] * 5
    else:
        assert orders == ["channels_last"] * 5
        oracle = FedChannelsLast(oracle)
    torch.manual_seed(SEED)
    expected = torchattacks.PGD(oracle, eps=8 / 255, alpha=2 / 255, steps=4)(inputs, torch.tensor([label]))
    assert (expected - inputs).abs().max() > 0
    assert float((states[-1][1] - expected).abs().max()) <= TOLERANCE


@pytest.mark.parametrize(
    ("model", "params", "status", "field"),
    [
        ("efficientnet_lite0.onnx", {"epsilon": -1}, 400, "params.epsilon"),
        ("efficientnet_lite0.onnx", {"epsilon": 255.5}, 400, "params.epsilon"),
        ("efficientnet_lite0.onnx", {"target": 1000}, 400, "params.target"),
        ("efficientnet_lite0.onnx", {"target": -1}, 400, "params.target"),
        ("efficientnet_lite0.onnx", {"steps": 0}, 400, "params.steps"),
        ("efficientnet_lite0.onnx", {"attack": "fgsm", "norm": "l2"}, 400, "params.norm"),
        ("efficientnet_lite0.onnx", {"attack": "cw", "c": 0}, 400, "params.c"),
        ("efficientnet_lite0.onnx", {"attack": "cw", "c": -0.5}, 400, "params.c"),
        ("efficientnet_lite0.onnx", {"attack": "deepfool", "target": 3}, 400, "params.target"),
        ("efficientnet_lite0.onnx", {"attack": "sparse"}, 400, "params.attack"),
        (FORWARD_ONLY, {}, 422, "method"),
    ],
)
def test_bad_attack_requests_through_the_api_are_4xx_naming_the_field(
    client, forward_only_model, model, params, status, field
):
    body = {"method": "adversarial_attack", "model": model, "image": "chelsea", "params": params}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["field"] == field
    assert answer.get_json()["error"]
    if status == 422:
        assert "gradients" in answer.get_json()["error"]
