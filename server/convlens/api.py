"""The JSON API. Every error is a 4xx body ``{"error": reason, "field": name}``."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, current_app, jsonify, request, send_file
from PIL import Image
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import asyncapi, atlas, colormaps, gallery, openapi
from .auth import client_id
from .errors import BadInput, NotFound
from .events import to_uint8
from .images import resize, to_tensor
from .openapi import MAX_ID
from .params import plain_int
from .pixel_arrays import pixels_from_json
from .plugin_info import describe_plugins
from .upload_owners import upload_name

log = logging.getLogger(__name__)
blueprint = Blueprint("api", __name__, url_prefix="/api")


def services():
    return current_app.extensions["convlens"]


@blueprint.errorhandler(BadInput)
def bad_input(error: BadInput):
    return jsonify(error.to_json()), error.status


@blueprint.errorhandler(RequestEntityTooLarge)
def too_large(_error):
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return jsonify({"error": f"the request is larger than the {limit}-byte limit", "field": "file"}), 413


@blueprint.errorhandler(HTTPException)
def http_error(error: HTTPException):
    return jsonify({"error": error.description, "field": None}), error.code


@blueprint.errorhandler(Exception)
def unexpected(error: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify({"error": f"internal error: {type(error).__name__}", "field": None}), 500


ID_FIELDS = {"model_id": "model", "image_id": "image", "dataset_id": "dataset", "job_id": "job"}


@blueprint.url_value_preprocessor
def _capped_path_values(_endpoint: str | None, values: dict | None) -> None:
    """Every id or name in a path is at most a file name long, checked before anything looks it up."""
    for name, value in (values or {}).items():
        if isinstance(value, str) and len(value) > MAX_ID:
            field = ID_FIELDS.get(name, name)
            raise NotFound(field, f"no {field} has an id of {len(value)} characters (at most {MAX_ID})")


def _json_object() -> dict:
    """The request's JSON body, an object; ``BadInput`` naming ``body`` (or ``params``) when it is not one."""
    if not request.is_json:
        raise BadInput("body", "expected a JSON object (Content-Type: application/json)")
    try:
        body = json.loads(request.get_data())
    except RecursionError:  # not a ValueError: it was a 500
        raise BadInput("body", "the JSON is nested too deeply") from None
    except ValueError as error:  # also integers of over 4,300 digits, and bytes that are not UTF-8
        raise BadInput("body", f"not valid JSON: {str(error)[:200]}") from None
    if not isinstance(body, dict):
        raise BadInput("body", f"expected a JSON object, got {type(body).__name__}")
    if body.get("params") is not None and not isinstance(body["params"], dict):
        raise BadInput(
            "params", f"expected an object of parameter values, got {type(body['params']).__name__}"
        )
    return body


@blueprint.get("/openapi.json")
def openapi_document():
    """This API's OpenAPI 3.1 document."""
    return jsonify(openapi.document(current_app))


@blueprint.get("/asyncapi.json")
def asyncapi_document():
    """The AsyncAPI 2.6 document of the Socket.IO events, a JSON schema per payload."""
    return jsonify(asyncapi.document())


@blueprint.get("/models")
def list_models():
    """Every model file; one that fails to load is listed with its ``error`` rather than hiding the rest."""
    store = services().models
    listing = []
    for model_id in store.ids():
        try:
            listing.append({**store.get(model_id).to_json(), "default": model_id == store.default_id})
        except BadInput as error:
            listing.append({"id": model_id, "title": model_id, "error": error.reason})
    return jsonify(listing)


@blueprint.get("/models/<path:model_id>/labels")
def model_labels(model_id: str):
    return jsonify(services().models.get(model_id).labels)


@blueprint.get("/models/<path:model_id>")
def model_detail(model_id: str):
    model = services().models.get(model_id)
    return jsonify({**model.to_json(with_layers=True), "sha256": model.sha256})


