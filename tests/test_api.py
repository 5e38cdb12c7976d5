"""The JSON API through Flask's test client, on the real default model."""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pytest
from PIL import Image

from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL


def wait_for(client, job_id: str, timeout: float = 120.0) -> dict:
    """The job as the API answers once it has ended; ``timeout`` only guards against a hang."""
    job = client.application.extensions["convlens"].jobs.get(job_id)
    assert job.ended.wait(timeout), f"job {job_id} did not end within {timeout} s (state {job.state})"
    return client.get(f"/api/jobs/{job_id}").get_json()


def start_job(client, method: str, *, image: str = "chelsea", model: str = DEFAULT_MODEL, **body) -> str:
    """POST a job of ``method`` (``body``: ``params``, ``seed``); its id, once accepted."""
    answer = client.post("/api/jobs", json={"method": method, "model": model, "image": image, **body})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def run_job(client, method: str, **options) -> dict:
    """:func:`start_job`, then the job once it has ended."""
    return wait_for(client, start_job(client, method, **options))


def test_models_lists_the_default_model_in_three_formats(client):
    models = {m["id"]: m for m in client.get("/api/models").get_json()}
    for model_id, fmt in [
        ("efficientnet_lite0.onnx", "onnx"),
        ("efficientnet_lite0.pt", "torchscript"),
        ("efficientnet_lite0.pt2", "export"),
    ]:
        assert models[model_id]["format"] == fmt
        assert models[model_id]["num_classes"] == 1000
        assert models[model_id]["input_size"] == [224, 224]
        assert set(models[model_id]["capabilities"]) == {"gradients", "layers", "relu_rules"}


def test_model_detail_has_layers_and_hash(client, models_dir):
    detail = client.get(f"/api/models/{DEFAULT_MODEL}").get_json()
    names = [layer["name"] for layer in detail["layers"]]
    assert "_blocks.9" in names and "_head_act" in names
    assert detail["sha256"] == hashlib.sha256((models_dir / DEFAULT_MODEL).read_bytes()).hexdigest()
    labels = client.get(f"/api/models/{DEFAULT_MODEL}/labels").get_json()
    assert labels[285] == "Egyptian cat"


def test_methods_carry_parameter_schemas(client):
    methods = {m["name"]: m for m in client.get(f"/api/methods?model={DEFAULT_MODEL}").get_json()}
    assert {"predict", "saliency", "deepdream"} <= set(methods)
    deepdream = methods["deepdream"]
    assert deepdream["unavailable"] is None
    assert deepdream["plugin"] == "optimisation"
    params = {p["name"]: p for p in deepdream["params"]}
    assert params["layer"]["type"] == "layer"
    assert params["steps"]["type"] == "int" and params["steps"]["minimum"] >= 1


def test_sample_images_are_served_as_png(client):
    images = {image["id"]: image for image in client.get("/api/images").get_json()}
    assert "chelsea" in images
    answer = client.get(images["chelsea"]["url"])
    assert answer.mimetype == "image/png"
    assert Image.open(io.BytesIO(answer.data)).size == (451, 300)


def test_predict_job_finds_the_cat(client, models_dir):
    job = run_job(client, "predict")
    assert job["state"] == "done", job["error"]
    assert job["predictions"][0]["label"] == "Egyptian cat"
    result = client.get(f"/api/jobs/{job['id']}/result").get_json()
    assert result["model"]["sha256"] == hashlib.sha256((models_dir / DEFAULT_MODEL).read_bytes()).hexdigest()
    assert result["method"] == "predict" and result["image"] == "chelsea"


def test_saliency_job_writes_a_heatmap(client):
    job = run_job(client, "saliency", model="efficientnet_lite0.pt2", seed=3)
    assert job["state"] == "done", job["error"]
    assert job["result"]["seed"] == 3
    array = client.get(job["result"]["array_urls"]["gradient_map"])
    assert array.status_code == 200
    gradient_map = np.load(io.BytesIO(array.data))
    assert gradient_map.shape == (224, 224) and gradient_map.max() > 0
    for url in job["result"]["images"].values():
        picture = client.get(url)
        assert picture.status_code == 200
        pixels = np.asarray(Image.open(io.BytesIO(picture.data)))
        assert pixels.std() > 1.0, "a heatmap is not flat"


def test_uploaded_image_can_be_used_by_a_job(client):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    answer = client.post("/api/images", data={"file": (io.BytesIO(buffer.getvalue()), "noise.png")})
    assert answer.status_code == 201, answer.get_json()
    upload = answer.get_json()
    assert (upload["width"], upload["height"]) == (80, 64)
    assert upload["id"] in {image["id"] for image in client.get("/api/images").get_json()}
    assert run_job(client, "predict", image=upload["id"])["state"] == "done"


