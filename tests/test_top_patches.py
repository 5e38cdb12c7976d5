"""top_patches: each patch's activation against a fresh forward of the network's own nn.Module, the top k against
a brute-force search, and the patch against the receptive field worked out by hand for the tiny net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from convlens.datasets import FolderDataset
from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.features import FeatureStore
from convlens.images import resize
from convlens.runner import iterate, prepare_run
from convlens.testing import find_method, of_type

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
# The tiny net's relu2 follows conv1 (3x3, stride 1, pad 1) and conv2 (3x3, stride 2, pad 1): a field of
# 3 + 2*1 = 5 pixels, units 2 pixels apart, unit 0's field starting at -1 - 1 = -2 (Araujo et al. 2019).
SIZE, JUMP, START = 5, 2, -2


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> FolderDataset:
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(5)
    for name in ("astronaut", "coffee", "chelsea"):
        photo = getattr(skdata, name)()
        (root / name).mkdir()
        for index in range(12):
            top, left = rng.integers(0, photo.shape[0] - 80), rng.integers(0, photo.shape[1] - 80)
            Image.fromarray(photo[top : top + 80, left : left + 80]).save(root / name / f"{index}.png")
    return FolderDataset(root, "patches")


def relu2(module: torch.nn.Module, pictures: list[np.ndarray]) -> np.ndarray:
    """relu2's activations (N x 16 x 32 x 32) by the module's own layers, for pictures at its 64x64 input."""
    batch = torch.from_numpy(np.stack([p.transpose(2, 0, 1) for p in pictures]))
    with torch.no_grad():
        return module[:4]((batch - MEAN) / STD).numpy()


def run_patches(model, dataset, store: Path, **params) -> list:
    method = find_method("top_patches")
    ctx = prepare_run(
        method,
        model,
        np.zeros((8, 8, 3), np.uint8),
        {"dataset": "patches", "layer": "relu2", **params},
        datasets=lambda _id: dataset,
        features=FeatureStore(store),
    )
    return list(iterate(method, ctx))


def test_each_patch_is_a_top_k_unit_whose_activation_a_fresh_forward_repeats(tiny_model, crops, tmp_path):
    events = run_patches(tiny_model, crops, tmp_path, channels="1, 6,11", k=5)
    result = events[-1]
    assert isinstance(result, Result)
    pictures = [resize(crops.load(i), (64, 64)) for i in range(len(crops))]
    activations = relu2(tiny_model.module, pictures)
    for unit in result.data["units"]:
        channel = unit["channel"]
        expected = np.sort(activations[:, channel].reshape(-1))[::-1][:5]
        found = [patch["value"] for patch in unit["patches"]]
        assert np.allclose(found, expected, rtol=1e-5, atol=1e-6), channel
        for patch in unit["patches"]:
            fresh = activations[patch["image"], channel, patch["row"], patch["col"]]
            assert patch["value"] == pytest.approx(float(fresh), rel=1e-5, abs=1e-6)
    assert [u["channel"] for u in result.data["units"]] == [1, 6, 11]


def test_each_patch_is_the_units_receptive_field_clipped_at_the_edge(tiny_model, crops, tmp_path):
    events = run_patches(tiny_model, crops, tmp_path, channels="3", k=12, tile=10)
    result = events[-1]
    assert result.data["field"]["size"] == [SIZE, SIZE] and result.data["field"]["jump"] == [JUMP, JUMP]
    mosaic = result.images["patches"]
    for column, patch in enumerate(result.data["units"][0]["patches"]):
        row, col = patch["row"], patch["col"]
        top, left = START + JUMP * row, START + JUMP * col
        box = patch["box"]
        assert (box["top"], box["left"]) == (max(top, 0), max(left, 0))
        assert (box["bottom"], box["right"]) == (min(top + SIZE, 64), min(left + SIZE, 64))
        assert patch["clipped"] == (row in (0, 31) or col in (0, 31))
        # The tile is the 5x5 field of the picture at the model's input size, each pixel drawn 2x2.
        drawn = mosaic[2 : 2 + 10, 2 + column * 12 : 12 + column * 12]
        picture = np.pad(
            resize(crops.load(patch["image"]), (64, 64)), ((2, 3), (2, 3), (0, 0)), constant_values=-1
        )
        field = picture[top + 2 : top + 2 + SIZE, left + 2 : left + 2 + SIZE]
        expected = np.repeat(np.repeat(field, 2, axis=0), 2, axis=1)
        inside = expected[..., 0] >= 0
        assert np.allclose(drawn[inside], expected[inside], atol=1e-6)
        if patch["clipped"]:  # outside the picture: the checkerboard's grey or white, not image pixels
            assert (~inside).any() and set(np.unique(drawn[~inside])) <= {np.float32(0.55), np.float32(0.8)}


def test_the_grid_fills_in_while_the_data_set_is_read(tiny_model, crops, tmp_path):
    method = find_method("top_patches")
    ctx = prepare_run(
        method,
        tiny_model,
        np.zeros((8, 8, 3), np.uint8),
        {"dataset": "patches", "layer": "relu2", "every": 1},
        datasets=lambda _id: crops,
        features=FeatureStore(tmp_path, chunk_size=8),
    )
    events = list(iterate(method, ctx))
    frames = of_type(events, Frame)
    assert [f.label for f in frames].count("so far") >= 1 and frames[-1].label == "top patches"
    assert events.index(frames[0]) < len(events) - 1


def test_guided_views_sit_beside_the_patches(tiny_model, crops, tmp_path):
    plain = run_patches(tiny_model, crops, tmp_path, channels="2", k=3)[-1].images["patches"]
    guided = run_patches(tiny_model, crops, tmp_path, channels="2", k=3, guided=True)[-1].images["patches"]
    assert guided.shape[1] > 1.9 * plain.shape[1] - 10 and guided.shape[0] == plain.shape[0]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"layer": "fc"}, "params.layer"),
        ({"layer": "flatten"}, "params.layer"),
        ({"channels": "16"}, "params.channels"),
        ({"channels": "１"}, "params.channels"),
        ({"channels": "1,,2"}, "params.channels"),
        ({"channels": "9" * 40}, "params.channels"),
    ],
)
def test_bad_layers_and_channels_name_their_parameter(tiny_model, crops, tmp_path, params, field):
    with pytest.raises(BadInput) as error:
        run_patches(tiny_model, crops, tmp_path, **params)
    assert error.value.field == field
