"""BagNet (``bagnet``, ``bagnet_correlation``): the bag of patches checked against the default model's file run
by ONNX Runtime directly, on patches cut and resized here with PIL; and a BagNet file's one-pass map checked
against the BagNet property: each position is the same file, run by Runtime, on its patch alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from skimage import data

from convlens.events import PANEL_SEPARATOR, Frame, Log, Metrics, Points, Predictions, Progress, Result
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.testing import metric, of_type, run_method
from convlens_plugins.training.bagnet import FRAME_LABEL

JOB_TIMEOUT = 120
SIDE = 224
"""The default model's input side."""


def independent_logits(model, pictures: list[np.ndarray]) -> np.ndarray:
    """The model file's logits for HxWx3 uint8 ``pictures``: PIL's bicubic resize to the input, the card's
    normalisation, a fresh Runtime session, one picture a call."""
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    mean = np.asarray(model.card.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(3, 1, 1)
    rows = []
    for picture in pictures:
        pixels = np.asarray(Image.fromarray(picture).resize((SIDE, SIDE), Image.BICUBIC), np.float32) / 255.0
        normalised = ((pixels.transpose(2, 0, 1) - mean) / std)[None].astype(np.float32)
        rows.append(session.run(None, {name: normalised})[0][0])
    return np.stack(rows)


def resized_chelsea() -> np.ndarray:
    return np.asarray(Image.fromarray(data.chelsea()).resize((SIDE, SIDE), Image.BICUBIC))


def test_a_patch_as_large_as_the_input_makes_the_bag_the_model(default_model, sample_image):
    events = run_method("bagnet", default_model, sample_image, patch=SIDE, stride=8)
    result = of_type(events, Result)[0]
    expected = independent_logits(default_model, [resized_chelsea()])[0]
    assert result.data["patches"] == 1 and result.data["grid"] == [1, 1]
    np.testing.assert_allclose(result.arrays["bag_logits"], expected, atol=1e-4)
    assert [entry["class"] for entry in result.data["bag_top5"]] == list(np.argsort(-expected)[:5])
    for bag, full in zip(result.data["bag_top5"], result.data["model_top5"], strict=True):
        assert bag["class"] == full["class"] and bag["probability"] == pytest.approx(
            full["probability"], abs=1e-5
        )
    assert result.data["same_top1"] and result.data["logit_correlation"] == pytest.approx(1.0, abs=1e-6)


def test_each_patch_logit_is_the_model_on_that_patch_alone(default_model, sample_image):
    """q = 33 at stride 63: 4 x 4 patches that do not overlap, so the class map over a patch is its own logit."""
    events = run_method("bagnet", default_model, sample_image, patch=33, stride=63, batch_size=5)
    result = of_type(events, Result)[0]
    grid = result.arrays["patch_logits"]
    assert grid.shape == (4, 4, 1000) and result.data["patches"] == 16
    picture = resized_chelsea()
    corners = [(row * 63, column * 63) for row in range(4) for column in range(4)]
    expected = independent_logits(default_model, [picture[y : y + 33, x : x + 33] for y, x in corners])
    np.testing.assert_allclose(grid.reshape(16, 1000), expected, atol=1e-3)
    chosen = result.data["class"]
    assert chosen == int(grid.reshape(16, -1).mean(axis=0).argmax())
    for (y, x), logits in zip(corners, expected, strict=True):
        assert result.arrays["class_map"][y + 16, x + 16] == pytest.approx(logits[chosen], abs=1e-3)
    for row in result.data["evidence"]:
        best = row["patches"][0]
        assert best["logit"] == pytest.approx(float(grid[..., row["class"]].max()), abs=1e-6)
        assert (best["y"], best["x"]) in corners


def test_the_heatmap_fills_batch_by_batch_beside_both_top5s(default_model, sample_image):
    events = run_method(
        "bagnet", default_model, sample_image, patch=33, stride=63, batch_size=5, **{"class": 1}
    )
    frames = [frame for frame in of_type(events, Frame) if frame.label != "evidence"]
    assert [progress.step for progress in of_type(events, Progress)] == [5, 10, 15, 16]
    assert len(frames) == 4 and all(PANEL_SEPARATOR in frame.label for frame in frames)
    assert all(set(predictions.tops) == {"bag", "full model"} for predictions in of_type(events, Predictions))
    grey = [(frame.image[:, :SIDE].std(axis=2) < 1e-6).mean() for frame in frames]
    assert grey[0] > grey[1] > grey[2] > grey[3]
    result = of_type(events, Result)[0]
    assert result.data["class"] == 1 and result.data["label"] == default_model.label(1)
    assert of_type(events, Frame)[-1].label == "evidence"
    correlations = metric(events, "logit correlation with the full model")
    assert len(correlations) == 4 and correlations[-1] == pytest.approx(result.data["logit_correlation"])
    assert result.images["evidence"].shape[0] > 4 * 48


def test_the_bag_does_not_depend_on_the_seed(default_model, sample_image):
    params = {"patch": 65, "stride": 80}
    first, second = (
        run_method("bagnet", default_model, sample_image, seed=seed, **params) for seed in (0, 7)
    )
    for a, b in zip(of_type(first, Frame), of_type(second, Frame), strict=True):
        np.testing.assert_array_equal(a.pixels(), b.pixels())
    np.testing.assert_array_equal(
        of_type(first, Result)[0].arrays["patch_logits"], of_type(second, Result)[0].arrays["patch_logits"]
    )


def test_whole_picture_bags_correlate_perfectly_with_the_model_over_photos(default_model, sample_image):
    events = run_method("bagnet_correlation", default_model, sample_image, patch=SIDE, photos=2)
    result = of_type(events, Result)[0]
    assert [photo["photo"] for photo in result.data["photos"]] == ["chelsea", "coffee"]
    assert result.data["pearson"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(result.arrays["bag_logits"], result.arrays["model_logits"], atol=1e-4)
    points = of_type(events, Points)[-1].positions
    assert points.shape == (2000, 2)


def test_small_patches_correlate_as_numpy_computes_it(default_model, sample_image):
    events = run_method("bagnet_correlation", default_model, sample_image, patch=33, stride=96, photos=2)
    result = of_type(events, Result)[0]
    bag, full = result.arrays["bag_logits"], result.arrays["model_logits"]
    expected = np.corrcoef(bag.ravel(), full.ravel())[0, 1]
    assert result.data["pearson"] == pytest.approx(expected, abs=1e-6) and expected < 0.99
    for photo, row_bag, row_full in zip(result.data["photos"], bag, full, strict=True):
        assert photo["pearson"] == pytest.approx(np.corrcoef(row_bag, row_full)[0, 1], abs=1e-6)
    assert [m.values["pearson r (all photos)"] for m in of_type(events, Metrics)][-1] == pytest.approx(
        expected
    )
    assert of_type(events, Progress)[-1].step == of_type(events, Progress)[-1].total == 2 * 4


@pytest.mark.parametrize(
    ("method", "params", "field", "words"),
    [
        ("bagnet", {"patch": 225}, "params.patch", "larger than the 224x224 model input"),
        ("bagnet", {"patch": 0}, "params.patch", "at least 1"),
        ("bagnet", {"stride": 0}, "params.stride", "at least 1"),
        ("bagnet", {"class": 1000}, "params.class", "class index"),
        ("bagnet", {"batch_size": 257}, "params.batch_size", "at most 256"),
        ("bagnet_correlation", {"patch": 300}, "params.patch", "larger than the 224x224 model input"),
        ("bagnet_correlation", {"photos": 0}, "params.photos", "at least 1"),
    ],
)
def test_the_api_refuses_bad_patches_naming_the_field(client, method, params, field, words):
    answer = client.post(
        "/api/jobs", json={"method": method, "model": DEFAULT_MODEL, "image": "chelsea", "params": params}
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == field and words in answer.get_json()["error"]


def test_a_job_through_the_api_serves_the_bags_result_and_its_arrays(app, client):
    answer = client.post(
        "/api/jobs",
        json={
            "method": "bagnet",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"patch": 112, "stride": 112},
        },
    )
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    if not app.extensions["convlens"].jobs.get(job_id).ended.wait(JOB_TIMEOUT):  # a hang guard
        pytest.fail(
            f"job {job_id} had not ended after {JOB_TIMEOUT} s: {client.get(f'/api/jobs/{job_id}').json}"
        )
    assert client.get(f"/api/jobs/{job_id}").get_json()["state"] == "done"
    result = client.get(f"/api/jobs/{job_id}/result").get_json()
    assert result["data"]["patches"] == 4 and result["data"]["grid"] == [2, 2]
    grid = np.load(io.BytesIO(client.get(f"/api/jobs/{job_id}/arrays/patch_logits.npy").data))
    picture = resized_chelsea()
    corners = [(0, 0), (0, 112), (112, 0), (112, 112)]
    expected = independent_logits(
        app.extensions["convlens"].models.get(DEFAULT_MODEL),
        [picture[y : y + 112, x : x + 112] for y, x in corners],
    )
    np.testing.assert_allclose(grid.reshape(4, -1), expected, atol=1e-3)
    assert result["data"]["bag_top5"][0]["class"] == int(expected.mean(axis=0).argmax())


# -- a BagNet file: the logit map of every patch in one forward pass -------------------------------------------
BAGNET_Q = 17
BAGNET_STRIDE = 8
BAGNET_GRID = 26
"""Patches of 17 px at stride 8 wholly inside 224 px: starts 0, 8, ..., 200."""
BAD_CARDS = {
    "patch_zero": ({"patch": 0, "stride": 8, "layer": "logit_map"}, "bagnet.patch must be a whole number"),
    "no_stride": ({"patch": 17, "layer": "logit_map"}, "bagnet.stride must be a whole number"),
    "fractional": ({"patch": 17.5, "stride": 8, "layer": "logit_map"}, "bagnet.patch must be a whole number"),
    "no_layer": ({"patch": 17, "stride": 8}, "bagnet.layer must name the layer"),
    "not_object": (17, "bagnet must be an object"),
}


@pytest.fixture(scope="module")
def bagnet_folder(tmp_path_factory) -> Path:
    """A tiny BagNet-17 (10 classes) as ``bagnet17.onnx`` and ``.pt`` with its card, and copies of the ``.pt``
    under cards that declare ``bagnet`` badly (BAD_CARDS) or name a missing layer or a too large patch."""
    from convlens_plugins.training.bagnet_net import bagnet, card, write_bagnet

    folder = tmp_path_factory.mktemp("bagnet-models")
    write_bagnet(folder, "bagnet17", bagnet(BAGNET_Q, classes=10, width=4, seed=3), BAGNET_Q)
    broken = {name: declaration for name, (declaration, _) in BAD_CARDS.items()}
    broken["missing_layer"] = {"patch": 17, "stride": 8, "layer": "nowhere"}
    broken["huge_patch"] = {"patch": 225, "stride": 8, "layer": "logit_map"}
    for name, declaration in broken.items():
        (folder / f"{name}.pt").symlink_to(folder / "bagnet17.pt")
        (folder / f"{name}.json").write_text(json.dumps({**card(17, 10), "bagnet": declaration}))
    return folder


@pytest.fixture(scope="module")
def bagnet_onnx(bagnet_folder):
    from convlens.models.store import load_model

    return load_model(bagnet_folder / "bagnet17.onnx")


@pytest.fixture(scope="module")
def bagnet_run(bagnet_onnx) -> list:
    return run_method("bagnet", bagnet_onnx, resized_chelsea(), patch=33, stride=8)


def patch_logits_by_runtime(model, picture: np.ndarray, corners) -> np.ndarray:
    """The BagNet file, run by a fresh Runtime session, on each q x q patch of ``picture`` alone."""
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    mean = np.asarray(model.card.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(model.card.std, np.float32).reshape(3, 1, 1)
    normalised = ((picture.astype(np.float32).transpose(2, 0, 1) / 255.0 - mean) / std).astype(np.float32)
    return np.stack(
        [
            session.run(None, {"images": normalised[None, :, y : y + BAGNET_Q, x : x + BAGNET_Q]})[0][0]
            for y, x in corners
        ]
    )


def test_each_map_position_is_the_bagnet_file_on_that_patch_alone(bagnet_onnx, bagnet_run):
    result = of_type(bagnet_run, Result)[0]
    grid = result.arrays["patch_logits"]
    assert grid.shape == (BAGNET_GRID, BAGNET_GRID, 10) and result.data["one_pass"]
    assert (result.data["patch"], result.data["stride"]) == (BAGNET_Q, BAGNET_STRIDE)
    corners = [(i * BAGNET_STRIDE, j * BAGNET_STRIDE) for i in range(BAGNET_GRID) for j in range(BAGNET_GRID)]
    expected = patch_logits_by_runtime(bagnet_onnx, resized_chelsea(), corners)
    np.testing.assert_allclose(grid.reshape(-1, 10), expected, atol=1e-4)
    # Where the method places each patch: the evidence patches' logits and the map's corner pixels, each
    # covered by one patch only.
    for row in result.data["evidence"]:
        places = [(patch["y"], patch["x"]) for patch in row["patches"]]
        logits = patch_logits_by_runtime(bagnet_onnx, resized_chelsea(), places)[:, row["class"]]
        np.testing.assert_allclose([patch["logit"] for patch in row["patches"]], logits, atol=1e-4)
    chosen, class_map = result.data["class"], result.arrays["class_map"]
    assert class_map[0, 0] == pytest.approx(expected[0, chosen], abs=1e-4)
    assert class_map[216, 216] == pytest.approx(expected[-1, chosen], abs=1e-4)
    assert np.isnan(class_map[217, 217])


def test_the_bags_prediction_is_the_softmax_of_the_maps_mean(bagnet_run):
    result = of_type(bagnet_run, Result)[0]
    mean = result.arrays["patch_logits"].reshape(-1, 10).astype(np.float64).mean(axis=0)
    probabilities = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
    order = np.argsort(-probabilities)[:5]
    assert [entry["class"] for entry in result.data["bag_top5"]] == list(order)
    np.testing.assert_allclose(
        [entry["probability"] for entry in result.data["bag_top5"]], probabilities[order], atol=1e-6
    )
    # The file's own output is the map's mean too: for a BagNet the bag is the model.
    np.testing.assert_allclose(result.arrays["model_logits"], mean, atol=1e-5)


def test_the_map_streams_once_and_the_forms_patch_is_named_unused(bagnet_run):
    frames = of_type(bagnet_run, Frame)
    assert [frame.label for frame in frames] == [FRAME_LABEL, "evidence"]
    assert [(p.step, p.total) for p in of_type(bagnet_run, Progress)] == [(BAGNET_GRID**2, BAGNET_GRID**2)]
    assert [log.message for log in of_type(bagnet_run, Log)] == [
        "patch 33 not used: bagnet17.onnx's card fixes it at 17"
    ]


def test_the_torchscript_file_under_the_same_card_gives_the_same_map(bagnet_folder, bagnet_run):
    from convlens.models.store import load_model

    events = run_method("bagnet", load_model(bagnet_folder / "bagnet17.pt"), resized_chelsea(), patch=17)
    assert not of_type(events, Log)
    np.testing.assert_allclose(
        of_type(events, Result)[0].arrays["patch_logits"],
        of_type(bagnet_run, Result)[0].arrays["patch_logits"],
        atol=1e-4,
    )


def test_bad_bagnet_cards_list_the_model_as_broken_and_jobs_on_them_are_refused(bagnet_folder, tmp_path):
    from convlens.app import create_app
    from convlens.config import Config

    app = create_app(Config(models_dirs=[bagnet_folder], data_dir=tmp_path, ensure_default_model=False))
    client = app.test_client()
    listing = {entry["id"]: entry for entry in client.get("/api/models").get_json()}
    for name, (_, words) in BAD_CARDS.items():
        assert words in listing[f"{name}.pt"]["error"], listing[f"{name}.pt"]
    assert "error" not in listing["bagnet17.onnx"] and "error" not in listing["missing_layer.pt"]
    refusals = {
        "patch_zero.pt": "bagnet.patch must be a whole number",
        "missing_layer.pt": "bagnet.layer 'nowhere' is no layer",
        "huge_patch.pt": "bagnet.patch 225 exceeds its 224x224 input",
    }
    for model, words in refusals.items():
        answer = client.post("/api/jobs", json={"method": "bagnet", "model": model, "image": "chelsea"})
        assert answer.status_code == 400 and answer.get_json()["field"] == "model"
        assert words in answer.get_json()["error"]
