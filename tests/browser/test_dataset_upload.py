"""The parameter form's "Upload a zip…" beside a ``dataset`` select: the new data set is added and selected, and a
zip the server refuses is reported next to the control, naming the bad member."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
# A real method with a dataset parameter (default: skimage_crops).
METHOD = "top_patches"


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def datasets(live_server: str) -> list[dict]:
    return requests.get(f"{live_server}/api/datasets", timeout=60).json()


def open_method(page, live_server: str):
    page.goto(f"{live_server}/?model={DEFAULT_MODEL}")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)
    page.locator(f'[data-testid="method"][data-method="{METHOD}"]').click()
    picker = page.get_by_test_id("param-dataset")
    picker.wait_for()
    return picker


def test_an_uploaded_zip_becomes_the_chosen_data_set(page, live_server, tmp_path):
    layout = {"cats": 3, "dogs": 2}
    members = {
        f"{label}/{index}.png": png_bytes(seed)
        for seed, (label, index) in enumerate((label, i) for label, n in layout.items() for i in range(n))
    }
    archive = write_zip(tmp_path / "pets.zip", members)
    before = {dataset["id"] for dataset in datasets(live_server)}
    picker = open_method(page, live_server)
    assert picker.input_value() == "skimage_crops"

    page.get_by_test_id("param-dataset-upload").set_input_files(archive)
    expect(page.get_by_test_id("param-dataset-upload-status")).to_contain_text("added")

    added = [dataset for dataset in datasets(live_server) if dataset["id"] not in before]
    assert len(added) == 1
    (dataset,) = added
    assert dataset["count"] == sum(layout.values())
    assert sorted(dataset["labels"]) == sorted(layout)
    assert picker.input_value() == dataset["id"]
    assert f"{sum(layout.values())} images" in picker.locator(f'option[value="{dataset["id"]}"]').inner_text()
    expect(page.get_by_test_id("param-dataset-upload-error")).to_be_hidden()


def test_a_refused_zip_is_reported_by_member_and_adds_nothing(page, live_server, tmp_path):
    archive = write_zip(tmp_path / "evil.zip", {"cats/0.png": png_bytes(0), "../evil.png": png_bytes(1)})
    before = datasets(live_server)
    picker = open_method(page, live_server)

    upload = page.get_by_test_id("param-dataset-upload")
    upload.set_input_files(archive)
    error = page.get_by_test_id("param-dataset-upload-error")
    expect(error).to_contain_text("../evil.png")
    expect(error).to_contain_text("file:")

    assert datasets(live_server) == before
    # The form stays usable: the choice is kept and another file can be sent.
    assert picker.input_value() == "skimage_crops"
    expect(upload).to_be_enabled()
    picker.select_option("digits")
    assert picker.input_value() == "digits"
