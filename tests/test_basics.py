"""The "Basics" topic: top-k predictions, and sample photos that load offline from scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.events import Frame, Result
from convlens.images import to_tensor
from convlens_plugins.basics.samples import sample_images


def test_predict_lists_the_top_k_classes_by_softmax_probability(convlens_run, tiny_model, sample_image):
    events = convlens_run("predict", tiny_model, sample_image, k=3)
    (frame,) = [e for e in events if isinstance(e, Frame)]
    assert frame.image.shape == (64, 64, 3)
    result = events[-1]
    assert isinstance(result, Result)
    logits = tiny_model.logits(to_tensor(sample_image, tiny_model.input_size))[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = np.argsort(-probabilities)[:3]
    assert [p["index"] for p in result.data["predictions"]] == expected.tolist()
    assert [p["label"] for p in result.data["predictions"]] == [f"class {i}" for i in expected]
    np.testing.assert_allclose(
        [p["probability"] for p in result.data["predictions"]], probabilities[expected]
    )


def test_predict_k_larger_than_the_classes_lists_them_all(convlens_run, tiny_model, sample_image):
    result = convlens_run("predict", tiny_model, sample_image, k=50)[-1]
    assert sorted(p["index"] for p in result.data["predictions"]) == list(range(10))


@pytest.mark.parametrize("sample", sample_images(), ids=lambda s: s.id)
def test_every_sample_image_loads_offline_as_rgb_uint8(sample):
    pixels = sample.load()
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert min(pixels.shape[:2]) >= 64 and pixels.std() > 0
