"""Guided backpropagation, the deconvnet and the plain gradient of a class or hidden unit equal Captum's
``GuidedBackprop``/``Deconvolution``/``Saliency`` and their ``Neuron*`` forms, in every format, on a random
ResNet-18 (in-place ``nn.ReLU``), the default EfficientNet-Lite0 (ReLU6, ONNX ``Clip``) and a network whose
rectifiers are functional and in-place calls; guided Grad-CAM equals Captum's ``GuidedGradCam``; bad units are
refused by name.

Captum changes the backward of ``nn.ReLU`` modules only, so its models are eager twins: in-place ReLUs made
out-of-place, ReLU6 written as ``min(ReLU(x), 6)`` and functional calls written as modules. Tolerances are the
largest difference over the oracle's largest magnitude: 1e-5 for the eager module, TorchScript and
torch.export, 1e-4 for ONNX (its graph is rebuilt from ONNX operators). Measured: 0 for eager, .pt and .pt2;
at most 3e-7 for ONNX.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Log, Result
from convlens.images import to_tensor
from convlens.models.base import ModelCard
from convlens.models.module import ModuleModel
from convlens.models.store import ModelStore
from convlens_plugins.attribution.backprop_rules import DECONVNET, GUIDED_BACKPROP, UNIT_GRADIENT
from convlens_plugins.attribution.guided_gradcam import GUIDED_GRADCAM

SIZE = 64
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
LABELS = [f"thing {index}" for index in range(1000)]
FORMATS = ("eager", "resnet18.pt", "resnet18.pt2", "resnet18.onnx")
TOLERANCE = {"module": 1e-5, "torchscript": 1e-5, "export": 1e-5, "onnx": 1e-4}
ORACLES = {
    "guided_backprop": (captum_attr.GuidedBackprop, captum_attr.NeuronGuidedBackprop),
    "deconvnet": (captum_attr.Deconvolution, captum_attr.NeuronDeconvolution),
    "unit_gradient": (captum_attr.Saliency, captum_attr.NeuronGradient),
}
METHODS = {method.name: method for method in (GUIDED_BACKPROP, DECONVNET, UNIT_GRADIENT)}


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.abs(expected).max() > 0, "the oracle is all zeros: the comparison would prove nothing"
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


class CappedReLU(nn.Module):
    """``min(ReLU(x), upper)``: ReLU6 as Captum can hook it (its rules apply to ``nn.ReLU`` modules only)."""

    def __init__(self, upper: float = 6.0) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.upper = upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.relu(x), max=self.upper)


def captum_twin(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with out-of-place ``nn.ReLU`` and every ``nn.ReLU6`` as :class:`CappedReLU`."""
    twin = copy.deepcopy(net)
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.ReLU):
            module.inplace = False
        elif isinstance(module, nn.ReLU6):
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, CappedReLU())
    return twin


def captum_map(
    pixel_space, twin: nn.Module, model, image: torch.Tensor, method: str, unit: dict
) -> np.ndarray:
    """Captum's attribution of ``unit`` (a class ``target``, or a ``layer`` with ``channel`` and maybe
    ``position``) for ``method``'s rule, on the eager ``twin``."""
    wrapped = pixel_space(twin, model.card.mean, model.card.std)
    inputs = image.clone().requires_grad_(True)
    whole, neuron = ORACLES[method]
    if "layer" not in unit:
        extra = {"abs": False} if method == "unit_gradient" else {}
        return whole(wrapped).attribute(inputs, target=unit["target"], **extra)[0].detach().numpy()
    channel, position = unit["channel"], unit.get("position")
    if position is None:
        selector = lambda out: out[:, channel].sum(dim=(1, 2))  # noqa: E731 - Captum's neuron_selector
    else:
        selector = (channel, *position)
    attribution = neuron(wrapped, wrapped.net.get_submodule(unit["layer"]))
    return attribution.attribute(inputs, neuron_selector=selector)[0].detach().numpy()


def run(convlens_run, method, model, image, **params) -> Result:
    events = convlens_run(method, model, image, **params)
    assert not any(isinstance(event, Log) and event.level == "warning" for event in events)
    result = events[-1]
    assert isinstance(result, Result)
    return result


