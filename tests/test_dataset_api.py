"""Data sets through the API, the ``dataset`` parameter kind, the zip upload's bad classes, and the CLI."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from convlens.errors import BadInput
from convlens.events import Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.params import Dataset


def count_labels(ctx):
    """A throwaway method that reads its data set from ``ctx.datasets``."""
    dataset = ctx.datasets["dataset"]
    yield Result(
        data={"id": dataset.id, "count": len(dataset), "labels": Counter(i.label for i in dataset.items())}
    )


COUNT_LABELS = Method("count_labels", "Count labels", "Test", count_labels, params=(Dataset("dataset"),))


def png(value: int, size: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def upload(client, data: bytes, filename: str = "pets.zip"):
    return client.post("/api/datasets", data={"file": (io.BytesIO(data), filename)})


# -- listing, pages, thumbnails -------------------------------------------------------------------------------


def test_the_builtin_data_sets_are_listed(client):
    listed = {d["id"]: d for d in client.get("/api/datasets").get_json()}
    assert listed["digits"]["count"] == 1797 and listed["digits"]["labels"] == [str(d) for d in range(10)]
    assert listed["lfw_faces"]["labels"] == ["face", "non-face"]
    assert listed["skimage_crops"]["count"] == 3000


def test_a_page_of_items_carries_keys_labels_and_thumbnail_urls(client):
    from sklearn.datasets import load_digits

    answer = client.get("/api/datasets/digits?offset=10&limit=5").get_json()
    assert answer["count"] == 1797 and answer["offset"] == 10 and answer["limit"] == 5
    assert [item["index"] for item in answer["items"]] == list(range(10, 15))
    assert [item["label"] for item in answer["items"]] == [str(t) for t in load_digits().target[10:15]]
    thumbnail = client.get(answer["items"][0]["url"])
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/png"
    assert Image.open(io.BytesIO(thumbnail.data)).size == (32, 32)
    last = client.get("/api/datasets/digits?offset=1795").get_json()
    assert [item["index"] for item in last["items"]] == [1795, 1796]


def test_a_thumbnail_is_scaled_to_the_size_asked_for(client):
    answer = client.get("/api/datasets/skimage_crops/items/42?size=16")
    assert answer.status_code == 200
    assert Image.open(io.BytesIO(answer.data)).size == (16, 16)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=abc", "offset"),
        ("offset=-1", "offset"),
        ("offset=１", "offset"),
        ("offset=1798", "offset"),
        ("offset=" + "9" * 5000, "offset"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=2.5", "limit"),
    ],
)
def test_a_bad_page_is_a_400_naming_its_field(client, query, field):
    answer = client.get(f"/api/datasets/digits?{query}")
    assert answer.status_code == 400 and answer.get_json()["field"] == field


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/api/datasets/no_such_set", 404, "dataset"),
        ("/api/datasets/no_such_set/items/0", 404, "dataset"),
        ("/api/datasets/lfw_faces/items/200", 404, "index"),
        ("/api/datasets/lfw_faces/items/-1", 404, "index"),
        ("/api/datasets/lfw_faces/items/%EF%BC%91", 404, "index"),
        ("/api/datasets/lfw_faces/items/" + "1" * 400, 404, "index"),
        ("/api/datasets/lfw_faces/items/1?size=3", 400, "size"),
        ("/api/datasets/lfw_faces/items/1?size=99999", 400, "size"),
    ],
)
def test_unknown_sets_items_and_bad_sizes_name_their_field(client, path, status, field):
    answer = client.get(path)
    assert answer.status_code == status and answer.get_json()["field"] == field


# -- the parameter kind -----------------------------------------------------------------------------------------


def test_convlens_run_hands_the_method_its_data_set(convlens_run, tiny_model, sample_image):
    from sklearn.datasets import load_digits

    (result,) = convlens_run(COUNT_LABELS, tiny_model, sample_image, dataset="digits")
    assert result.data["count"] == 1797
    expected = Counter(str(t) for t in load_digits().target)
    assert result.data["labels"] == expected
    (default,) = convlens_run(COUNT_LABELS, tiny_model, sample_image)
    assert default.data["id"] == "skimage_crops"


@pytest.mark.parametrize("value", ["no_such_set", "", 7, None])
def test_convlens_run_refuses_an_unknown_data_set(convlens_run, tiny_model, sample_image, value):
    with pytest.raises(BadInput) as error:
        convlens_run(COUNT_LABELS, tiny_model, sample_image, dataset=value)
    assert error.value.field == "params.dataset"


def test_the_method_schema_says_dataset():
    assert Dataset("dataset").to_json()["type"] == "dataset"


@pytest.fixture
def counting_app(app, monkeypatch):
    """The session's app with the throwaway method registered (undone after the test)."""
    methods = app.extensions["convlens"].methods
    monkeypatch.setitem(methods.methods, COUNT_LABELS.name, COUNT_LABELS)
    monkeypatch.setitem(methods.plugin_of, COUNT_LABELS.name, "test")
    return app


