"""Data sets: a folder of images as torchvision's ImageFolder reads it, and the built-in ones against the packages
that ship their data (scikit-learn, scikit-image), read directly."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from convlens.datasets import DatasetLibrary, FolderDataset
from convlens.errors import BadInput, NotFound


def write_png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def solid(value: int, size=(6, 5)) -> np.ndarray:
    return np.full((*size, 3), value, np.uint8)


@pytest.fixture
def pets(tmp_path):
    """cat/ and dog/ with images at two depths, a notes file, a text file named like a JPEG, and a hidden file."""
    root = tmp_path / "pets"
    write_png(root / "cat" / "a.png", solid(10))
    write_png(root / "cat" / "older" / "b.png", solid(20))
    write_png(root / "dog" / "c.png", solid(30))
    (root / "dog" / "notes.txt").write_text("not a picture")
    (root / "dog" / "fake.jpg").write_text("not a JPEG either")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_a_folder_per_class_labels_its_images_as_imagefolder_does(pets):
    dataset = FolderDataset(pets)
    oracle = ImageFolder(str(pets), is_valid_file=lambda p: p.endswith(".png"))
    expected = [(os.path.relpath(path, pets), oracle.classes[target]) for path, target in oracle.samples]
    assert [(item.key, item.label) for item in dataset.items()] == expected
    assert dataset.labels() == ["cat", "dog"]
    assert len(dataset) == 3 and dataset.id == "pets"
    assert [int(dataset.load(i)[0, 0, 0]) for i in range(3)] == [10, 20, 30]


def test_non_images_are_skipped_and_listed_not_fatal(pets):
    skipped = FolderDataset(pets).skipped()
    assert [entry["key"] for entry in skipped] == ["dog/fake.jpg", "dog/notes.txt"]
    assert all(entry["reason"] for entry in skipped)


def test_images_at_the_top_have_no_label(tmp_path):
    write_png(tmp_path / "flat" / "one.png", solid(1))
    dataset = FolderDataset(tmp_path / "flat")
    assert [item.label for item in dataset.items()] == [None] and dataset.labels() == []


def test_a_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(BadInput, match="no images") as error:
        FolderDataset(tmp_path / "empty").items()
    assert error.value.field == "dataset"


def test_a_phone_photo_in_a_folder_is_upright(tmp_path):
    # The stored picture is the upright one turned 90° anticlockwise; EXIF 6 tells a viewer to turn it back.
    upright = np.zeros((40, 64, 3), np.uint8)
    upright[:, :32] = (200, 30, 30)
    upright[:20, 32:] = (30, 200, 30)
    upright[20:, 32:] = (30, 30, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "phone").mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(
        tmp_path / "phone" / "p.jpg", quality=95, exif=exif.tobytes()
    )
    pixels = FolderDataset(tmp_path / "phone").load(0)
    assert pixels.shape == upright.shape
    assert np.abs(pixels.astype(int) - upright).mean() < 6


def test_the_fingerprint_changes_when_a_file_changes(pets):
    dataset = FolderDataset(pets)
    before = dataset.fingerprint()
    assert FolderDataset(pets).fingerprint() == before
    picture = pets / "dog" / "c.png"
    write_png(picture, solid(31, size=(7, 5)))
    os.utime(picture, ns=(picture.stat().st_atime_ns, picture.stat().st_mtime_ns + 1_000_000))
    assert dataset.fingerprint() != before


def test_the_library_finds_folders_and_notices_a_new_image(pets, tmp_path, monkeypatch):
    import convlens.datasets

    monkeypatch.setattr(convlens.datasets, "RECHECK_S", 0.0)
    library = DatasetLibrary(dirs=[tmp_path])
    assert library.ids() == ["pets"]
    assert len(library.get("pets")) == 3
    write_png(pets / "dog" / "d.png", solid(40))
    assert len(library.get("pets")) == 4
    with pytest.raises(NotFound) as error:
        library.get("cats")
    assert error.value.field == "dataset"


def test_a_folder_that_cannot_be_read_is_listed_with_its_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    (listed,) = DatasetLibrary(dirs=[tmp_path]).list()
    assert listed["id"] == "nothing" and "no images" in listed["error"]


@pytest.fixture(scope="module")
def builtins():
    from convlens.plugins import get_plugin_manager, registered_datasets

    return {dataset.id: dataset for dataset in registered_datasets(get_plugin_manager())}


def test_digits_are_scikit_learns(builtins):
    from sklearn.datasets import load_digits

    digits = load_digits()
    dataset = builtins["digits"]
    assert len(dataset) == 1797 and dataset.labels() == [str(d) for d in range(10)]
    assert [item.label for item in dataset.items()] == [str(t) for t in digits.target]
    for index in (0, 500, 1796):
        # 8x8 at 17 grey levels (0-16) → 0-255, each pixel a 4x4 block, the same in R, G and B.
        grey = np.repeat(np.repeat(digits.images[index] * 255 / 16, 4, axis=0), 4, axis=1)
        pixels = dataset.load(index)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        for channel in range(3):
            np.testing.assert_allclose(pixels[:, :, channel], grey, atol=0.5)


def test_lfw_faces_are_scikit_images_subset(builtins):
    from skimage import data

    faces = data.lfw_subset()
    dataset = builtins["lfw_faces"]
    # scikit-image's documentation: the first 100 images are faces, the other 100 are not.
    assert [item.label for item in dataset.items()] == ["face"] * 100 + ["non-face"] * 100
    for index in (3, 150):
        np.testing.assert_allclose(dataset.load(index)[:, :, 1], faces[index] * 255, atol=0.5)


def test_skimage_crops_are_crops_of_the_photographs_they_are_labelled_by(builtins):
    from skimage import data

    dataset = builtins["skimage_crops"]
    items = dataset.items()
    assert len(dataset) == 3000
    labels = [item.label for item in items]
    assert {label: labels.count(label) for label in set(labels)} == {label: 300 for label in dataset.labels()}
    assert len(dataset.labels()) == 10
    for index in (0, 1234, 2999):
        label = items[index].label
        top, left, side = map(int, items[index].key.split("/")[1].split("_"))
        photo = getattr(data, label)()
        photo = np.repeat(photo[:, :, None], 3, axis=2) if photo.ndim == 2 else photo[:, :, :3]
        crop = Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side]))
        expected = np.asarray(crop.resize((64, 64), Image.BICUBIC))
        np.testing.assert_array_equal(dataset.load(index), expected)
    sides = {int(item.key.rsplit("_", 1)[1]) for item in items if item.label == "chelsea"}
    assert len(sides) == 4  # four scales


def test_an_index_past_the_end_names_it(builtins):
    with pytest.raises(NotFound) as error:
        builtins["lfw_faces"].load(200)
    assert error.value.field == "index"