def test_stop_ends_a_running_job(app, client, monkeypatch):
    sink = app.extensions["convlens"].jobs.sink
    sent_a_frame: dict[str, threading.Event] = {}
    send_frame = sink.frame

    def send_and_tell(job, frame):
        send_frame(job, frame)
        sent_a_frame.setdefault(job.id, threading.Event()).set()

    monkeypatch.setattr(sink, "frame", send_and_tell)
    job_id = start_job(client, "deepdream", params={"steps": 200, "octaves": 1})
    assert sent_a_frame.setdefault(job_id, threading.Event()).wait(60), "the job sent no frame in 60 s"
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200
    job = wait_for(client, job_id)
    assert job["state"] == "stopped"
    assert job["frames"] < 200
    assert client.get(f"/api/jobs/{job_id}/frames/latest").mimetype == "image/jpeg"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"method": "predict", "model": "nope.onnx", "image": "chelsea"}, 404, "model"),
        ({"method": "nope", "model": DEFAULT_MODEL, "image": "chelsea"}, 404, "method"),
        ({"method": "predict", "model": DEFAULT_MODEL, "image": "nope"}, 404, "image"),
        ({"method": "predict", "model": DEFAULT_MODEL}, 400, "image"),
        ({"model": DEFAULT_MODEL, "image": "chelsea"}, 400, "method"),
        (
            {
                "method": "deepdream",
                "model": DEFAULT_MODEL,
                "image": "chelsea",
                "params": {"layer": "no_such"},
            },
            400,
            "params.layer",
        ),
        (
            {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": "ten"}},
            400,
            "params.steps",
        ),
        (
            {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": 0}},
            400,
            "params.steps",
        ),
        (
            {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"steps": 10**9}},
            400,
            "params.steps",
        ),
        (
            {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"lr": True}},
            400,
            "params.lr",
        ),
        (
            {"method": "deepdream", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"bogus": 1}},
            400,
            "params.bogus",
        ),
        (
            {"method": "saliency", "model": DEFAULT_MODEL, "image": "chelsea", "params": {"target": 1000}},
            400,
            "params.target",
        ),
        *[
            (
                {
                    "method": method,
                    "model": DEFAULT_MODEL,
                    "image": "chelsea",
                    "params": {"layer": "_blocks.9", "channel": 112},  # it has 112
                },
                400,
                "params.channel",
            )
            for method in ("activation_max", "deepdream", "guided_backprop")
        ],
        ({"method": "predict", "model": DEFAULT_MODEL, "image": "chelsea", "seed": -1}, 400, "seed"),
        ({"method": "predict", "model": DEFAULT_MODEL, "image": "chelsea", "params": [1]}, 400, "params"),
        ([1, 2], 400, "body"),
    ],
)
def test_bad_job_requests_name_the_field(client, body, status, field):
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == status
    assert answer.get_json()["field"] == field
    assert answer.get_json()["error"]


def test_non_json_job_request_is_refused(client):
    answer = client.post("/api/jobs", data="method=predict", content_type="text/plain")
    assert answer.status_code == 400 and answer.get_json()["field"] == "body"


def test_a_job_request_nested_past_the_parsers_depth_is_a_400_naming_the_body(client):
    answer = client.post("/api/jobs", data="[" * 5000 + "]" * 5000, content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["field"] == "body"
    assert client.get("/api/jobs").status_code == 200


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"this is not an image at all", 400, "not an image"),
        (png_bytes(300, 200)[:120], 400, "truncated"),
        (b"", 400, "empty"),
    ],
)
def test_bad_uploads_are_refused(client, payload, status, reason):
    answer = client.post("/api/images", data={"file": (io.BytesIO(payload), "upload.png")})
    assert answer.status_code == status
    assert answer.get_json()["field"] == "file"
    assert reason in answer.get_json()["error"]


def test_decompression_bomb_is_refused(client):
    # A 10000x10000 single-colour PNG is ~100 kB on disk and 300 MB in memory.
    answer = client.post("/api/images", data={"file": (io.BytesIO(png_bytes(10_000, 10_000)), "bomb.png")})
    assert answer.status_code == 413
    assert answer.get_json()["field"] == "file"


def test_upload_over_the_configured_cap_is_refused(models_dir, tmp_path):
    from convlens.app import create_app
    from convlens.config import Config

    small = create_app(Config(models_dirs=[models_dir], data_dir=tmp_path, max_upload_bytes=50_000))
    payload = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(payload).save(buffer, "PNG")
    answer = small.test_client().post(
        "/api/images", data={"file": (io.BytesIO(buffer.getvalue()), "big.png")}
    )
    assert answer.status_code == 413
    assert answer.get_json()["field"] == "file"


