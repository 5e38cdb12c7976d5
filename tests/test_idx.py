"""MNIST from IDX files a user has: the reader, the data set a folder or an uploaded zip of the four files is, and
the digits demo training its nets on it at 28×28.

The files are written here byte by byte with ``struct`` (LeCun's layout), from scikit-learn's digits upscaled to
28×28 so that the set is learnable; an oracle reads the bytes back with numpy on its own.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from convlens.datasets import DatasetLibrary, IdxDataset
from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.idx import read_idx
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.testing import make_tiny_model, metric, of_type

TRAIN = 1500
"""scikit-learn's first 1,500 digits are the training split, the other 297 the t10k split."""
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
QUICK = {"hidden_units": 32, "epochs": 3, "learning_rate": 0.003}


def mnist_like() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as MNIST draws its digits: 20×20 in a 28×28 frame, 0-255, ink bright."""
    digits = load_digits()
    pictures = np.zeros((len(digits.images), 28, 28), np.uint8)
    for index, image in enumerate(digits.images):
        grown = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        pictures[index, 4:24, 4:24] = np.asarray(grown)
    return pictures, digits.target.astype(np.uint8)


def idx_bytes(values: np.ndarray, magic: int | None = None, shape: tuple[int, ...] | None = None) -> bytes:
    """LeCun's IDX layout: the magic number, each dimension as a big-endian uint32, then the bytes."""
    shape = values.shape if shape is None else shape
    magic = (0x0800 + values.ndim) if magic is None else magic
    return (
        struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + values.astype(np.uint8).tobytes()
    )


def oracle_read(data: bytes) -> np.ndarray:
    """The test's own reader: the dimension count from the magic's last byte, the sizes, then the values."""
    dims = data[3]
    shape = np.frombuffer(data[4 : 4 + 4 * dims], dtype=">u4")
    return np.frombuffer(data[4 + 4 * dims :], dtype=np.uint8).reshape(shape)


