"""A finished job's result images as pictures for later runs: ``job:<job id>:<image name>``.

Through the API (the main picture, an ``image`` parameter such as ``apply_patch``'s ``patch``, ``GET
/api/images/<id>``) and the CLI. The pixels are checked against what the first run returned (a method of this
module that returns a seeded pattern) and, for a pasted patch, against numpy: the patch's pixels inside its
square, the picture resized to the model's input outside. Bad ids are 4xx naming the field, and nothing outside
the results folder is read.
"""

from __future__ import annotations

import io
import json
import threading
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from convlens.events import Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL

PATCH_SIDE = 16
INPUT = 224
PATTERN = np.random.default_rng(20).integers(0, 256, (PATCH_SIDE, PATCH_SIDE, 3), dtype=np.uint8)
"""What the ``pattern`` method returns as its result image ``pattern``."""
HANG_S = 120


def run_pattern(ctx):
    yield Result(images={"pattern": PATTERN, "seen": ctx.image})


PATTERN_METHOD = Method(name="pattern", title="Pattern", topic="tests", run=run_pattern)


def png(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.get_json()
    return np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"))


def ended(client, job_id: str) -> dict:
    job = client.application.extensions["convlens"].jobs.get(job_id)
    assert job.ended.wait(HANG_S), f"job {job_id} did not end (state {job.state})"
    return client.get(f"/api/jobs/{job_id}").get_json()


def run(client, method: str, image: str = "chelsea", **params) -> dict:
    answer = client.post(
        "/api/jobs", json={"method": method, "model": DEFAULT_MODEL, "image": image, "params": params}
    )
    assert answer.status_code == 202, answer.get_json()
    job = ended(client, answer.get_json()["id"])
    assert job["state"] == "done", job["error"]
    return job


@pytest.fixture
def pattern_job(client, extra_methods) -> str:
    """The id of a finished ``pattern`` job."""
    extra_methods(PATTERN_METHOD)
    return run(client, "pattern")["id"]


def test_a_result_image_is_served_and_becomes_a_jobs_picture_pixel_for_pixel(client, pattern_job):
    image_id = f"job:{pattern_job}:pattern"
    assert np.array_equal(png(client.get(f"/api/images/{quote(image_id)}")), PATTERN)
    second = run(client, "pattern", image=image_id)
    assert second["image"] == image_id
    seen = png(client.get(f"/api/jobs/{second['id']}/images/seen.png"))
    assert np.array_equal(seen, PATTERN)


def test_apply_patch_pastes_a_finished_jobs_image_as_its_patch(client, pattern_job):
    job = run(
        client,
        "apply_patch",
        patch=f"job:{pattern_job}:pattern",
        size=PATCH_SIDE,
        scale=1.0,
        x=0.5,
        y=0.5,
        rotation=0.0,
        shape="square",
    )
    patched = png(client.get(f"/api/jobs/{job['id']}/images/patched.png")).astype(np.int16)
    original = png(client.get(f"/api/images/chelsea?model={DEFAULT_MODEL}")).astype(np.int16)
    inside = np.zeros((INPUT, INPUT), dtype=bool)
    corner = INPUT // 2 - PATCH_SIDE // 2
    inside[corner : corner + PATCH_SIDE, corner : corner + PATCH_SIDE] = True
    assert np.abs(patched[inside].reshape(PATTERN.shape) - PATTERN).max() <= 1
    assert np.abs(patched[~inside] - original[~inside]).max() <= 1


BAD_IDS = [
    ("job:0123456789ab:pattern", 404, "no finished job"),
    ("job:../results:pattern", 400, "expected job:"),
    ("job:..:pattern", 400, "expected job:"),
    ("job:a/../../uploads:x", 400, "expected job:"),
    ("job:%2e%2e:pattern", 400, "expected job:"),
    ("job:" + "a" * 300 + ":pattern", 400, "at most 200 characters"),
    ("job:ａｂｃ:pattern", 400, "expected job:"),
    ("job:abc\u202e:pattern", 400, "expected job:"),
    ("job:abc\x00:pattern", 400, "expected job:"),
    ("job:abc\n:pattern", 400, "expected job:"),
    ("job:", 400, "expected job:"),
    ("job:abc", 400, "expected job:"),
    ("job:abc:", 400, "expected job:"),
]


@pytest.mark.parametrize(("image_id", "status", "reason"), BAD_IDS)
def test_a_bad_job_image_id_is_a_4xx_naming_the_field_that_gave_it(client, image_id, status, reason):
    main = client.post("/api/jobs", json={"method": "predict", "model": DEFAULT_MODEL, "image": image_id})
    patch = client.post(
        "/api/jobs",
        json={
            "method": "apply_patch",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"patch": image_id},
        },
    )
    for answer, field in ((main, "image"), (patch, "params.patch")):
        body = answer.get_json()
        assert 400 <= answer.status_code < 500, body
        assert body["field"] == field and reason in body["error"], body
    assert main.status_code == status and patch.status_code == 400
    if not any(
        c in image_id for c in "/\x00\n"
    ):  # a slash ends the path's segment, the others no client sends
        served = client.get(f"/api/images/{quote(image_id, safe='')}")
        assert served.status_code in (status, 404) and served.get_json()["field"] == "image"


