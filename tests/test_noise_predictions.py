"""Noise predictions: seeded noise of the stated law, top-5 and top probabilities equal to a fresh forward of the
same images through the tiny net's ``nn.Module``, and the threshold and rejected shares recomputed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Frame, Progress, Result
from convlens.images import to_tensor
from convlens.plugins import get_plugin_manager, sample_images
from convlens.runner import samples_only
from convlens.testing import make_tiny_model, of_type
from plugins.adversarial.noise import gaussian_noise

SEED = 7
DRAWS = 70
BATCH = 32
SIZE = (64, 64)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model()


@pytest.fixture(scope="module")
def events(tiny):
    from convlens.testing import run_method

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    return run_method("noise_predictions", tiny, image, seed=SEED, draws=DRAWS, batch=BATCH)


def module_probabilities(model, images: np.ndarray) -> np.ndarray:
    """Softmax of the tiny net's ``nn.Module`` on Nx3xHxW [0, 1] images, normalised by the card's mean and std."""
    mean = torch.tensor(model.card.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.module((torch.as_tensor(images, dtype=torch.float32) - mean) / std).double()
    return torch.softmax(logits, dim=1).numpy()


def expected_draws(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's two noise patterns and its ``DRAWS`` noise images, drawn with numpy from the same seed."""
    rng = np.random.default_rng(seed)
    gaussian = np.clip(rng.normal(0.5, 0.25, (1, 3, *SIZE)), 0, 1)
    uniform = rng.random((1, 3, *SIZE))
    batches = [
        np.clip(rng.normal(0.5, 0.25, (min(BATCH, DRAWS - start), 3, *SIZE)), 0, 1)
        for start in range(0, DRAWS, BATCH)
    ]
    return np.concatenate([gaussian, uniform]).astype(np.float32), np.concatenate(batches).astype(np.float32)


def test_same_seed_repeats_bit_for_bit_and_another_differs(tiny, events):
    from convlens.testing import run_method

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    again = run_method("noise_predictions", tiny, image, seed=SEED, draws=DRAWS, batch=BATCH)[-1]
    other = run_method("noise_predictions", tiny, image, seed=SEED + 1, draws=DRAWS, batch=BATCH)[-1]
    first = events[-1]
    for name in ("top_probabilities", "patterns"):
        assert np.array_equal(first.arrays[name], again.arrays[name])
    assert first.data == again.data
    assert not np.array_equal(first.arrays["top_probabilities"], other.arrays["top_probabilities"])


def test_noise_has_mean_half_and_std_quarter_before_clipping():
    noise = gaussian_noise(np.random.default_rng(0), 64, SIZE, clip=False).astype(np.float64)
    assert noise.shape == (64, 3, *SIZE)
    assert abs(noise.mean() - 0.5) < 0.002
    assert abs(noise.std() - 0.25) < 0.002
    clipped = gaussian_noise(np.random.default_rng(0), 64, SIZE)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    assert np.array_equal(clipped, np.clip(noise, 0, 1).astype(np.float32))


def test_patterns_and_draws_are_the_seeded_numpy_noise(events):
    noises, draws = expected_draws(SEED)
    patterns = events[-1].arrays["patterns"].transpose(0, 3, 1, 2)
    assert np.array_equal(patterns[:2], noises)
    assert set(np.unique(patterns[2:])) == {0.0, 1.0}
    assert events[-1].data["draws"] == len(draws)


def test_top5_of_each_pattern_equals_a_fresh_module_forward(tiny, events):
    result = events[-1]
    probabilities = module_probabilities(tiny, result.arrays["patterns"].transpose(0, 3, 1, 2))
    reported = result.data["patterns"]
    assert list(reported) == ["gaussian", "uniform", "stripes", "checkerboard"]
    for row, top in zip(probabilities, reported.values(), strict=True):
        assert [entry["index"] for entry in top] == list(np.argsort(-row)[:5])
        np.testing.assert_allclose([entry["probability"] for entry in top], np.sort(row)[::-1][:5], rtol=1e-5)


def test_top_probabilities_and_histogram_equal_a_fresh_forward_of_the_draws(tiny, events):
    _, draws = expected_draws(SEED)
    result = events[-1]
    oracle = module_probabilities(tiny, draws).max(axis=1)
    np.testing.assert_allclose(result.arrays["top_probabilities"], oracle, rtol=1e-5)
    bins = result.data["bins"]
    assert bins["counts"] == np.histogram(oracle, bins=20, range=(0, 1))[0].tolist()
    assert sum(bins["counts"]) == DRAWS


def test_threshold_is_numpys_quantile_and_rejects_99_percent_of_noise(events):
    result = events[-1]
    top = result.arrays["top_probabilities"]
    assert result.data["threshold"] == np.quantile(top, 0.99)
    assert result.data["noise_rejected"] == np.count_nonzero(top <= np.quantile(top, 0.99)) / DRAWS


def test_rejected_share_of_sample_photos_equals_an_independent_count(tiny, events):
    result = events[-1]
    load = samples_only()
    names = [sample.id for sample in sample_images(get_plugin_manager())]
    assert {"chelsea", "coffee", "astronaut"} <= set(names)
    photos = np.concatenate([to_tensor(load(name), SIZE).numpy() for name in names])
    top = module_probabilities(tiny, photos).max(axis=1)
    threshold = np.quantile(result.arrays["top_probabilities"], 0.99)
    assert [entry["id"] for entry in result.data["samples"]] == names
    assert [entry["rejected"] for entry in result.data["samples"]] == [bool(p <= threshold) for p in top]
    assert result.data["samples_rejected"] == np.count_nonzero(top <= threshold) / len(names)


def test_streams_progress_per_batch_and_the_histogram_as_it_fills(events):
    batches = -(-DRAWS // BATCH)
    assert [p.step for p in of_type(events, Progress)] == list(range(batches + 1))
    histograms = [f for f in of_type(events, Frame) if f.label == "histogram"]
    assert len(histograms) == batches + 1
    assert [f.label for f in of_type(events, Frame)][0] == "patterns"
    assert isinstance(events[-1], Result)


def test_zero_draws_is_refused_naming_the_field(tiny):
    from convlens.testing import run_method

    with pytest.raises(BadInput) as error:
        run_method("noise_predictions", tiny, np.zeros((8, 8, 3), dtype=np.uint8), draws=0)
    assert error.value.field == "params.draws"