def test_a_picture_over_the_configured_pixel_cap_is_refused(models_dir, tmp_path):
    # Any picture a run takes (the image, a style, a guide) is uploaded here first.
    from convlens.app import create_app
    from convlens.config import Config

    capped = create_app(
        Config(models_dirs=[models_dir], data_dir=tmp_path, max_pixels=100 * 100)
    ).test_client()
    answer = capped.post("/api/images", data={"file": (io.BytesIO(png_bytes(200, 200)), "style.png")})
    assert answer.status_code == 413
    assert answer.get_json()["field"] == "file" and "10000" in answer.get_json()["error"]
    fits = capped.post("/api/images", data={"file": (io.BytesIO(png_bytes(100, 100)), "style.png")})
    assert fits.status_code == 201, fits.get_json()


def test_missing_file_field_and_unknown_endpoints(client):
    assert client.post("/api/images", data={}).get_json()["field"] == "file"
    answer = client.get("/api/nothing-here")
    assert answer.status_code == 404 and answer.is_json
    assert client.get("/api/jobs/doesnotexist").get_json()["field"] == "job"
    assert client.get("/api/models").status_code == 200, "the server stays up after bad input"


def test_a_broken_model_file_is_listed_with_its_error(models_dir, tmp_path):
    from convlens.app import create_app
    from convlens.config import Config

    mixed = tmp_path / "models"
    mixed.mkdir()
    (mixed / "broken.onnx").write_bytes(b"not a model")
    for name in ("efficientnet_lite0.onnx", "efficientnet_lite0.json", "imagenet_classes.txt"):
        (mixed / name).symlink_to(models_dir / name)
    app = create_app(Config(models_dirs=[mixed], data_dir=tmp_path / "data", ensure_default_model=False))
    listing = {m["id"]: m for m in app.test_client().get("/api/models").get_json()}
    assert listing["broken.onnx"]["error"]
    assert listing["efficientnet_lite0.onnx"]["num_classes"] == 1000
    answer = app.test_client().post(
        "/api/jobs", json={"method": "predict", "model": "broken.onnx", "image": "chelsea"}
    )
    assert answer.status_code == 400 and answer.get_json()["field"] == "model"