@blueprint.get("/models/<path:model_id>/predict")
def model_predict(model_id: str):
    """Top-``k`` classes (``?k=``, default 5) of ``?image=`` resized to the model's input, as a job sees it."""
    svc = services()
    model = svc.models.get(model_id)
    image_id = request.args.get("image")
    if not image_id:
        raise BadInput("image", "give the image id as ?image=<id>")
    pixels = svc.images.get(image_id)
    k = _int_arg("k", 5, 1, len(model.labels))
    return jsonify(model.predict(to_tensor(pixels, model.input_size), k=k))


@blueprint.post("/models/<path:model_id>/predict")
def model_predict_pixels(model_id: str):
    """Top-``k`` classes (default 5) of a picture sent as numbers: ``{"pixels": H×W or H×W×3 in [0, 1], "k"}``,
    exactly the model's input size (a digit drawn for a net a job trained)."""
    model = services().models.get(model_id)
    body = _json_object()
    k = body.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(model.labels):
        small = isinstance(k, (str, float)) or (isinstance(k, int) and abs(k) < 10**9)
        shown = repr(k)[:40] if small else type(k).__name__  # not str() of a 5,000-digit integer
        raise BadInput("k", f"expected an integer from 1 to {len(model.labels)}, got {shown}")
    if "pixels" not in body:
        raise BadInput("pixels", "give the picture as pixels: an H×W array of numbers in [0, 1]")
    image = pixels_from_json(body["pixels"], "pixels", model.input_size)
    return jsonify(model.predict(to_tensor(image), k=k))


@blueprint.get("/colormaps/<name>")
def colormap_table(name: str):
    """The 256 colours of a colour map as 0-255 RGB, rounded as the server's PNGs round them."""
    if name not in colormaps.NAMES:
        raise NotFound("colormap", f"unknown colour map {name!r}; expected one of {list(colormaps.NAMES)}")
    table = to_uint8(colormaps.colormap(name)[None])[0]
    return jsonify({"name": name, "colors": table.tolist()})


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    """The query argument ``name`` as an integer from ``minimum`` to ``maximum``; ``default`` when absent."""
    text = request.args.get(name)
    if text is None:
        return default
    value = plain_int(text.strip())
    if value is None or not minimum <= value <= maximum:
        raise BadInput(name, f"expected an integer from {minimum} to {maximum}, got {text!r:.40}")
    return value


@blueprint.get("/methods")
def list_methods():
    svc = services()
    model_id = request.args.get("model")
    model = svc.models.get(model_id) if model_id else None
    answer = []
    for method in svc.methods:
        entry = {**method.to_json(), "plugin": svc.methods.plugin_of[method.name]}
        if model is not None:
            entry["unavailable"] = method.unavailable_reason(model)
        answer.append(entry)
    return jsonify(answer)


@blueprint.get("/plugins")
def list_plugins():
    """Every loaded plugin: its distribution and version, what it offers and what it declares it supports."""
    registry = services().methods
    return jsonify(describe_plugins(registry.pm, registry))


@blueprint.get("/images")
def list_images():
    """The samples and the requesting client's own uploads (:func:`convlens.auth.client_id`)."""
    return jsonify(services().images.list(client_id()))


@blueprint.get("/images/<image_id>")
def image_file(image_id: str):
    """The image as PNG; ``?size=N`` scales it to fit in NxN (thumbnails); ``?model=<id>`` resizes it to that
    model's input exactly as a job does, so a map can be laid over the very picture it was computed on."""
    size = _int_arg("size", 0, 8, 4096)  # 0: no ?size=, the picture as it is
    model_id = request.args.get("model")
    if model_id is not None:
        pixels = to_uint8(resize(services().images.get(image_id), services().models.get(model_id).input_size))
        return _png(pixels, size)
    png = services().images.png(image_id, size)  # an upload's own file, or encoded once and cached
    return send_file(png if isinstance(png, Path) else io.BytesIO(png), mimetype="image/png", max_age=3600)


