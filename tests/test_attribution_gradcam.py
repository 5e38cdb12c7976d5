"""Grad-CAM equals Captum's ``LayerGradCam`` (upsampled by ``LayerAttribution.interpolate``, bilinear) on a
random ResNet-18 saved as ONNX, torch.export and TorchScript, and on the default EfficientNet-Lite0; its
default layer is the last spatial one; unknown and non-spatial layers are refused.

Tolerances, as the largest difference over the oracle's largest magnitude: 1e-5 for torch.export and
TorchScript, 1e-4 for ONNX (its exporter folds BatchNorm into the convolutions, which changes the float32
rounding). Measured: 0 (bit-identical) for .pt2 and .pt, at most 2.2e-6 for ONNX; 0 on the default model.
"""

from __future__ import annotations

import json
from pathlib import Path

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Progress, Result
from convlens.images import to_tensor
from convlens.models.store import ModelStore
from convlens_plugins.attribution.gradcam import GRADCAM

SIZE = 128
"""ResNet-18 files are exported at this input size: layer4 is 4x4, layer3 8x8."""
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
RESNET_FILES = ("resnet18.onnx", "resnet18.pt2", "resnet18.pt")
TOLERANCE = {"onnx": 1e-4, "export": 1e-5, "torchscript": 1e-5}