def write_set(
    folder: Path, gzipped: tuple[str, ...] = ("test_images",), **replace: bytes
) -> dict[str, bytes]:
    """The four files in ``folder`` (those named in ``gzipped`` as ``.gz``; ``replace`` swaps a file's bytes)."""
    pictures, labels = mnist_like()
    contents = {
        "train_images": idx_bytes(pictures[:TRAIN]),
        "train_labels": idx_bytes(labels[:TRAIN]),
        "test_images": idx_bytes(pictures[TRAIN:]),
        "test_labels": idx_bytes(labels[TRAIN:]),
        **replace,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for part, data in contents.items():
        if part in gzipped:
            (folder / f"{NAMES[part]}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / NAMES[part]).write_bytes(data)
    return contents


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory) -> Path:
    """A data-set folder holding one IDX data set, ``mnist_like``."""
    root = tmp_path_factory.mktemp("idx-sets")
    write_set(root / "mnist_like")
    return root


@pytest.fixture(scope="module")
def idx_app(models_dir, idx_root, tmp_path_factory):
    """A server whose data-set folder is ``idx_root``."""
    from convlens.app import create_app
    from convlens.config import Config

    config = Config(
        models_dirs=[models_dir],
        data_dir=tmp_path_factory.mktemp("idx-data"),
        datasets_dirs=[idx_root],
        ensure_default_model=False,
    )
    app = create_app(config)
    app.config["TESTING"] = True
    return app


def test_the_reader_reads_plain_and_gzipped_files_as_the_oracle_reads_the_bytes(tmp_path):
    contents = write_set(tmp_path, gzipped=("test_images", "train_labels"))
    images = read_idx(tmp_path / NAMES["train_images"], "file", 3)
    np.testing.assert_array_equal(images, oracle_read(contents["train_images"]))
    assert images.shape == (TRAIN, 28, 28) and images.dtype == np.uint8
    test_images = read_idx(tmp_path / f"{NAMES['test_images']}.gz", "file", 3)
    np.testing.assert_array_equal(test_images, oracle_read(contents["test_images"]))
    labels = read_idx(tmp_path / f"{NAMES['train_labels']}.gz", "file", 1)
    np.testing.assert_array_equal(labels, load_digits().target[:TRAIN])


def test_a_folder_of_the_four_files_is_an_idx_data_set_listed_with_its_items(idx_app, idx_root):
    client = idx_app.test_client()
    listed = {entry["id"]: entry for entry in client.get("/api/datasets").get_json()}
    assert listed["mnist_like"]["count"] == 1797
    assert listed["mnist_like"]["labels"] == [str(digit) for digit in range(10)]
    page = client.get(f"/api/datasets/mnist_like?offset={TRAIN - 1}&limit=2").get_json()
    assert [item["key"] for item in page["items"]] == [f"train/{TRAIN - 1:05d}", "t10k/00000"]
    targets = load_digits().target
    assert [item["label"] for item in page["items"]] == [str(targets[TRAIN - 1]), str(targets[TRAIN])]
    dataset = DatasetLibrary(dirs=[idx_root]).get("mnist_like")
    assert isinstance(dataset, IdxDataset)
    expected = oracle_read(
        gzip.decompress((idx_root / "mnist_like" / f"{NAMES['test_images']}.gz").read_bytes())
    )
    np.testing.assert_array_equal(dataset.load(TRAIN + 5), np.repeat(expected[5][..., None], 3, axis=2))


def test_digits_trains_both_nets_on_the_idx_split_at_28_by_28_through_the_runner(idx_root):
    from convlens import runner
    from convlens.testing import find_method

    method = find_method("digits")
    library = DatasetLibrary(dirs=[idx_root])
    params = {"dataset": "mnist_like", **QUICK}
    ctx = runner.prepare_run(
        method, make_tiny_model(), np.zeros((8, 8, 3), np.uint8), params, datasets=library.get
    )
    events = list(runner.iterate(method, ctx))
    result = of_type(events, Result)[-1]
    assert result.data["input_size"] == [28, 28] and result.data["drawing"] == "mnist"
    assert result.data["train_size"] == TRAIN and result.data["test_size"] == 1797 - TRAIN
    targets = load_digits().target
    for name in ("one_layer", "two_layer"):
        net = result.data["nets"][name]
        assert net["test_accuracy"] == metric(events, f"{name}.test_accuracy")[-1] > 0.8
        # a mistake's index is the item's index in the data set: past the training split, its label the t10k's
        assert all(
            entry["index"] >= TRAIN and targets[entry["index"]] == entry["true"]
            for entry in net["misclassified"]
        )
        assert result.models[name].input_size == (28, 28)
        assert result.models[name].module.net[0].in_features == 784
    hidden = [frame.pixels() for frame in of_type(events, Frame) if frame.label == "hidden"][-1]
    assert hidden.shape == (56, 16 * 56 + 15 * 2, 3)  # 28×28 weights drawn 2 screen pixels a pixel


def test_an_uploaded_zip_of_idx_files_trains_a_job_whose_nets_take_28_by_28_drawings(idx_app, tmp_path):
    from test_api import run_job

    write_set(tmp_path / "mnist", gzipped=("train_images", "test_labels"))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for path in sorted((tmp_path / "mnist").iterdir()):
            archive.write(path, f"mnist/{path.name}")
    client = idx_app.test_client()
    answer = client.post("/api/datasets", data={"file": (io.BytesIO(packed.getvalue()), "mnist.zip")})
    assert answer.status_code == 201, answer.get_json()
    uploaded = answer.get_json()
    assert uploaded["count"] == 1797 and uploaded["source"] == "upload"
    job = run_job(
        client, "digits", model=DEFAULT_MODEL_ID, params={"dataset": uploaded["id"], **QUICK}, seed=1
    )
    assert job["state"] == "done", job.get("error")
    assert job["result"]["data"]["input_size"] == [28, 28]
    model_id = f"{job['id']}-two_layer.onnx"
    assert client.get(f"/api/models/{model_id}").get_json()["input_size"] == [28, 28]
    picture = mnist_like()[0][TRAIN + 1] / 255.0
    top = client.post(f"/api/models/{model_id}/predict", json={"pixels": picture.tolist(), "k": 3}).get_json()
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]
    small = client.post(f"/api/models/{model_id}/predict", json={"pixels": [[0.0] * 8] * 8})
    assert small.status_code == 400 and small.get_json()["field"] == "pixels"


