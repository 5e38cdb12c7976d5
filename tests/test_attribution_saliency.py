"""The saliency map equals Captum's ``Saliency`` (|gradient of the logit|, max over channels)."""

from __future__ import annotations

import captum.attr as captum_attr
import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.images import to_image, to_tensor
from convlens.models.base import ModelCard
from convlens.models.module import ModuleModel


class PixelSpace(nn.Module):
    """``net`` taking [0, 1] pixels: normalises like :meth:`Model.normalise`, so Captum sees what convlens sees."""

    def __init__(self, net: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(card.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(card.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def captum_saliency(model: ModuleModel, image: np.ndarray, target: int) -> np.ndarray:
    wrapped = PixelSpace(model.module, model.card).eval()
    inputs = to_tensor(image, model.input_size).requires_grad_(True)
    attribution = captum_attr.Saliency(wrapped).attribute(inputs, target=target, abs=True)
    return attribution.amax(dim=1)[0].detach().numpy()


@pytest.fixture(scope="module")
def resnet18() -> ModuleModel:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    card = ModelCard(title="resnet18 (random)", labels=[f"c{i}" for i in range(1000)])
    return ModuleModel("resnet18", resnet18(weights=None), card)


def check_against_captum(convlens_run, model, image, target):
    events = convlens_run("saliency", model, image, target=target)
    result = events[-1]
    assert isinstance(result, Result)
    logits = model.logits(to_tensor(image, model.input_size))[0]
    expected_target = target if target is not None else int(np.argmax(logits))
    assert result.data["target"] == expected_target
    oracle = captum_saliency(model, image, expected_target)
    assert oracle.max() > 0
    assert result.images["map"].shape == model.input_size
    np.testing.assert_allclose(result.data["max_gradient"], oracle.max(), rtol=1e-5)
    # Shown scaled by its 99th percentile, the brightest 1 % saturated.
    scale = np.percentile(oracle, 99)
    np.testing.assert_allclose(result.data["scale"], scale, rtol=1e-5)
    np.testing.assert_allclose(result.images["map"], np.minimum(oracle / scale, 1.0), atol=1e-5)
    assert (result.images["map"] == 1.0).mean() == pytest.approx(0.01, abs=0.002)
    np.testing.assert_allclose(result.data["score"], logits[expected_target], rtol=1e-5, atol=1e-6)
    return result


def test_saliency_matches_captum_on_resnet18_for_the_top_class(convlens_run, resnet18, sample_image):
    check_against_captum(convlens_run, resnet18, sample_image, None)


def test_saliency_matches_captum_on_resnet18_for_a_chosen_class(convlens_run, resnet18, sample_image):
    result = check_against_captum(convlens_run, resnet18, sample_image, 281)
    assert result.data["label"] == "c281"


def test_saliency_matches_captum_on_the_tiny_model_for_every_class(convlens_run, tiny_model, sample_image):
    maps = [check_against_captum(convlens_run, tiny_model, sample_image, t).images["map"] for t in range(10)]
    assert not np.allclose(maps[0], maps[1])  # the class really changes the map


def test_overlay_opacity_blends_the_heatmap_over_the_input(convlens_run, tiny_model, sample_image):
    image_only = convlens_run("saliency", tiny_model, sample_image, overlay=0.0)
    (frame,) = [e for e in image_only if isinstance(e, Frame)]
    np.testing.assert_allclose(
        frame.image, to_image(to_tensor(sample_image, tiny_model.input_size)), atol=1e-6
    )
    heat_only = convlens_run("saliency", tiny_model, sample_image, overlay=1.0)[-1]
    # Coloured by matplotlib's inferno (the README's promise), 256 colours of 8 bits.
    inferno = matplotlib.colormaps["inferno"](np.rint(heat_only.images["map"] * 255).astype(int))[..., :3]
    np.testing.assert_allclose(heat_only.images["saliency"], inferno, atol=0.5 / 255 + 1e-6)


def test_saliency_refuses_a_class_the_model_does_not_have(convlens_run, tiny_model, sample_image):
    with pytest.raises(BadInput) as error:
        convlens_run("saliency", tiny_model, sample_image, target=10)
    assert error.value.field == "params.target"