def captum_gradcam(
    pixel_space, net: nn.Module, model, image: np.ndarray, layer: str, target: int, relu: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Grad-CAM of the eager ``net`` at ``layer``: at the layer's resolution, and upsampled bilinearly."""
    wrapped = pixel_space(net, model.card.mean, model.card.std)
    inputs = to_tensor(image, model.input_size)
    layer_gradcam = captum_attr.LayerGradCam(wrapped, wrapped.net.get_submodule(layer))
    cam = layer_gradcam.attribute(inputs, target=target, relu_attributions=relu).detach()
    upsampled = captum_attr.LayerAttribution.interpolate(cam, model.input_size, interpolate_mode="bilinear")
    return cam[0, 0].numpy(), upsampled[0, 0].numpy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def top_class(model, image: np.ndarray) -> int:
    return int(np.argmax(model.logits(to_tensor(image, model.input_size))[0]))


def check_against_captum(convlens_run, pixel_space, net, model, image, layer, target, relu=True) -> Result:
    events = convlens_run(GRADCAM, model, image, layer=layer, target=target, relu=relu)
    assert [type(event) for event in events] == [Frame, Progress, Result]
    result = events[-1]
    expected_target = top_class(model, image) if target is None else target
    assert result.data["target"] == expected_target
    assert result.data["layer"] == layer
    cam, upsampled = captum_gradcam(pixel_space, net, model, image, layer, expected_target, relu)
    assert np.abs(cam).max() > 0
    tolerance = TOLERANCE[model.format]
    assert result.arrays["cam"].shape == cam.shape == tuple(result.data["layer_shape"][1:])
    assert relative_error(result.arrays["cam"], cam) < tolerance
    assert result.arrays["attribution"].shape == model.input_size
    assert relative_error(result.arrays["attribution"], upsampled) < tolerance
    shown = np.clip(upsampled / upsampled.max(), 0, 1)
    assert np.abs(result.images["map"] - shown).max() < 2 * tolerance
    assert result.images["map"].max() == pytest.approx(1.0)
    assert result.images["gradcam"].shape == (*model.input_size, 3)
    return result


@pytest.fixture(scope="module")
def resnet_net(resnet18_with_statistics) -> nn.Module:
    return resnet18_with_statistics


@pytest.fixture(scope="module")
def resnet_store(resnet_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The random ResNet-18 as resnet18.onnx, .pt2 and .pt; its card's default layer is one Grad-CAM ignores."""
    directory = tmp_path_factory.mktemp("gradcam-models")
    example = torch.rand(2, 3, SIZE, SIZE)
    batch = {0: torch.export.Dim("batch", min=1)}
    program = torch.export.export(resnet_net, (example,), dynamic_shapes=(batch,))
    torch.export.save(program, str(directory / "resnet18.pt2"))
    torch.onnx.export(
        resnet_net, (example,), str(directory / "resnet18.onnx"), dynamo=True, dynamic_shapes=(batch,)
    )
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(resnet_net, (example,)), str(directory / "resnet18.pt"))
    card = {
        "title": "ResNet-18 (random)",
        "input_size": [SIZE, SIZE],
        "mean": list(MEAN),
        "std": list(STD),
        "labels": [f"thing {index}" for index in range(1000)],
        "default_layer": "layer2",
    }
    (directory / "resnet18.json").write_text(json.dumps(card))
    return ModelStore([directory])


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
@pytest.mark.parametrize("model_id", RESNET_FILES)
def test_gradcam_matches_captum_on_resnet18_in_every_format(
    convlens_run, pixel_space, resnet_net, resnet_store, sample_image, model_id, layer, relu
):
    result = check_against_captum(
        convlens_run, pixel_space, resnet_net, resnet_store.get(model_id), sample_image, layer, 281, relu
    )
    assert result.data["label"] == "thing 281"
    # Without the ReLU the negative evidence is kept in the arrays (and is black in the map).
    assert (result.arrays["cam"].min() < 0) is not relu


def test_gradcam_defaults_to_the_top_class_and_the_last_spatial_layer(
    convlens_run, pixel_space, resnet_net, resnet_store, sample_image
):
    model = resnet_store.get("resnet18.pt2")
    # avgpool is 512x1x1 and fc is flat: neither is a map; the card's default layer is for other methods.
    assert model.layer("avgpool").shape == (512, 1, 1)
    result = convlens_run(GRADCAM, model, sample_image)[-1]
    assert result.data["layer"] == "layer4" and result.data["layer_shape"] == [512, SIZE // 32, SIZE // 32]
    assert result.data["target"] == top_class(model, sample_image)
    check_against_captum(convlens_run, pixel_space, resnet_net, model, sample_image, "layer4", None)


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_id", ["efficientnet_lite0.onnx", "efficientnet_lite0.pt2", "efficientnet_lite0.pt"]
)
def test_gradcam_matches_captum_on_the_default_model(
    convlens_run, pixel_space, efficientnet, models_dir: Path, sample_image, model_id
):
    model = ModelStore([models_dir]).get(model_id)
    result = check_against_captum(
        convlens_run, pixel_space, efficientnet, model, sample_image, "_head_act", None
    )
    assert result.data["layer_shape"] == [1280, 7, 7]
    assert result.data["label"] == model.labels[result.data["target"]]
    # A second run of the same layer: TorchScript's optimising executor would cut its gradient from then on.
    assert convlens_run(GRADCAM, model, sample_image)[-1].data["layer"] == "_head_act"
    check_against_captum(
        convlens_run, pixel_space, efficientnet, model, sample_image, "_blocks.15", 285, relu=False
    )


@pytest.mark.parametrize("layer", ["fc", "avgpool"])
def test_a_layer_without_a_spatial_map_is_refused(convlens_run, resnet_store, sample_image, layer):
    model = resnet_store.get("resnet18.pt2")
    with pytest.raises(BadInput, match="not a spatial") as error:
        convlens_run(GRADCAM, model, sample_image, layer=layer)
    assert error.value.field == "params.layer"


def test_an_unknown_layer_is_refused(convlens_run, tiny_model, sample_image):
    with pytest.raises(BadInput, match="no layer 'layer9'") as error:
        convlens_run(GRADCAM, tiny_model, sample_image, layer="layer9")
    assert error.value.field == "params.layer"


def test_the_tiny_model_defaults_to_its_last_conv_and_refuses_fc(convlens_run, tiny_model, sample_image):
    assert convlens_run(GRADCAM, tiny_model, sample_image)[-1].data["layer"] == "relu3"
    with pytest.raises(BadInput, match="not a spatial") as error:
        convlens_run(GRADCAM, tiny_model, sample_image, layer="fc")
    assert error.value.field == "params.layer"