@blueprint.post("/images")
def upload_image():
    upload = request.files.get("file")
    if upload is None:
        raise BadInput("file", "send the image as multipart form data in a field named 'file'")
    image_id, pixels = services().images.add_upload(upload.read(), client_id(), upload.filename)
    height, width = pixels.shape[:2]
    title = upload_name(upload.filename, image_id)
    return jsonify(
        {"id": image_id, "title": title, "width": width, "height": height, "url": f"/api/images/{image_id}"}
    ), 201


@blueprint.delete("/images/<image_id>")
def delete_image(image_id: str):
    """The requesting client's upload leaves its list (the file goes with its last owner) → 204."""
    services().images.delete_upload(image_id, client_id())
    return "", 204


@blueprint.get("/datasets")
def list_datasets():
    return jsonify(services().datasets.list())


@blueprint.post("/datasets")
def upload_dataset():
    """A zip of images (multipart field ``file``) unpacked into the uploads folder → 201 and the data set."""
    upload = request.files.get("file")
    if upload is None:
        raise BadInput("file", "send the zip as multipart form data in a field named 'file'")
    dataset = services().datasets.add_zip(upload.read(), upload.filename or "")
    return jsonify({**dataset.to_json(), "skipped": dataset.skipped()}), 201


MAX_PAGE = 1000


@blueprint.get("/datasets/<dataset_id>")
def dataset_detail(dataset_id: str):
    """The data set's count, labels and skipped files, and a page of its items (``?offset=``, ``?limit=``)."""
    dataset = services().datasets.get(dataset_id)
    items = dataset.items()
    offset = _int_arg("offset", 0, 0, len(items))
    limit = _int_arg("limit", 100, 1, MAX_PAGE)
    base = f"/api/datasets/{quote(dataset.id, safe='')}/items"
    page = [
        {"index": index, "key": item.key, "label": item.label, "url": f"{base}/{index}"}
        for index, item in enumerate(items[offset : offset + limit], start=offset)
    ]
    return jsonify(
        {**dataset.to_json(), "skipped": dataset.skipped(), "offset": offset, "limit": limit, "items": page}
    )


@blueprint.get("/datasets/<dataset_id>/items/<index>")
def dataset_item(dataset_id: str, index: str):
    """Item ``index`` as PNG, scaled down to fit ``?size=N`` × N when given (thumbnails)."""
    dataset = services().datasets.get(dataset_id)
    position = plain_int(index)
    if position is None or position >= len(dataset):
        raise NotFound(
            "index", f"data set {dataset.id!r} has items 0 to {len(dataset) - 1}, not {index[:40]!r}"
        )
    size = _int_arg("size", 0, 8, 4096)
    return _png(dataset.load(position), size)


@blueprint.get("/datasets/<dataset_id>/atlas")
def dataset_atlas(dataset_id: str):
    """A PNG sprite sheet of items ``offset`` to ``offset + limit`` (:mod:`convlens.atlas`), each fitted into
    ``size`` x ``size``; its layout in the ``X-Atlas-Columns``, ``X-Atlas-Count`` headers and ``atlas.json``."""
    data, where = _atlas(dataset_id)
    answer = send_file(io.BytesIO(data), mimetype="image/png", max_age=3600)
    answer.headers["X-Atlas-Columns"] = str(where["columns"])
    answer.headers["X-Atlas-Count"] = str(where["count"])
    answer.headers["Access-Control-Expose-Headers"] = "X-Atlas-Columns, X-Atlas-Count"
    return answer


@blueprint.get("/datasets/<dataset_id>/atlas.json")
def dataset_atlas_layout(dataset_id: str):
    """The layout of the same request's atlas: ``columns``, ``rows``, ``count``, ``total``, each item's label."""
    dataset = services().datasets.get(dataset_id)
    return jsonify(atlas.layout(dataset, *_atlas_args(dataset)))


