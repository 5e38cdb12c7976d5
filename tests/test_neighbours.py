"""nearest_neighbours: the data-set images nearest a query in code space and in pixel space, against a brute-force
search over codes from the network's own nn.Module."""

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

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def crops_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten 64-px crops of each of four photographs, a folder per photograph."""
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(3)
    for name in PHOTOS:
        photo = getattr(skdata, name)()
        (root / name).mkdir()
        for index in range(10):
            top = rng.integers(0, photo.shape[0] - 96)
            left = rng.integers(0, photo.shape[1] - 96)
            Image.fromarray(photo[top : top + 96, left : left + 96]).save(root / name / f"{index}.png")
    return root


def flatten_codes(module: torch.nn.Module, pictures: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The tiny net's ``flatten`` output (what its classifier reads) for each picture, by its own layers."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    batch = torch.from_numpy(np.stack([resize(p, size).transpose(2, 0, 1) for p in pictures]))
    with torch.no_grad():
        return module[:-1]((batch - mean) / std).numpy()


def brute_force(codes: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    codes, query = codes.astype(np.float64), query.astype(np.float64)
    if metric == "l2":
        return np.array([np.sqrt(((row - query) ** 2).sum()) for row in codes])
    return np.array([1 - row @ query / (np.linalg.norm(row) * np.linalg.norm(query)) for row in codes])


def run_neighbours(model, image, dataset, store_dir: Path, **params) -> list:
    method = find_method("nearest_neighbours")
    ctx = prepare_run(
        method,
        model,
        image,
        {"dataset": "crops", **params},
        datasets=lambda _id: dataset,
        features=FeatureStore(store_dir),
    )
    return list(iterate(method, ctx))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_code_neighbours_of_the_picture_are_the_brute_force_nearest(
    metric, tiny_model, sample_image, crops_folder, tmp_path
):
    dataset = FolderDataset(crops_folder, "crops")
    events = run_neighbours(tiny_model, sample_image, dataset, tmp_path, k=6, metric=metric)
    result = events[-1]
    assert isinstance(result, Result)
    pictures = [dataset.load(i) for i in range(len(dataset))]
    codes = flatten_codes(tiny_model.module, pictures, (64, 64))
    query = flatten_codes(tiny_model.module, [sample_image], (64, 64))[0]
    expected = brute_force(codes, query, metric)
    found = result.data["code_neighbours"]
    assert [n["index"] for n in found] == list(np.argsort(expected, kind="stable")[:6])
    assert np.allclose([n["distance"] for n in found], np.sort(expected)[:6], rtol=1e-4, atol=1e-5)
    items = dataset.items()
    assert [n["key"] for n in found] == [items[n["index"]].key for n in found]


def test_a_query_from_the_data_set_is_not_its_own_neighbour_and_pixels_rank_by_pixels(
    tiny_model, sample_image, crops_folder, tmp_path
):
    dataset = FolderDataset(crops_folder, "crops")
    events = run_neighbours(tiny_model, sample_image, dataset, tmp_path, k=5, query_index=7, pixel_size=16)
    result = events[-1]
    pictures = [dataset.load(i) for i in range(len(dataset))]
    codes = flatten_codes(tiny_model.module, pictures, (64, 64))
    expected = brute_force(codes, codes[7], "l2")
    expected[7] = np.inf
    assert [n["index"] for n in result.data["code_neighbours"]] == list(
        np.argsort(expected, kind="stable")[:5]
    )
    vectors = np.stack([resize(p, (16, 16)).reshape(-1) for p in pictures])
    by_pixels = brute_force(vectors, vectors[7], "l2")
    by_pixels[7] = np.inf
    assert [n["index"] for n in result.data["pixel_neighbours"]] == list(
        np.argsort(by_pixels, kind="stable")[:5]
    )
    assert 7 not in result.arrays["code_indices"]
    # The mosaic: two rows of the query and five neighbours, drawn as frames as the run goes.
    frames = of_type(events, Frame)
    assert frames[-1].pixels().shape[0] > frames[0].pixels().shape[0]


def test_a_second_view_reuses_the_stored_codes(tiny_model, sample_image, crops_folder, tmp_path):
    dataset = FolderDataset(crops_folder, "crops")
    calls = []
    module_forward = tiny_model.module.forward
    tiny_model.module.forward = lambda x: (calls.append(x.shape[0]), module_forward(x))[1]
    first = run_neighbours(tiny_model, sample_image, dataset, tmp_path, k=3)
    computed = sum(calls)
    calls.clear()
    second = run_neighbours(tiny_model, sample_image, dataset, tmp_path, k=3)
    assert computed >= len(dataset) and sum(calls) <= 1  # the second run forwards the query alone
    assert first[-1].data["code_neighbours"] == second[-1].data["code_neighbours"]


def test_a_query_index_past_the_data_set_names_the_parameter(
    tiny_model, sample_image, crops_folder, tmp_path
):
    dataset = FolderDataset(crops_folder, "crops")
    with pytest.raises(BadInput) as error:
        run_neighbours(tiny_model, sample_image, dataset, tmp_path, query_index=len(dataset))
    assert error.value.field == "params.query_index"
