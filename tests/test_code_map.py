"""code_map: a data set's codes laid out in 2-D, streamed while t-SNE runs.

Oracles: openTSNE run here on codes from the tiny net's own ``nn.Module``; neighbour hits and grid costs computed
here with numpy from the result's arrays; the photograph each crop was cut from (crops made here with
scikit-image's data, not convlens's built-in data set).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from openTSNE import TSNE
from PIL import Image
from skimage import data as skdata

from convlens.datasets import FolderDataset
from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Progress, Result
from convlens.features import FeatureStore
from convlens.images import resize
from convlens.runner import iterate, prepare_run
from convlens.testing import find_method, of_type
from convlens_plugins.basics.datasets import CROP_PHOTOS


def write_crops(root: Path, photos: tuple[str, ...], per_photo: int, seed: int = 3) -> Path:
    """``per_photo`` seeded square crops of each photograph at several scales, 64 px, a folder per photograph."""
    rng = np.random.default_rng(seed)
    for name in photos:
        photo = getattr(skdata, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        (root / name).mkdir(parents=True)
        for index in range(per_photo):
            side = int(min(photo.shape[:2]) * rng.choice([1 / 2, 1 / 3, 1 / 4]))
            top = rng.integers(0, photo.shape[0] - side + 1)
            left = rng.integers(0, photo.shape[1] - side + 1)
            crop = Image.fromarray(photo[top : top + side, left : left + side, :3]).resize((64, 64))
            crop.save(root / name / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> FolderDataset:
    """40 crops of each of four photographs."""
    root = write_crops(tmp_path_factory.mktemp("crops"), ("astronaut", "coffee", "chelsea", "rocket"), 40)
    return FolderDataset(root, "crops")


def run_code_map(model, dataset, store: Path, seed: int = 0, **params):
    """The method's events, as a generator (so a test can stop it), run as the server runs it."""
    method = find_method("code_map")
    ctx = prepare_run(
        method,
        model,
        np.zeros((8, 8, 3), np.uint8),
        {"dataset": dataset.id, **params},
        seed=seed,
        datasets=lambda _id: dataset,
        features=FeatureStore(store),
    )
    return iterate(method, ctx)


def module_codes(module: torch.nn.Module, pictures: list[np.ndarray]) -> np.ndarray:
    """The tiny net's ``flatten`` output (its penultimate layer) for each picture, by its own layers."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    batch = torch.from_numpy(np.stack([resize(p, (64, 64)).transpose(2, 0, 1) for p in pictures]))
    with torch.no_grad():
        return module[:-1]((batch - mean) / std).numpy()


def nearest_sets(positions: np.ndarray, k: int) -> np.ndarray:
    """Each point's k nearest others by brute force, N x k indices."""
    squared = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(squared, np.inf)
    return np.argsort(squared, axis=1, kind="stable")[:, :k]