def _atlas_args(dataset) -> tuple[int, int, int]:
    total = len(dataset)
    return (
        _int_arg("size", 32, 8, 128),
        _int_arg("offset", 0, 0, max(0, total - 1)),
        _int_arg("limit", atlas.MAX_ITEMS, 1, atlas.MAX_ITEMS),
    )


def _atlas(dataset_id: str):
    dataset = services().datasets.get(dataset_id)
    cache = current_app.extensions.setdefault("convlens_atlases", atlas.AtlasCache())
    return cache.png(dataset, *_atlas_args(dataset))


def _png(pixels, size: int = 0):
    """HxWx3 uint8 as a PNG answer, scaled down to fit ``size``×``size`` when ``size`` is given."""
    picture = Image.fromarray(pixels)
    if size:
        picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    buffer.seek(0)
    return send_file(buffer, mimetype="image/png", max_age=3600)


@blueprint.post("/jobs")
def start_job():
    body = _json_object()
    job = services().jobs.submit(body, client=client_id())
    return jsonify(job.to_json()), 202


MAX_JOBS_PAGE = openapi.MAX_JOBS_PAGE


@blueprint.get("/jobs")
def list_jobs():
    """A page of the requesting client's job summaries, newest first (``?limit=``, default 50, at most 200), and
    ``total``, the number of its jobs; ``next`` is the cursor of the page after (``?before=<next>``), ``null`` on
    the last page. Anyone with a job's id reads it whole at ``GET /api/jobs/<id>`` (a link shares it)."""
    limit = _int_arg("limit", 50, 1, MAX_JOBS_PAGE)
    before = request.args.get("before") or None
    owner = client_id()
    try:
        page = services().jobs.page(limit + 1, before, owner)
    except KeyError:
        raise BadInput("before", f"no job {before[:40]!r} to list the jobs before") from None
    following = page[limit - 1]["id"] if len(page) > limit else None
    total = services().jobs.count(owner)
    return jsonify({"jobs": page[:limit], "next": following, "total": total})


@blueprint.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """The requesting client's ended job goes, its record and its results folder → 204."""
    services().jobs.delete(job_id, client_id())
    return "", 204


@blueprint.get("/jobs/<job_id>")
def job_detail(job_id: str):
    return jsonify(services().jobs.get(job_id).to_json())


def _result_file(job, filename: str, field: str):
    """The path of a file of ``job``'s results folder; a 410 naming ``field`` when it was deleted by hand."""
    path = services().jobs.results_dir / job.id / filename
    if not path.is_file():
        reason = f"the file {filename!r} of job {job.id!r} was deleted from the results folder"
        raise BadInput(field, reason, status=410)
    return path


@blueprint.get("/gallery")
def gallery_page():
    """A page of the requesting client's ended runs, newest first (``?limit=``, default 24, at most 200), each
    with its parameters, seed, result hash, thumbnail URL, permalink and ``missing`` (files deleted by hand);
    ``next`` is the cursor of the page after (``?before=<next>``), ``null`` on the last."""
    limit = _int_arg("limit", 24, 1, MAX_JOBS_PAGE)
    before = request.args.get("before") or None
    try:
        runs, following = gallery.page(services().jobs, client_id(), limit, before)
    except KeyError:
        raise BadInput("before", f"no job {before[:40]!r} to list the runs before") from None
    return jsonify({"runs": runs, "next": following})


@blueprint.post("/jobs/<job_id>/again")
def run_again(job_id: str):
    """A new job of the ended job's request and seed → 202; once done, ``same_result`` says whether its
    result's hash equals the first run's."""
    jobs = services().jobs
    first = jobs.get(job_id)
    if not first.finished_state:
        raise BadInput("job", f"job {job_id!r} is {first.state}: run it again once it has ended", status=409)
    return jsonify(jobs.again(job_id, client_id()).to_json()), 202