def test_a_job_gets_its_data_set_and_an_unknown_one_is_a_400(counting_app, client):
    body = {"method": "count_labels", "model": DEFAULT_MODEL, "image": "chelsea"}
    refused = client.post("/api/jobs", json={**body, "params": {"dataset": "no_such_set"}})
    assert refused.status_code == 400, refused.get_json()
    assert refused.get_json()["field"] == "params.dataset"
    accepted = client.post("/api/jobs", json={**body, "params": {"dataset": "lfw_faces"}})
    assert accepted.status_code == 202, accepted.get_json()
    job = counting_app.extensions["convlens"].jobs.get(accepted.get_json()["id"])
    assert job.ended.wait(120)
    assert job.state == "done", job.error
    assert job.result["data"]["labels"] == {"face": 100, "non-face": 100}


# -- zip uploads ------------------------------------------------------------------------------------------------


def test_a_zip_of_class_folders_becomes_a_labelled_data_set(client, app_config):
    answer = upload(
        client, zip_of({"pets/cat/a.png": png(1), "pets/cat/b.png": png(2), "pets/dog/c.png": png(3)})
    )
    assert answer.status_code == 201, answer.get_json()
    dataset = answer.get_json()
    assert dataset["count"] == 3 and dataset["labels"] == ["cat", "dog"] and dataset["source"] == "upload"
    folder = app_config.dataset_uploads_dir / dataset["id"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "cat/a.png",
        "cat/b.png",
        "dog/c.png",
    ]
    assert dataset["id"] in {d["id"] for d in client.get("/api/datasets").get_json()}
    page = client.get(f"/api/datasets/{dataset['id']}").get_json()
    assert [item["label"] for item in page["items"]] == ["cat", "cat", "dog"]


def test_a_zip_with_non_images_lists_them(client):
    answer = upload(
        client,
        zip_of({"cat/a.png": png(5), "cat/readme.txt": b"hi", "dog/b.png": png(6), "__MACOSX/._a.png": b"x"}),
    )
    assert answer.status_code == 201, answer.get_json()
    assert [entry["key"] for entry in answer.get_json()["skipped"]] == ["cat/readme.txt"]


def tree(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.png", "climbs out"),
        ("cat/../../evil.png", "climbs out"),
        ("..\\evil.png", "climbs out"),
        ("/tmp/evil.png", "absolute"),
        ("C:/evil.png", "absolute"),
        ("C:\\evil.png", "absolute"),
        ("cat/\x01evil.png", "control characters"),
    ],
)
def test_a_member_that_would_land_outside_is_refused_by_name(client, app_config, member, why):
    before = tree(app_config.data_dir.parent)
    answer = upload(client, zip_of({"cat/good.png": png(1), member: png(2)}))
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == "file"
    assert why in answer.get_json()["error"] and repr(member)[1:-1] in answer.get_json()["error"]
    assert tree(app_config.data_dir.parent) == before


def test_a_symbolic_link_member_is_refused(client, app_config):
    before = tree(app_config.data_dir.parent)
    answer = upload(client, zip_of({"cat/a.png": png(1)}, symlinks={"cat/link.png": "/etc/passwd"}))
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "file" and "cat/link.png" in answer.get_json()["error"]
    assert tree(app_config.data_dir.parent) == before


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"PK\x03\x04 not really a zip", 400), (png(1), 400), (b"", 400), (zip_of({"a.txt": b"hi"}), 400)],
)
def test_what_is_not_a_zip_of_images_is_a_400_naming_file(client, data, status):
    answer = upload(client, data)
    assert answer.status_code == status and answer.get_json()["field"] == "file"


