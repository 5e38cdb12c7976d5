"""The gallery of runs: result hashes, run again, thumbnails, files deleted by hand, retention by count and bytes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_api import run_job, wait_for

from convlens.app import create_app
from convlens.config import Config
from convlens.errors import BadInput
from convlens.gallery import THUMBNAIL_SIDE, folder_bytes
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from local import free_port

SMOOTHGRAD = {"method": "smoothgrad", "params": {"samples": 4, "batch_size": 4}}
DREAM = {"method": "deepdream", "params": {"steps": 2, "octaves": 1}}
ATTACK = {"method": "adversarial_attack", "params": {"steps": 2, "attack": "pgd", "random_start": True}}


def again(client, job_id: str) -> dict:
    answer = client.post(f"/api/jobs/{job_id}/again")
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["again_of"] == job_id
    return wait_for(client, answer.get_json()["id"])


@pytest.mark.parametrize("request_", [SMOOTHGRAD, DREAM, ATTACK], ids=lambda r: r["method"])
def test_a_run_again_with_its_seed_hashes_the_same_and_another_seed_or_param_does_not(client, request_):
    method, params = request_["method"], request_["params"]
    first = run_job(client, method, params=params, seed=5)
    assert first["state"] == "done", first["error"]
    repeat = again(client, first["id"])
    assert repeat["state"] == "done" and repeat["seed"] == 5 and repeat["params"] == first["params"]
    assert repeat["result"]["sha256"] == first["result"]["sha256"]
    assert repeat["same_result"] is True
    other_seed = run_job(client, method, params=params, seed=6)
    assert other_seed["result"]["sha256"] != first["result"]["sha256"]
    name, value = next(iter(params.items()))
    other_param = run_job(client, method, params={**params, name: value + 1}, seed=5)
    assert other_param["result"]["sha256"] != first["result"]["sha256"]


def test_a_run_again_of_a_drawn_seed_uses_the_seed_it_ran_with(client):
    first = run_job(client, "deepdream", params=DREAM["params"])  # no seed: the server draws one
    time.sleep(1.1)  # so the two result.json's `written` differ: the hash must leave it out
    repeat = again(client, first["id"])
    assert repeat["seed"] == first["seed"] and repeat["same_result"] is True


def test_a_run_again_whose_first_result_was_changed_says_different(client, app):
    first = run_job(client, "deepdream", params=DREAM["params"], seed=2)
    # The first run's record keeps the hash it was written with: one that no run gives.
    jobs = app.extensions["convlens"].jobs
    record = jobs.store.records.load(first["id"])
    record["result"]["sha256"] = "0" * 64
    jobs.store.records.save(record)
    assert again(client, first["id"])["same_result"] is False


def test_run_again_of_a_job_whose_image_is_gone_names_the_image(client):
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture, "PNG")
    upload = client.post("/api/images", data={"file": (io.BytesIO(picture.getvalue()), "red.png")})
    image_id = upload.get_json()["id"]
    first = run_job(client, "saliency", image=image_id)
    assert client.delete(f"/api/images/{image_id}").status_code == 204
    answer = client.post(f"/api/jobs/{first['id']}/again")
    assert answer.status_code == 404 and answer.get_json()["field"] == "image"


def test_run_again_of_an_unknown_job_names_the_job(client):
    answer = client.post("/api/jobs/nosuchjob/again")
    assert answer.status_code == 404 and answer.get_json()["field"] == "job"


def test_the_thumbnail_is_a_small_png_of_the_result_and_is_kept(client, app):
    job = run_job(client, "saliency", seed=1)
    answer = client.get(f"/api/jobs/{job['id']}/thumbnail.png")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    picture = Image.open(io.BytesIO(answer.data))
    assert max(picture.size) == THUMBNAIL_SIDE
    assert np.asarray(picture.convert("RGB")).std() > 10  # a picture, not a flat placeholder
    folder = app.extensions["convlens"].jobs.results_dir / job["id"]
    assert (folder / "thumbnail.png").read_bytes() == answer.data


def gallery_entry(client, job_id: str) -> dict:
    runs = client.get("/api/gallery?limit=200").get_json()["runs"]
    return next(run for run in runs if run["id"] == job_id)


def test_a_run_whose_file_was_deleted_is_listed_missing_and_its_thumbnail_is_a_410(client, app):
    job = run_job(client, "saliency", seed=1)
    folder = app.extensions["convlens"].jobs.results_dir / job["id"]
    name = next(iter(job["result"]["files"].values()))
    (folder / name).unlink()
    entry = gallery_entry(client, job["id"])
    assert entry["missing"] == [name] and entry["thumbnail"]
    answer = client.get(entry["thumbnail"])
    assert answer.status_code == 410 and answer.get_json()["field"] == "thumbnail"


def test_a_damaged_picture_makes_the_thumbnail_a_410_even_after_one_was_kept(client, app):
    job = run_job(client, "saliency", seed=1)
    assert client.get(f"/api/jobs/{job['id']}/thumbnail.png").status_code == 200
    folder = app.extensions["convlens"].jobs.results_dir / job["id"]
    name = job["result"]["files"][next(iter(job["result"]["images"]))]
    (folder / name).write_bytes(b"not a png at all")
    answer = client.get(f"/api/jobs/{job['id']}/thumbnail.png")
    assert answer.status_code == 410 and answer.get_json()["field"] == "thumbnail"
    assert gallery_entry(client, job["id"])["missing"] == []


def test_a_run_whose_folder_was_deleted_lists_every_file_missing(client, app):
    job = run_job(client, "saliency", seed=1)
    shutil.rmtree(app.extensions["convlens"].jobs.results_dir / job["id"])
    entry = gallery_entry(client, job["id"])
    assert entry["missing"][0] == "result.json" and len(entry["missing"]) >= 2
    answer = client.get(entry["thumbnail"])
    assert answer.status_code == 410 and answer.get_json()["field"] == "thumbnail"


def test_the_gallery_pages_ended_runs_newest_first_with_what_they_ran(client):
    ids = [run_job(client, "saliency", seed=seed)["id"] for seed in (11, 12)]
    first = client.get("/api/gallery?limit=1").get_json()
    assert [run["id"] for run in first["runs"]] == [ids[1]]
    run = first["runs"][0]
    assert run["seed"] == 12 and run["method"] == "saliency" and run["model"] == DEFAULT_MODEL
    assert run["permalink"] == f"/#job={ids[1]}" and run["sha256"] and run["missing"] == []
    second = client.get(f"/api/gallery?limit=1&before={first['next']}").get_json()
    assert [run["id"] for run in second["runs"]] == [ids[0]]


@pytest.mark.parametrize(
    ("query", "field", "status"),
    [("limit=0", "limit", 400), ("limit=x", "limit", 400), ("before=nosuchjob", "before", 400)],
)
def test_bad_gallery_arguments_name_the_field(client, query, field, status):
    answer = client.get(f"/api/gallery?{query}")
    assert answer.status_code == status and answer.get_json()["field"] == field


@pytest.mark.parametrize("path", ["/api/jobs/nosuchjob/thumbnail.png", "/api/jobs/" + "x" * 300 + "/again"])
def test_unknown_jobs_name_the_job(client, path):
    answer = client.get(path) if path.endswith(".png") else client.post(path)
    assert answer.status_code == 404 and answer.get_json()["field"] == "job"


def serve(models_dir: Path, data_dir: Path, **limits):
    """An app over ``data_dir`` with retention ``limits``; its test client."""
    config = Config(models_dirs=[models_dir], data_dir=data_dir, **limits)
    return create_app(config).test_client()


def test_retention_by_count_keeps_the_newest_runs_as_they_end_and_at_start(models_dir, tmp_path):
    client = serve(models_dir, tmp_path, keep_runs=2)
    ids = [run_job(client, "saliency", seed=seed)["id"] for seed in (1, 2, 3)]
    results = tmp_path / "results"
    assert client.get(f"/api/jobs/{ids[0]}").status_code == 404
    assert not (results / ids[0]).exists()
    assert [run["id"] for run in client.get("/api/gallery").get_json()["runs"]] == ids[:0:-1]
    # Restarted with a lower limit on the same data folder: applied at once.
    restarted = serve(models_dir, tmp_path, keep_runs=1)
    assert [run["id"] for run in restarted.get("/api/gallery").get_json()["runs"]] == [ids[2]]
    assert sorted(path.name for path in results.iterdir()) == [ids[2]]


def test_retention_by_bytes_deletes_the_oldest_runs_past_the_total(models_dir, tmp_path):
    client = serve(models_dir, tmp_path)
    ids = [run_job(client, "deepdream", params=DREAM["params"], seed=seed)["id"] for seed in (1, 2, 3)]
    results = tmp_path / "results"
    sizes = [folder_bytes(results / job_id) for job_id in ids]
    assert min(sizes) > 10_000  # real folders: PNGs, a GIF, late frames
    restarted = serve(models_dir, tmp_path, keep_results_bytes=sizes[1] + sizes[2])
    assert [run["id"] for run in restarted.get("/api/gallery").get_json()["runs"]] == [ids[2], ids[1]]
    assert not (results / ids[0]).exists()
    # One more run: the total is over again, so the oldest left goes as it ends.
    newest = run_job(restarted, "deepdream", params=DREAM["params"], seed=4)["id"]
    kept = [run["id"] for run in restarted.get("/api/gallery").get_json()["runs"]]
    assert kept[0] == newest and ids[1] not in kept
    assert sum(folder_bytes(results / job_id) for job_id in kept) <= sizes[1] + sizes[2]


@pytest.mark.parametrize("variable", ["CONVLENS_KEEP_RUNS", "CONVLENS_KEEP_RESULTS_BYTES"])
@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_bad_retention_settings_name_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(BadInput) as error:
        Config()
    assert error.value.field == variable


def test_the_python_client_runs_a_job_again_and_reads_same_result(live_server):
    from convlens.client import Client

    first = Client(live_server).run("deepdream", params=DREAM["params"], seed=9)
    assert first.wait(timeout=240)["state"] == "done"
    repeat = first.again()
    ended = repeat.wait(timeout=240)
    assert ended["again_of"] == first.id and ended["same_result"] is True


def test_convlens_serve_refuses_a_negative_retention_naming_the_variable(tmp_path):
    environment = {**os.environ, "CONVLENS_KEEP_RESULTS_BYTES": "-3", "CONVLENS_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "convlens", "serve", "--port", str(free_port())]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "CONVLENS_KEEP_RESULTS_BYTES: expected a whole number of at least 0, got '-3'" in done.stderr


def test_retention_never_deletes_a_running_run(models_dir, tmp_path):
    client = serve(models_dir, tmp_path, keep_runs=1)
    jobs = client.application.extensions["convlens"].jobs
    long_run = client.post(
        "/api/jobs",
        json={"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": 500}},
    ).get_json()["id"]
    short = run_job(client, "saliency", seed=1)["id"]
    old = run_job(client, "saliency", seed=2)["id"]  # two ended runs past a limit of one: the older goes
    assert client.get(f"/api/jobs/{short}").status_code == 404
    assert jobs.store.records.load(long_run)["state"] in ("queued", "running")  # its record kept
    client.post(f"/api/jobs/{long_run}/stop")
    assert jobs.get(long_run).ended.wait(120)
    assert [run["id"] for run in client.get("/api/gallery").get_json()["runs"]] == [long_run]
    assert client.get(f"/api/jobs/{old}").status_code == 404


def test_run_again_of_a_job_not_yet_ended_is_a_409_naming_the_job(client, app):
    job_id = client.post(
        "/api/jobs",
        json={"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": 500}},
    ).get_json()["id"]
    answer = client.post(f"/api/jobs/{job_id}/again")
    client.post(f"/api/jobs/{job_id}/stop")
    assert app.extensions["convlens"].jobs.get(job_id).ended.wait(120)
    assert answer.status_code == 409 and answer.get_json()["field"] == "job"