@blueprint.get("/jobs/<job_id>/thumbnail.png")
def job_thumbnail(job_id: str):
    """A small PNG of the run's first result image, else its newest frame; 410 if deleted or damaged by hand."""
    jobs = services().jobs
    job = jobs.get(job_id)
    return send_file(gallery.thumbnail(jobs.results_dir / job.id, job), mimetype="image/png", max_age=60)


@blueprint.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str):
    jobs = services().jobs
    if action not in ("stop", "pause", "resume"):
        raise NotFound("action", f"unknown action {action!r}; expected stop, pause or resume")
    return jsonify(getattr(jobs, action)(job_id).to_json())


@blueprint.get("/jobs/<job_id>/result")
def job_result(job_id: str):
    job = services().jobs.get(job_id)
    if job.result is None:
        raise BadInput("job", f"job {job_id!r} has no result (state: {job.state})", status=409)
    return jsonify(job.result)


@blueprint.get("/jobs/<job_id>/report.html")
def job_report(job_id: str):
    """The done run as one self-contained HTML file (images, SVG charts, parameters, model hash); 409 before it
    is done. ``?download=1``: as an attachment, ``convlens-<method>-<id>.html``."""
    from . import report

    svc = services()
    job = svc.jobs.get(job_id)
    report.check_reportable(job)
    download = _int_arg("download", 0, 0, 1)
    html = report.report_html(job, svc.jobs.results_dir / job.id, svc.methods, svc.images)
    answer = current_app.response_class(html, mimetype="text/html")
    if download:
        answer.headers["Content-Disposition"] = f'attachment; filename="{report.report_name(job)}"'
    return answer


@blueprint.get("/jobs/<job_id>/images/<name>.png")
def job_image(job_id: str, name: str):
    job = services().jobs.get(job_id)
    files = (job.result or {}).get("files", {})
    if name not in files:
        raise NotFound("image", f"job {job_id!r} has no result image {name!r}")
    return send_file(_result_file(job, files[name], "image"), mimetype="image/png")


@blueprint.get("/jobs/<job_id>/arrays/<name>.npy")
def job_array(job_id: str, name: str):
    job = services().jobs.get(job_id)
    arrays = (job.result or {}).get("arrays", {})
    if name not in arrays:
        raise NotFound("array", f"job {job_id!r} has no result array {name!r}")
    return send_file(
        _result_file(job, arrays[name], "array"),
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=f"{job.method}-{name}.npy",
    )


@blueprint.get("/jobs/<job_id>/frames.gif")
def job_animation(job_id: str):
    job = services().jobs.get(job_id)
    if not (job.result or {}).get("animation"):
        raise NotFound("animation", f"job {job_id!r} has no animation")
    return send_file(_result_file(job, "frames.gif", "animation"), mimetype="image/gif")


@blueprint.get("/jobs/<job_id>/frames.webm")
def job_video(job_id: str):
    """The run's frames as WebM (VP9), encoded from its GIF the first time it is asked for."""
    from .video import webm_of

    job = services().jobs.get(job_id)
    if not (job.result or {}).get("animation"):
        raise NotFound("animation", "this run has no frames to make a video of")
    return send_file(webm_of(_result_file(job, "frames.gif", "animation")), mimetype="video/webm")


@blueprint.get("/jobs/<job_id>/frames/latest")
def latest_frame(job_id: str):
    jobs = services().jobs
    frame = jobs.shown_last(jobs.get(job_id)).latest_frame
    if frame is None:
        raise NotFound("frame", f"job {job_id!r} has drawn no frame yet")
    return send_file(io.BytesIO(frame.data("jpeg")), mimetype="image/jpeg")


@blueprint.route("/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def unknown_endpoint(_rest: str):
    raise NotFound("path", f"no API endpoint {request.method} {request.path}")