@pytest.fixture
def capped_client(models_dir, tmp_path):
    from convlens.app import create_app
    from convlens.config import Config

    config = Config(
        models_dirs=[models_dir],
        data_dir=tmp_path / "data",
        ensure_default_model=False,
        max_dataset_zip_bytes=200_000,
        max_dataset_members=5,
        max_dataset_unpacked_bytes=1_000_000,
    )
    return create_app(config).test_client(), tmp_path


def test_a_zip_bomb_is_a_413_and_nothing_is_unpacked(capped_client):
    client, root = capped_client
    bomb = zip_of({"cat/a.png": png(1), "cat/zeros.png": bytes(20_000_000)})
    assert len(bomb) < 200_000  # 20 MB of zeros deflate to ~20 kB
    answer = upload(client, bomb)
    assert answer.status_code == 413 and answer.get_json()["field"] == "file"
    job_records = root / "data" / "jobs.sqlite3"  # the app's own, made at its start, before any upload
    assert not [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(job_records.name)]


def test_too_many_members_or_bytes_is_a_413(capped_client):
    client, _ = capped_client
    many = upload(client, zip_of({f"cat/{i}.png": png(i) for i in range(6)}))
    assert many.status_code == 413 and many.get_json()["field"] == "file"
    noise = np.random.default_rng(0).integers(0, 255, 300_000, dtype=np.uint8).tobytes()
    big = upload(client, zip_of({"cat/a.png": png(1), "cat/noise.bin": noise}))
    assert big.status_code == 413 and big.get_json()["field"] == "file"


# -- the command line ---------------------------------------------------------------------------------------------


def test_the_cli_lists_data_sets_and_runs_a_method_on_one(models_dir, tmp_path, monkeypatch, capsys):
    from convlens import cli
    from convlens.plugins import get_methods

    monkeypatch.setitem(get_methods().methods, COUNT_LABELS.name, COUNT_LABELS)
    (tmp_path / "sets" / "pets" / "cat").mkdir(parents=True)
    (tmp_path / "sets" / "pets" / "cat" / "a.png").write_bytes(png(1))
    (tmp_path / "sets" / "pets" / "dog").mkdir()
    (tmp_path / "sets" / "pets" / "dog" / "b.png").write_bytes(png(2))
    common = ["--models-dir", str(models_dir), "--datasets-dir", str(tmp_path / "sets")]

    assert cli.main([*common, "datasets", "--json"]) == 0
    listed = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["pets"]["labels"] == ["cat", "dog"] and listed["digits"]["count"] == 1797

    out = tmp_path / "out"
    assert cli.main([*common, "run", "count_labels", "--dataset", "pets", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["params"] == {"dataset": "pets"} and result["data"]["labels"] == {"cat": 1, "dog": 1}

    capsys.readouterr()
    assert cli.main([*common, "run", "count_labels", "--dataset", "nope", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("convlens: error: params.dataset: unknown data set 'nope'")
    assert cli.main([*common, "run", "predict", "--dataset", "pets", "--out", str(out)]) == 2
    assert "convlens: error: dataset: method 'predict' takes no data set" in capsys.readouterr().err


def test_the_datasets_dirs_variable_adds_folders(tmp_path, monkeypatch):
    from convlens.app import build_dataset_library
    from convlens.config import Config
    from convlens.plugins import get_plugin_manager

    (tmp_path / "extra" / "shapes").mkdir(parents=True)
    (tmp_path / "extra" / "shapes" / "a.png").write_bytes(png(9))
    monkeypatch.setenv("CONVLENS_DATASETS_DIRS", str(tmp_path / "extra"))
    library = build_dataset_library(get_plugin_manager(), Config(data_dir=tmp_path / "data"))
    assert len(library.get("shapes")) == 1
    assert "shapes" in {d["id"] for d in library.list()}