pictures, labels = mnist_like()
BROKEN = {
    "wrong magic": {"train_images": idx_bytes(pictures[:TRAIN], magic=0x00000903)},
    "labels for images": {"train_labels": idx_bytes(pictures[:10])},
    "count mismatch": {"test_labels": idx_bytes(labels[TRAIN:-1])},
    "truncated": {"train_images": idx_bytes(pictures[:TRAIN])[:-100]},
    "dims too large": {"test_images": idx_bytes(pictures[:1], shape=(1, 70000, 70000))},
    "header only": {"train_labels": b"\x00\x00\x08"},
    "a label past 9": {"test_labels": idx_bytes(np.full(1797 - TRAIN, 12))},
}
del pictures, labels


@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_idx_files_are_a_400_naming_the_data_set_never_a_500(idx_app, tmp_path, broken):
    from convlens import runner
    from convlens.testing import find_method

    folder = tmp_path / "broken"
    write_set(folder, gzipped=(), **BROKEN[broken])
    library = DatasetLibrary(dirs=[tmp_path])
    with pytest.raises(BadInput) as refused:
        runner.prepare_run(
            find_method("digits"), make_tiny_model(), np.zeros((8, 8, 3), np.uint8), {"dataset": "broken"},
            datasets=library.get,
        )  # fmt: skip
    assert refused.value.field == "params.dataset"
    # an uploaded zip of the same files is refused naming the file
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    client = idx_app.test_client()
    answer = client.post("/api/datasets", data={"file": (io.BytesIO(packed.getvalue()), f"{broken}.zip")})
    if broken == "a label past 9":  # the files are good IDX; only digits refuses the label
        assert answer.status_code == 201
        job = client.post(
            "/api/jobs",
            json={
                "method": "digits",
                "model": DEFAULT_MODEL_ID,
                "image": "chelsea",
                "params": {"dataset": answer.get_json()["id"]},
            },
        )
        assert job.status_code == 400 and job.get_json()["field"] == "params.dataset"
    else:
        assert answer.status_code == 400, answer.get_json()
        assert answer.get_json()["field"] == "file"


@pytest.mark.parametrize(
    "stream",
    [
        b"not gzip at all",  # no gzip header
        b"\x1f\x8b\x08\x00 a gzip header, then no deflate stream",
        gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 400)[:-12],  # cut short
    ],
)
def test_a_bad_gzip_stream_is_a_400_and_the_listing_names_the_broken_set(idx_app, idx_root, stream):
    folder = idx_root / "bad_gzip"
    write_set(folder, gzipped=("test_images",))
    (folder / f"{NAMES['test_images']}.gz").write_bytes(stream)
    client = idx_app.test_client()
    listed = {entry["id"]: entry for entry in client.get("/api/datasets").get_json()}
    assert "cannot be read" in listed["bad_gzip"]["error"]
    assert listed["mnist_like"]["count"] == 1797  # the other sets are still listed
    job = client.post(
        "/api/jobs",
        json={
            "method": "digits",
            "model": DEFAULT_MODEL_ID,
            "image": "chelsea",
            "params": {"dataset": "bad_gzip"},
        },
    )
    assert job.status_code == 400 and job.get_json()["field"] == "params.dataset"
    assert client.get("/api/datasets/bad_gzip").status_code == 400


def test_the_cli_lists_an_idx_folder_and_trains_on_it_and_refuses_a_broken_one(
    idx_root, tmp_path, models_dir, monkeypatch, capsys
):
    import json

    from convlens.cli import main

    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path / "data"))
    write_set(tmp_path / "sets" / "cut_short", gzipped=(), train_labels=idx_bytes(np.arange(TRAIN) % 10)[:-1])
    write_set(tmp_path / "sets" / "mnist_like")
    folders = ["--datasets-dir", str(tmp_path / "sets")]
    assert main(["datasets", *folders]) == 0
    listed = capsys.readouterr().out
    assert "mnist_like" in listed and "1797" in listed
    options = [*folders, "--models-dir", str(models_dir), "--image", "chelsea", "--quiet"]
    params = ["--param=epochs=1", "--param=hidden_units=16", "--param=layers=1"]
    run = ["run", "digits", *options, *params, "--dataset", "mnist_like", "--out", str(tmp_path / "run")]
    assert main(run) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["data"]["input_size"] == [28, 28] and list(result["data"]["nets"]) == ["one_layer"]
    assert result["models"] == ["run-one_layer.onnx", "run-one_layer.pt"]
    broken = ["run", "digits", *options, *params, "--dataset", "cut_short", "--out", str(tmp_path / "no")]
    assert main(broken) != 0
    assert "params.dataset" in capsys.readouterr().err