@pytest.fixture(scope="module")
def resnet_models(resnet18_with_statistics, tmp_path_factory, export_three_formats) -> dict:
    """The random ResNet-18 (in-place ReLUs) eager and as .pt, .pt2 and .onnx."""
    directory = tmp_path_factory.mktemp("backprop-rule-models")
    export_three_formats(resnet18_with_statistics, directory, SIZE)
    card = {"title": "ResNet-18", "input_size": [SIZE, SIZE], "mean": list(MEAN), "std": list(STD)}
    (directory / "resnet18.json").write_text(json.dumps({**card, "labels": LABELS}))
    store = ModelStore([directory])
    eager_card = ModelCard(title="eager", input_size=(SIZE, SIZE), mean=MEAN, std=STD, labels=LABELS)
    models = {name: store.get(name) for name in FORMATS[1:]}
    models["eager"] = ModuleModel("eager", resnet18_with_statistics, eager_card)
    return models


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_name", FORMATS)
def test_a_class_score_matches_captum_in_every_format(
    convlens_run, pixel_space, resnet18_with_statistics, resnet_models, sample_image, method, model_name
):
    model = resnet_models[model_name]
    result = run(convlens_run, METHODS[method], model, sample_image, target=281)
    expected = captum_map(
        pixel_space,
        captum_twin(resnet18_with_statistics),
        model,
        to_tensor(sample_image, (SIZE, SIZE)),
        method,
        {"target": 281},
    )
    assert relative_error(result.arrays["attributions"], expected) < TOLERANCE[model.format]
    assert result.data["target"] == 281 and result.data["label"] == "thing 281"
    # ResNet-18 calls its ReLUs 17 times; the rules must have reached every one, whatever the format.
    if method != "unit_gradient":
        assert result.data["rectifiers"] == 17
    assert result.arrays["attribution"].shape == (SIZE, SIZE)
    assert result.images["reconstruction"].shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_name", FORMATS)
def test_a_hidden_channel_and_its_strongest_neuron_match_captum(
    convlens_run, pixel_space, resnet18_with_statistics, resnet_models, sample_image, method, model_name
):
    model = resnet_models[model_name]
    image = to_tensor(sample_image, (SIZE, SIZE))
    twin = captum_twin(resnet18_with_statistics)
    whole = run(convlens_run, METHODS[method], model, sample_image, layer="layer2.0", channel=-1)
    unit = {"layer": "layer2.0", "channel": whole.data["channel"]}
    expected = captum_map(pixel_space, twin, model, image, method, unit)
    assert relative_error(whole.arrays["attributions"], expected) < TOLERANCE[model.format]
    assert whole.data["position"] is None and whole.data["target"] is None

    strongest = run(convlens_run, METHODS[method], model, sample_image, layer="layer3.1", unit="strongest")
    captured = []
    handle = twin.layer3[1].register_forward_hook(lambda _m, _i, output: captured.append(output[0]))
    with torch.no_grad():
        pixel_space(twin, MEAN, STD)(image)
    handle.remove()
    activation = captured[0]
    channel = int(activation.flatten(1).amax(dim=1).argmax())
    row, col = divmod(int(activation[channel].argmax()), activation.shape[2])
    assert (strongest.data["channel"], strongest.data["position"]) == (channel, [row, col])
    unit = {"layer": "layer3.1", "channel": channel, "position": (row, col)}
    expected = captum_map(pixel_space, twin, model, image, method, unit)
    assert relative_error(strongest.arrays["attributions"], expected) < TOLERANCE[model.format]


def test_the_rules_give_different_maps(convlens_run, resnet_models, sample_image):
    """Guided backprop is the gradient masked where the signal is negative; the deconvnet ignores the forward."""
    model = resnet_models["resnet18.pt2"]
    maps = {
        name: run(convlens_run, method, model, sample_image, target=3).arrays["attributions"]
        for name, method in METHODS.items()
    }
    assert relative_error(maps["guided_backprop"], maps["unit_gradient"]) > 0.1
    assert relative_error(maps["deconvnet"], maps["guided_backprop"]) > 0.1


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0().eval()


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
@pytest.mark.parametrize(
    "model_id", ["efficientnet_lite0.onnx", "efficientnet_lite0.pt2", "efficientnet_lite0.pt"]
)
def test_the_default_model_with_relu6_matches_captum(
    convlens_run, pixel_space, efficientnet, models_dir: Path, sample_image, model_id, method
):
    model = ModelStore([models_dir]).get(model_id)
    twin = captum_twin(efficientnet)
    image = to_tensor(sample_image, model.input_size)
    result = run(convlens_run, METHODS[method], model, sample_image)
    assert result.data["target"] == 285 and result.data["rectifiers"] == 33
    expected = captum_map(pixel_space, twin, model, image, method, {"target": 285})
    assert relative_error(result.arrays["attributions"], expected) < TOLERANCE[model.format]
    unit = {"layer": "_blocks.9", "channel": 7}
    hidden = run(convlens_run, METHODS[method], model, sample_image, layer="_blocks.9", channel=7)
    expected = captum_map(pixel_space, twin, model, image, method, unit)
    assert relative_error(hidden.arrays["attributions"], expected) < TOLERANCE[model.format]