def hit(positions: np.ndarray, labels: list[str], k: int = 10) -> float:
    names = np.array(labels)
    return float((names[nearest_sets(positions, k)] == names[:, None]).mean())


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> FolderDataset:
    """200 pictures of uniform noise: codes without clusters, whose neighbours in a layout depend on the run."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for index in range(200):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"{index:03d}.png")
    return FolderDataset(root, "noise")


def test_the_layout_keeps_the_neighbours_of_opentsne_run_alone(tiny_model, noise, tmp_path):
    # Clustered codes keep their 10 nearest in any t-SNE run (0.97 between runs of another seed on the crops);
    # codes of noise keep them only in the same run (0.5-0.65 with another seed, perplexity or schedule).
    settings = {"perplexity": 12.0, "early_iterations": 100, "iterations": 300}
    result = list(run_code_map(tiny_model, noise, tmp_path, seed=7, **settings, init="pca"))[-1]
    codes = module_codes(tiny_model.module, [noise.load(i) for i in range(len(noise))])
    alone = TSNE(
        perplexity=12.0, early_exaggeration_iter=100, n_iter=300, initialization="pca", random_state=7
    ).fit(codes)
    ours, theirs = nearest_sets(result.arrays["positions"], 10), nearest_sets(np.asarray(alone), 10)
    kept = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours, theirs, strict=True)])
    assert kept >= 0.9
    assert result.arrays["positions"].shape == (len(noise), 2)
    assert result.arrays["positions"].dtype == np.float32


def test_crops_of_one_photograph_land_together_on_the_default_model(default_model, tmp_path):
    dataset = FolderDataset(write_crops(tmp_path / "crops", CROP_PHOTOS, 20), "photo_crops")
    result = list(run_code_map(default_model, dataset, tmp_path / "store", perplexity=15.0))[-1]
    labels = [
        item.split("/")[0]
        for item in sorted(str(p.relative_to(dataset.path)) for p in dataset.path.rglob("*.png"))
    ]
    assert result.data["labels"] == labels
    found = hit(result.arrays["positions"], labels)
    chance = (20 - 1) / (len(labels) - 1)  # ten photographs, twenty crops each
    assert result.data["neighbour_hit"] == pytest.approx(found)
    assert result.data["neighbour_hit_chance"] == pytest.approx(chance)
    assert found >= 0.6 > 5 * chance


def test_the_grid_is_a_bijection_onto_cells_that_no_swap_improves_and_keeps_neighbours_close(
    tiny_model, crops, tmp_path
):
    result = list(run_code_map(tiny_model, crops, tmp_path, perplexity=10.0, grid=True))[-1]
    cells = result.arrays["grid_positions"]
    count = len(crops)
    side = math.ceil(math.sqrt(count))
    assert result.data["grid"] == {"side": side, "points": count}
    assert cells.min() >= 0 and cells.max() < side
    assert len({(row, col) for row, col in cells}) == count
    # The cost the snapping minimises: squared distance from each point (layout scaled to the unit square)
    # to its cell's centre. An optimal assignment has no pair of points that would gain by swapping cells,
    # and no point that would gain by moving to an empty cell.
    positions = result.arrays["positions"].astype(np.float64)
    scaled = (positions - positions.min(axis=0)) / np.ptp(positions, axis=0)
    centres = cells[:, ::-1] / (side - 1)
    cost = ((scaled[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)  # point i in point j's cell
    own = np.diag(cost)
    assert (own[:, None] + own[None, :] <= cost + cost.T + 1e-9).all()
    taken = {(row, col) for row, col in cells}
    empty = np.array([(col, row) for row in range(side) for col in range(side) if (row, col) not in taken])
    to_empty = ((scaled[:, None, :] - empty[None, :, :] / (side - 1)) ** 2).sum(axis=-1)
    assert (own[:, None] <= to_empty + 1e-9).all()
    # Neighbours in the layout stay neighbours on the grid: each point's nearest lies a cell or two away,
    # where a random placement would put it about side / 2 away.
    nearest = nearest_sets(positions, 1)[:, 0]
    steps = np.abs(cells - cells[nearest]).max(axis=1)
    assert steps.mean() <= 2.0 < side / 3
    grid = result.images["grid"]
    assert grid.shape == (side * 16, side * 16, 3)


def test_a_data_set_too_small_for_the_perplexity_names_it_before_any_forward_pass(tiny_model, tmp_path):
    few = FolderDataset(write_crops(tmp_path / "few", ("coffee",), 10), "few")
    with pytest.raises(BadInput, match=r"perplexity 30 needs at least 91.*at most 3\b") as error:
        list(run_code_map(tiny_model, few, tmp_path / "store"))
    assert error.value.field == "params.perplexity"
    one = FolderDataset(write_crops(tmp_path / "one", ("coffee",), 1), "one")
    with pytest.raises(BadInput) as error:
        list(run_code_map(tiny_model, one, tmp_path / "store", perplexity=1.0))
    assert error.value.field == "params.perplexity"
    with pytest.raises(BadInput) as error:
        list(run_code_map(tiny_model, one, tmp_path / "store", method="pca"))
    assert error.value.field == "params.dataset"
    assert not any((tmp_path / "store").rglob("*.npy"))
    # Three times the perplexity in neighbours is enough: 10 images take perplexity 3.
    assert isinstance(list(run_code_map(tiny_model, few, tmp_path / "store", perplexity=3.0))[-1], Result)


def test_frames_stream_while_tsne_optimises_and_a_stop_ends_it(tiny_model, crops, tmp_path):
    params = {"perplexity": 10.0, "early_iterations": 50, "iterations": 100, "every": 10}
    events = list(run_code_map(tiny_model, crops, tmp_path, **params))
    frames = of_type(events, Frame)
    assert [frame.step for frame in frames] == [*range(0, 151, 10), 150]
    # One canvas: a frame's label names the canvas it is drawn on, the iteration is its step.
    assert {frame.label for frame in frames} == {"t-SNE"}
    assert events.index(frames[0]) < events.index(events[-1]) and isinstance(events[-1], Result)
    assert not np.array_equal(frames[0].pixels(), frames[-1].pixels())
    assert frames[0].pixels().shape == (512, 512, 3)
    divergences = [metrics.values["kl_divergence"] for metrics in of_type(events, Metrics)]
    assert len(divergences) == 15 and all(np.isfinite(divergences))
    assert divergences[-1] < divergences[0]
    optimising = [p.step for p in of_type(events, Progress) if p.step > len(crops)]
    assert optimising == sorted(optimising) and optimising[-1] == len(crops) + 150

    # Stopped after its second frame (the job closes the generator): openTSNE's thread ends with it.
    running = run_code_map(tiny_model, crops, tmp_path, **{**params, "iterations": 10000})
    seen = 0
    for event in running:
        seen += isinstance(event, Frame)
        if seen == 2:
            break
    running.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "code-map-tsne"]


def test_the_pca_layout_is_the_codes_first_two_principal_components(tiny_model, crops, tmp_path):
    result = list(run_code_map(tiny_model, crops, tmp_path, method="pca"))[-1]
    codes = module_codes(tiny_model.module, [crops.load(i) for i in range(len(crops))]).astype(np.float64)
    centred = codes - codes.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ directions[:2].T
    found = result.arrays["positions"].astype(np.float64)
    signs = np.sign((found * expected).sum(axis=0))  # a component's sign is arbitrary
    assert np.allclose(found * signs, expected, atol=1e-3 * np.abs(expected).max())
    assert result.data["method"] == "pca" and result.data["kl_divergence"] is None
    assert len(of_type(list(run_code_map(tiny_model, crops, tmp_path, method="pca")), Frame)) == 1


def test_a_job_on_a_data_set_too_small_for_its_perplexity_is_refused_when_requested(client):
    jobs_before = client.get("/api/jobs").get_json()["total"]
    body = {
        "method": "code_map",
        "model": "efficientnet_lite0.onnx",
        "image": "chelsea",
        "params": {"dataset": "lfw_faces", "perplexity": 70},  # 200 images take perplexity 66 at most
    }
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == "params.perplexity"
    assert "at most 66.3" in answer.get_json()["error"]
    assert client.get("/api/jobs").get_json()["total"] == jobs_before, "no job was made"
    body["params"]["perplexity"] = 66
    accepted = client.post("/api/jobs", json=body)
    assert accepted.status_code == 202
    job_id = accepted.get_json()["id"]
    client.post(f"/api/jobs/{job_id}/stop")
    # Ended before the next test: a job still writing its codes would race another test's view of the data folder.
    assert client.application.extensions["convlens"].jobs.get(job_id).ended.wait(120), (
        "the stopped job never ended"
    )