def test_an_image_the_job_did_not_make_is_a_404_listing_those_it_did(client, pattern_job):
    answer = client.post(
        "/api/jobs", json={"method": "predict", "model": DEFAULT_MODEL, "image": f"job:{pattern_job}:patch"}
    )
    assert answer.status_code == 404
    assert answer.get_json() == {
        "error": f"job {pattern_job!r} made no result image 'patch'; its images: pattern, seen",
        "field": "image",
    }


def test_a_result_file_that_names_a_path_outside_its_folder_is_not_read(app, client):
    results = app.extensions["convlens"].config.results_dir
    outside = results.parent / "outside.png"
    Image.fromarray(PATTERN).save(outside)
    for job_id, filename in (("crafted1", "../../outside.png"), ("crafted2", str(outside))):
        (results / job_id).mkdir(parents=True, exist_ok=True)
        (results / job_id / "result.json").write_text(json.dumps({"files": {"patch": filename}}))
        answer = client.get(f"/api/images/job:{job_id}:patch")
        assert answer.status_code == 404 and answer.get_json()["field"] == "image", answer.get_json()


def test_a_job_still_running_is_a_409_and_its_image_serves_once_it_is_done(client, extra_methods):
    go = threading.Event()

    def run_held(ctx):
        assert go.wait(HANG_S), "hung: the test did not let the job go"
        yield Result(images={"pattern": PATTERN})

    extra_methods(Method(name="held_pattern", title="Held", topic="tests", run=run_held))
    answer = client.post(
        "/api/jobs", json={"method": "held_pattern", "model": DEFAULT_MODEL, "image": "chelsea"}
    )
    job_id = answer.get_json()["id"]
    try:
        as_picture = client.post(
            "/api/jobs", json={"method": "predict", "model": DEFAULT_MODEL, "image": f"job:{job_id}:pattern"}
        )
        as_patch = client.post(
            "/api/jobs",
            json={
                "method": "apply_patch",
                "model": DEFAULT_MODEL,
                "image": "chelsea",
                "params": {"patch": f"job:{job_id}:pattern"},
            },
        )
        # A parameter naming nothing usable is a 400, as for an unknown sample; the main picture says 409.
        for answer, status, field in ((as_picture, 409, "image"), (as_patch, 400, "params.patch")):
            assert answer.status_code == status and answer.get_json()["field"] == field, answer.get_json()
            assert (
                f"job {job_id!r} is running: its result images exist once it is done"
                in answer.get_json()["error"]
            )
    finally:
        go.set()
    assert ended(client, job_id)["state"] == "done"
    assert np.array_equal(png(client.get(f"/api/images/job:{job_id}:pattern")), PATTERN)


def test_a_failed_job_has_no_result_images(client, extra_methods):
    def run_broken(ctx):
        raise ValueError("broken on purpose")
        yield  # a generator

    extra_methods(Method(name="broken", title="Broken", topic="tests", run=run_broken))
    answer = client.post("/api/jobs", json={"method": "broken", "model": DEFAULT_MODEL, "image": "chelsea"})
    job_id = answer.get_json()["id"]
    assert ended(client, job_id)["state"] == "failed"
    served = client.get(f"/api/images/job:{job_id}:pattern")
    assert served.status_code == 404
    assert served.get_json()["error"].startswith(f"job {job_id!r} failed: it has no result images")


def test_the_cli_applies_a_patch_from_the_results_folder(tmp_path, monkeypatch, capsys, models_dir):
    from convlens import cli

    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "data" / "results" / "a1b2c3d4e5f6"
    folder.mkdir(parents=True)
    Image.fromarray(PATTERN).save(folder / "patch.png")
    (folder / "result.json").write_text(json.dumps({"files": {"patch": "patch.png"}}))
    out = tmp_path / "out"
    argv = ["--models-dir", str(models_dir), "run", "apply_patch", "--image", "chelsea", "--quiet"]
    options = ["--param", "size=16", "--param", "shape=square", "--out", str(out)]
    assert cli.main([*argv, "--param", "patch=job:a1b2c3d4e5f6:patch", *options]) == 0
    patched = np.asarray(Image.open(out / "patched.png").convert("RGB")).astype(np.int16)
    corner = INPUT // 2 - PATCH_SIDE // 2
    shown = patched[corner : corner + PATCH_SIDE, corner : corner + PATCH_SIDE]
    assert np.abs(shown - PATTERN).max() <= 1
    assert json.loads((out / "result.json").read_text())["params"]["patch"] == "job:a1b2c3d4e5f6:patch"

    capsys.readouterr()
    assert cli.main([*argv, "--param", "patch=job:a1b2c3d4e5f6:sticker", *options]) == cli.EXIT_BAD_INPUT
    assert "params.patch: job 'a1b2c3d4e5f6' made no result image 'sticker'" in capsys.readouterr().err
