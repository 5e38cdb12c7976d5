"""A data set's thumbnails as one sprite sheet (``/atlas``), and a data set's image as a job's picture."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL


def digits_as_served() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as the built-in ``digits`` set promises them: 0-255 grey, each pixel 4 x 4."""
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return np.kron(pixels, np.ones((1, 4, 4), np.uint8)), digits.target


def test_the_atlas_holds_each_thumbnail_in_its_cell_row_major(client):
    pictures, targets = digits_as_served()
    offset, limit = 10, 18
    answer = client.get(f"/api/datasets/digits/atlas?size=32&offset={offset}&limit={limit}")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    columns = math.ceil(math.sqrt(limit))
    assert answer.headers["X-Atlas-Columns"] == str(columns) and answer.headers["X-Atlas-Count"] == "18"
    sheet = np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGBA"))
    assert sheet.shape == (4 * 32, columns * 32, 4)
    for cell in range(limit):
        row, col = divmod(cell, columns)
        tile = sheet[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
        assert (tile[:, :, 3] == 255).all()
        for channel in range(3):
            np.testing.assert_array_equal(tile[:, :, channel], pictures[offset + cell])
    assert (sheet[3 * 32 :, 3 * 32 :, 3] == 0).all(), "the cells past the last item are transparent"

    shape = client.get(f"/api/datasets/digits/atlas.json?size=32&offset={offset}&limit={limit}").get_json()
    assert (shape["columns"], shape["rows"], shape["count"], shape["total"]) == (columns, 4, 18, len(targets))
    assert shape["labels"] == [str(t) for t in targets[offset : offset + limit]]


def test_a_smaller_size_fits_each_thumbnail_into_it(client):
    pictures, _ = digits_as_served()
    sheet = np.asarray(Image.open(io.BytesIO(client.get("/api/datasets/digits/atlas?size=8&limit=4").data)))
    assert sheet.shape == (16, 16, 4)
    # 32 px to 8 px: each thumbnail pixel is the mean of a 4 x 4 block, one grey value per block here.
    np.testing.assert_allclose(sheet[8:16, 8:16, 0], pictures[3][::4, ::4], atol=1)


def test_the_whole_set_comes_in_a_few_atlases(client):
    total = len(load_digits().target)
    counts = [
        client.get(f"/api/datasets/digits/atlas.json?size=16&offset={offset}").get_json()["count"]
        for offset in range(0, total, 4096)
    ]
    assert counts == [total]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("size=7", "size"),
        ("size=129", "size"),
        ("size=%EF%BC%93%EF%BC%92", "size"),  # fullwidth "３２"
        ("size=3.5", "size"),
        ("offset=-1", "offset"),
        ("offset=1797", "offset"),
        ("offset=" + "9" * 5000, "offset"),
        ("limit=0", "limit"),
        ("limit=4097", "limit"),
        ("size=128&limit=4096", "limit"),  # 64 columns of 128 px: over 4096 px a side
    ],
)
def test_bad_atlas_parameters_are_a_400_naming_them(client, query, field):
    for route in ("atlas", "atlas.json"):
        answer = client.get(f"/api/datasets/digits/{route}?{query}")
        assert answer.status_code == 400, (route, query)
        assert answer.get_json()["field"] == field


def test_an_unknown_data_sets_atlas_is_a_404_naming_it(client):
    answer = client.get("/api/datasets/no_such_set/atlas")
    assert answer.status_code == 404 and answer.get_json()["field"] == "dataset"


def test_a_data_set_image_is_served_and_accepted_as_a_jobs_picture(client):
    pictures, _ = digits_as_served()
    answer = client.get("/api/images/dataset:digits:12")
    assert answer.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.data)))[:, :, 0], pictures[12])
    predict = client.get(f"/api/models/{DEFAULT_MODEL}/predict?image=dataset:digits:12&k=3")
    assert predict.status_code == 200 and len(predict.get_json()) == 3


@pytest.mark.parametrize(
    "image",
    [
        "dataset:no_such_set:1",
        "dataset:digits:1797",
        "dataset:digits:%EF%BC%91",  # fullwidth "１"
        "dataset:digits:",
        "dataset::3",
        "dataset:digits:-1",
        "dataset:digits:" + "9" * 40,
    ],
)
def test_an_unknown_data_set_image_is_a_404_naming_image(client, image):
    answer = client.get(f"/api/images/{image}")
    assert answer.status_code == 404 and answer.get_json()["field"] == "image", answer.get_json()
    body = {
        "method": "predict",
        "model": DEFAULT_MODEL,
        "image": image.replace("%EF%BC%91", "１"),
        "params": {},
    }
    job = client.post("/api/jobs", json=body)
    assert job.status_code == 404 and job.get_json()["field"] == "image"


def test_the_cli_runs_on_a_data_set_image_and_names_a_wrong_one(models_dir, tmp_path):
    def convlens(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "convlens", "--models-dir", str(models_dir), "run", "predict", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    answer = convlens("--image", "dataset:digits:3", "--out", str(tmp_path / "three"))
    assert answer.returncode == 0, answer.stderr
    assert json.loads((tmp_path / "three" / "result.json").read_text())["image"] == "dataset:digits:3"
    wrong = convlens("--image", "dataset:digits:1797", "--out", str(tmp_path / "none"))
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("convlens: error: image: ") and "0 to 1796" in wrong.stderr
    assert not (tmp_path / "none").exists()