class Rectified(nn.Module):
    """Convolutions rectified by functional, in-place and clamp calls (``functional=True``), or by the modules
    Captum can hook (``functional=False``); the same function either way."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.functional = functional
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)
        if not functional:
            self.act1, self.act2, self.act3 = nn.ReLU(), CappedReLU(6.0), CappedReLU(1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional:
            x = torch.nn.functional.relu(self.conv1(x), inplace=True)
            x = self.conv2(x).clamp(0, 6)
            x = torch.nn.functional.hardtanh(self.conv3(x), 0.0, 1.5)
        else:
            x = self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("fmt", ["eager", "pt", "pt2", "onnx"])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_functional_and_in_place_rectifiers_take_the_rules(
    convlens_run, pixel_space, export_three_formats, tmp_path, sample_image, method, fmt
):
    functional, modules = Rectified(functional=True).eval(), Rectified(functional=False).eval()
    modules.load_state_dict(functional.state_dict(), strict=False)
    card = ModelCard(title="functional", input_size=(32, 32), mean=MEAN, std=STD, labels=LABELS[:10])
    if fmt == "eager":
        model = ModuleModel("functional", functional, card)
    else:
        export_three_formats(functional, tmp_path, 32, stem="functional")
        (tmp_path / "functional.json").write_text(
            json.dumps({"title": "functional", "input_size": [32, 32], "mean": MEAN, "std": STD})
        )
        model = ModelStore([tmp_path]).get(f"functional.{fmt}")
    result = run(convlens_run, METHODS[method], model, sample_image, target=4)
    assert result.data["rectifiers"] == 3
    expected = captum_map(
        pixel_space, modules, model, to_tensor(sample_image, (32, 32)), method, {"target": 4}
    )
    assert relative_error(result.arrays["attributions"], expected) < TOLERANCE[model.format]


@pytest.mark.parametrize("model_name", ["resnet18.pt", "resnet18.onnx"])
def test_guided_gradcam_matches_captum(
    convlens_run, pixel_space, resnet18_with_statistics, resnet_models, sample_image, model_name
):
    model = resnet_models[model_name]
    result = run(convlens_run, GUIDED_GRADCAM, model, sample_image, target=281, layer="layer3")
    twin = captum_twin(resnet18_with_statistics)
    wrapped = pixel_space(twin, MEAN, STD)
    oracle = captum_attr.GuidedGradCam(wrapped, wrapped.net.layer3)
    expected = oracle.attribute(
        to_tensor(sample_image, (SIZE, SIZE)).requires_grad_(True), target=281, interpolate_mode="bilinear"
    )[0].detach()
    assert relative_error(result.arrays["attributions"], expected.numpy()) < TOLERANCE[model.format]
    assert result.data["layer"] == "layer3" and result.data["rectifiers"] == 17


@pytest.mark.parametrize(
    "params, field",
    [
        ({"layer": "layer2.0", "channel": 128}, "params.channel"),
        ({"layer": "layer2.0", "unit": "neuron", "row": 8, "col": 0}, "params.row"),
        ({"layer": "layer2.0", "unit": "neuron", "row": 0, "col": 99}, "params.col"),
        ({"layer": "layer9"}, "params.layer"),
        ({"target": 1000}, "params.target"),
        ({"channel": -2}, "params.channel"),
    ],
)
def test_a_unit_outside_the_layer_is_refused_by_name(
    convlens_run, resnet_models, sample_image, params, field
):
    with pytest.raises(BadInput) as error:
        convlens_run(GUIDED_BACKPROP, resnet_models["resnet18.pt2"], sample_image, **params)
    assert error.value.field == field


def test_a_model_without_rectifiers_warns_that_the_rule_changes_nothing(convlens_run, sample_image):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(10))
    net(torch.zeros(1, 3, 16, 16))
    model = ModuleModel("tanh", net.eval(), ModelCard(title="tanh", input_size=(16, 16), labels=LABELS[:10]))
    events = convlens_run(GUIDED_BACKPROP, model, sample_image, target=2)
    warnings = [event for event in events if isinstance(event, Log) and event.level == "warning"]
    assert len(warnings) == 1 and "plain gradient" in warnings[0].message
    assert events[-1].data["rectifiers"] == 0