def test_predict_endpoint_gives_the_top_classes_of_an_image(client):
    answer = client.get(f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea")
    assert answer.status_code == 200, answer.get_json()
    top = answer.get_json()
    assert len(top) == 5
    assert (top[0]["index"], top[0]["label"]) == (285, "Egyptian cat")
    probabilities = [entry["probability"] for entry in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    three = client.get(f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=3").get_json()
    assert [entry["index"] for entry in three] == [entry["index"] for entry in top[:3]]


def test_predict_endpoint_agrees_with_a_predict_job(client):
    finished = run_job(client, "predict", image="coffee")
    quick = client.get(f"/api/models/{DEFAULT_MODEL}/predict?image=coffee").get_json()
    assert [p["index"] for p in quick] == [p["index"] for p in finished["predictions"]]
    for mine, theirs in zip(quick, finished["predictions"], strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"], rel=1e-5)


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("/api/models/nope.onnx/predict?image=chelsea", 404, "model"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=nope", 404, "image"),
        (f"/api/models/{DEFAULT_MODEL}/predict", 400, "image"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=five", 400, "k"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=0", 400, "k"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=-1", 400, "k"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=1001", 400, "k"),
        (f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=2.5", 400, "k"),
        ("/api/colormaps/jet", 404, "colormap"),
        ("/api/images/chelsea?model=nope.onnx", 404, "model"),
    ],
)
def test_bad_predict_colormap_and_image_queries_name_the_field(client, query, status, field):
    answer = client.get(query)
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["field"] == field
    assert answer.get_json()["error"]


def test_predict_accepts_every_k_up_to_the_number_of_classes(client):
    everything = client.get(f"/api/models/{DEFAULT_MODEL}/predict?image=chelsea&k=1000").get_json()
    assert sorted(entry["index"] for entry in everything) == list(range(1000))
    assert sum(entry["probability"] for entry in everything) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["inferno", "grey"])
def test_colormap_endpoint_serves_the_server_table(client, name):
    from convlens.colormaps import colormap

    answer = client.get(f"/api/colormaps/{name}")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["name"] == name
    colours = np.array(body["colors"])
    assert colours.shape == (256, 3) and colours.dtype.kind == "i"
    np.testing.assert_array_equal(colours, np.floor(colormap(name).astype(np.float64) * 255 + 0.5))


def test_image_resized_to_a_model_input_is_what_a_job_sees(client):
    from convlens.images import resize

    answer = client.get(f"/api/images/chelsea?model={DEFAULT_MODEL}")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"))
    assert pixels.shape == (224, 224, 3)
    original = np.asarray(Image.open(io.BytesIO(client.get("/api/images/chelsea").data)).convert("RGB"))
    expected = np.floor(resize(original, (224, 224)) * 255 + 0.5)
    np.testing.assert_array_equal(pixels, expected)


def test_a_job_with_an_unknown_image_parameter_is_refused_when_requested(client):
    answer = client.post(
        "/api/jobs",
        json={
            "method": "style_transfer",
            "model": DEFAULT_MODEL,
            "image": "chelsea",
            "params": {"style": "no-such-picture"},
        },
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "params.style"
    styles = {m["name"]: m for m in client.get("/api/methods").get_json()}["style_transfer"]["params"]
    assert next(p for p in styles if p["name"] == "style")["type"] == "image"


def test_a_run_with_frames_downloads_as_webm_with_every_frame(client, tmp_path):
    import subprocess

    import imageio_ffmpeg

    job = run_job(client, "deepdream", params={"layer": "_blocks.2", "octaves": 1, "steps": 7, "jitter": 0})
    assert job["state"] == "done", job["error"]
    video = client.get(f"/api/jobs/{job['id']}/frames.webm")
    assert video.status_code == 200 and video.mimetype == "video/webm"
    assert video.data[:4] == b"\x1a\x45\xdf\xa3"  # the EBML header every WebM starts with
    path = tmp_path / "frames.webm"
    path.write_bytes(video.data)
    # Decoded by ffmpeg itself: as many frames as the GIF (the job's 7 steps), at the GIF's size rounded to even.
    decoded = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-i",
            str(path),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    )
    gif = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/frames.gif").data))
    width, height = gif.size[0] + gif.size[0] % 2, gif.size[1] + gif.size[1] % 2
    assert len(decoded.stdout) == gif.n_frames * width * height * 3
    assert gif.n_frames == 7
    # The second request sends the same file, not a new encoding.
    assert client.get(f"/api/jobs/{job['id']}/frames.webm").data == video.data


def test_a_run_without_frames_has_no_webm(client):
    job = run_job(client, "predict")
    missing = client.get(f"/api/jobs/{job['id']}/frames.webm")
    assert missing.status_code == 404 and missing.get_json()["field"] == "animation"


def test_the_photos_lead_the_image_list_and_the_style_textures_follow(client):
    ids = [image["id"] for image in client.get("/api/images").get_json()]
    assert ids[0] == "chelsea"  # the page selects the first image by default
    assert {"brick", "grass"} <= set(ids) and ids.index("brick") > ids.index("immunohistochemistry")


def test_a_long_runs_gif_spans_the_whole_run_evenly(client, monkeypatch):
    # A run keeps every frame for its GIF up to a limit, then every other one, and so on. The same seeded
    # run with a limit of four frames gives the 1st, 3rd, 5th and 7th of its seven frames, the last included.
    import convlens.results

    params = {"layer": "_blocks.2", "octaves": 1, "steps": 7, "jitter": 0, "lr": 0.2}

    def gif_frames() -> list[np.ndarray]:
        job = run_job(client, "deepdream", params=params, seed=0)
        assert job["state"] == "done", job["error"]
        assert job["frames"] == 7
        gif = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/frames.gif").data))
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
        return frames

    every = gif_frames()
    monkeypatch.setattr(convlens.results, "REEL_FRAMES", 4)
    thinned = gif_frames()
    assert len(every) == 7 and len(thinned) == 4
    assert all(np.array_equal(a, b) for a, b in zip(thinned, every[::2], strict=True))
    assert not np.array_equal(every[0], every[-1])


@pytest.mark.parametrize("labels", [("a", "b", "a"), ("a", "a", "b"), ("b", "a")])
def test_the_latest_frame_is_the_newest_of_any_label(client, extra_methods, labels):
    """The frames are red, green, blue (the last ones of that list): blue, the newest, whatever its label."""
    from convlens.events import Frame, Result
    from convlens.methods import Method

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)][-len(labels) :]

    def run_colours(ctx):
        for step, (label, colour) in enumerate(zip(labels, colours, strict=True)):
            yield Frame(np.full((16, 16, 3), colour, dtype=np.uint8), step=step, label=label)
        yield Result()

    extra_methods(Method(name="colours", title="Colours", topic="Tests", run=run_colours))
    job = run_job(client, "colours")
    assert job["state"] == "done"
    answer = client.get(f"/api/jobs/{job['id']}/frames/latest")
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg"
    pixels = np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"), dtype=np.float64)
    assert np.abs(pixels.mean(axis=(0, 1)) - (0, 0, 255)).max() < 12, pixels.mean(axis=(0, 1))
