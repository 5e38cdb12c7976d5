"""The OpenAPI 3.1 document of the JSON API (``GET /api/openapi.json``), built from what the server checks with.

Paths and verbs come from the app's route table, so a new route is listed the moment it exists; each method's
``params`` schema comes from its :class:`~convlens.params.Param` declarations (``Param.json_schema``); the query
arguments, bodies and answers of the routes are declared in :data:`OPERATIONS` below. Every 4xx answer is the
error body ``{"error", "field"}``; no 5xx is declared, so a fuzzer treats any as a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import atlas, colormaps
from .devices import DEVICE_CLASSES
from .jobs import STATES
from .params import MAX_MODEL_ID
from .pixel_arrays import MAX_SIDE as MAX_PIXEL_SIDE

if TYPE_CHECKING:
    from flask import Flask

    from .app import Services

MAX_ID = MAX_MODEL_ID
"""The longest id (model, image, data set, job) or name in a URL: a file name's length."""
MAX_JOBS_PAGE = 200
"""The most job summaries one page of ``GET /api/jobs`` holds."""
CATCH_ALL = "api.unknown_endpoint"
"""The route that answers 404 for any other ``/api/...`` path: not an operation, so not in the document."""

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": ["string", "null"]}},
    "required": ["error", "field"],
}
JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "method": {"type": "string"},
        "model": {"type": "string"},
        "image": {"type": "string"},
        "params": {"type": "object"},
        "seed": {"type": "integer"},
        "state": {"enum": list(STATES)},
        "frames": {"type": "integer", "minimum": 0},
        "files": {"enum": ["kept", "deleted", None]},
        "again_of": {"type": ["string", "null"], "description": "the job this one runs again"},
        "same_result": {
            "type": ["boolean", "null"],
            "description": "its result's hash equals the first run's",
        },
    },
    "required": ["id", "method", "model", "image", "params", "state"],
}
JOB_SUMMARY = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "method": {"type": "string"},
        "state": {"enum": list(STATES)},
        "created": {"type": "number"},
        "error": {"type": ["string", "null"]},
        "files": {"enum": ["kept", "deleted", None]},
    },
    "required": ["id", "method", "model", "image", "state", "created"],
}
JOB_PAGE = {
    "type": "object",
    "properties": {
        "jobs": {"type": "array", "items": JOB_SUMMARY},
        "next": {"type": ["string", "null"]},
        "total": {"type": "integer", "minimum": 0},
    },
    "required": ["jobs", "next", "total"],
}
GALLERY_ENTRY = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "method": {"type": "string"},
        "params": {"type": "object"},
        "seed": {"type": "integer"},
        "state": {"enum": ["done", "failed", "stopped"]},
        "sha256": {"type": ["string", "null"]},
        "again_of": {"type": ["string", "null"]},
        "same_result": {"type": ["boolean", "null"]},
        "thumbnail": {"type": ["string", "null"]},
        "permalink": {"type": "string"},
        "missing": {"type": "array", "items": {"type": "string"}, "description": "files deleted by hand"},
    },
    "required": ["id", "method", "model", "params", "seed", "state", "thumbnail", "permalink", "missing"],
}
GALLERY_PAGE = {
    "type": "object",
    "properties": {"runs": {"type": "array", "items": GALLERY_ENTRY}, "next": {"type": ["string", "null"]}},
    "required": ["runs", "next"],
}
MODEL = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "title": {"type": "string"}},
    "required": ["id", "title"],
}
DATASET = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["id"],
}
OBJECT = {"type": "object"}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_NAMES = {"type": "array", "items": {"type": "string"}}
PLUGIN = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "its entry-point name in the convlens group"},
        "distribution": _TEXT_OR_NULL,
        "version": _TEXT_OR_NULL,
        "summary": _TEXT_OR_NULL,
        "classifiers": _NAMES,
        "framework_classifier": {"type": "boolean"},
        "methods": _NAMES,
        "needs": _NAMES,
        "sample_images": {"type": "integer"},
        "datasets": {"type": "integer"},
        "supports": {
            "type": "object",
            "properties": {
                "formats": {"type": ["array", "null"], "items": {"type": "string"}},
                "convlens": _TEXT_OR_NULL,
                "compatible": {"type": "boolean"},
                "reason": _TEXT_OR_NULL,
            },
            "required": ["formats", "convlens", "compatible", "reason"],
        },
    },
    "required": ["name", "distribution", "version", "methods", "supports"],
}
ANY_JSON: dict[str, Any] = {}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


@dataclass(frozen=True)
class Query:
    """A query argument: an ``integer`` from ``minimum`` to ``maximum`` (as ``api._int_arg`` checks) or an id."""

    name: str
    type: str = "string"
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False
    description: str = ""

    def parameter(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        if self.type == "string":
            schema |= {"minLength": 1, "maxLength": MAX_ID}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return {
            "name": self.name,
            "in": "query",
            "required": self.required,
            "schema": schema,
            "description": self.description,
        }


@dataclass(frozen=True)
class Operation:
    """What a route takes besides its path, and what it answers: ``(status, media type, schema)``."""

    query: tuple[Query, ...] = ()
    answer: tuple[int, str, dict[str, Any]] = (200, "application/json", ANY_JSON)
    """``(status, media type, schema)``; a media type ``""`` for an answer without a body."""
    body: str | dict[str, Any] | None = None
    """``"job"``: the job request; ``"file"``: a multipart upload in a field named ``file``; a schema: a JSON
    body of that schema."""
    path: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Path arguments whose schema is narrower than an id (an index, an action)."""


SIZE = Query("size", "integer", 8, 4096, description="fit the picture into size x size (thumbnails)")
MODEL_ARG = Query("model", description="a model id (GET /api/models)")
PNG = (200, "image/png", ANY_JSON)
NO_CONTENT = (204, "", ANY_JSON)
INDEX = {"type": "string", "pattern": "^[0-9]{1,9}$"}
ATLAS_QUERY = (
    Query("size", "integer", 8, 128),
    Query("offset", "integer", 0),
    Query("limit", "integer", 1, atlas.MAX_ITEMS),
)
PIXEL = {"type": "number", "minimum": 0, "maximum": 1}
PIXELS_BODY = {
    "type": "object",
    "properties": {
        "pixels": {
            "description": "H×W grey (or H×W×3 RGB) values in [0, 1], ink bright, the model's input size",
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PIXEL_SIDE,
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PIXEL_SIDE,
                "items": {"anyOf": [PIXEL, {"type": "array", "items": PIXEL, "minItems": 3, "maxItems": 3}]},
            },
        },
        "k": {"type": "integer", "minimum": 1, "default": 5},
    },
    "required": ["pixels"],
}
OPERATIONS: dict[str, Operation] = {
    "api.openapi_document": Operation(answer=(200, "application/json", OBJECT)),
    "api.asyncapi_document": Operation(answer=(200, "application/json", OBJECT)),
    "api.list_models": Operation(answer=(200, "application/json", _list(MODEL))),
    "api.model_labels": Operation(answer=(200, "application/json", _list({"type": "string"}))),
    "api.model_detail": Operation(answer=(200, "application/json", MODEL)),
    "api.model_predict": Operation(
        query=(Query("image", required=True), Query("k", "integer", 1)),
        answer=(200, "application/json", _list(OBJECT)),
    ),
    "api.model_predict_pixels": Operation(body=PIXELS_BODY, answer=(200, "application/json", _list(OBJECT))),
    "api.colormap_table": Operation(
        answer=(200, "application/json", OBJECT),
        path={"name": {"type": "string", "maxLength": MAX_ID, "examples": list(colormaps.NAMES)}},
    ),
    "api.list_methods": Operation(query=(MODEL_ARG,), answer=(200, "application/json", _list(OBJECT))),
    "api.list_plugins": Operation(answer=(200, "application/json", _list(PLUGIN))),
    "api.list_images": Operation(answer=(200, "application/json", _list(OBJECT))),
    "api.image_file": Operation(query=(SIZE, MODEL_ARG), answer=PNG),
    "api.upload_image": Operation(body="file", answer=(201, "application/json", OBJECT)),
    "api.delete_image": Operation(answer=NO_CONTENT),
    "api.list_datasets": Operation(answer=(200, "application/json", _list(OBJECT))),
    "api.upload_dataset": Operation(body="file", answer=(201, "application/json", DATASET)),
    "api.dataset_detail": Operation(
        query=(Query("offset", "integer", 0), Query("limit", "integer", 1, 1000)),
        answer=(200, "application/json", DATASET),
    ),
    "api.dataset_item": Operation(query=(SIZE,), answer=PNG, path={"index": INDEX}),
    "api.dataset_atlas": Operation(query=ATLAS_QUERY, answer=PNG),
    "api.dataset_atlas_layout": Operation(query=ATLAS_QUERY, answer=(200, "application/json", OBJECT)),
    "api.start_job": Operation(body="job", answer=(202, "application/json", JOB)),
    "api.list_jobs": Operation(
        query=(
            Query("limit", "integer", 1, MAX_JOBS_PAGE),
            Query("before", description="the cursor `next` gave"),
        ),
        answer=(200, "application/json", JOB_PAGE),
    ),
    "api.delete_job": Operation(answer=NO_CONTENT),
    "api.job_detail": Operation(answer=(200, "application/json", JOB)),
    "api.job_action": Operation(
        answer=(200, "application/json", JOB), path={"action": {"enum": ["stop", "pause", "resume"]}}
    ),
    "api.job_result": Operation(answer=(200, "application/json", OBJECT)),
    "api.job_report": Operation(
        query=(Query("download", "integer", 0, 1, description="1: as a file to save (an attachment)"),),
        answer=(200, "text/html", {"type": "string"}),
    ),
    "api.job_image": Operation(answer=PNG),
    "api.job_array": Operation(answer=(200, "application/octet-stream", ANY_JSON)),
    "api.job_animation": Operation(answer=(200, "image/gif", ANY_JSON)),
    "api.job_video": Operation(answer=(200, "video/webm", ANY_JSON)),
    "api.latest_frame": Operation(answer=(200, "image/jpeg", ANY_JSON)),
    "api.gallery_page": Operation(
        query=(
            Query("limit", "integer", 1, MAX_JOBS_PAGE),
            Query("before", description="the cursor `next` gave"),
        ),
        answer=(200, "application/json", GALLERY_PAGE),
    ),
    "api.run_again": Operation(answer=(202, "application/json", JOB)),
    "api.job_thumbnail": Operation(answer=PNG),
}
"""The routes' query arguments, bodies and answers, by endpoint; a route missing here is listed with any
answer (the test of this module names it)."""

ERROR_STATUSES = {
    400: "a value is wrong; field names it",
    401: "this server needs its token",
    403: "this client or origin may not do this",
    404: "a named thing does not exist",
    405: "the path does not take this verb",
    409: "the thing is not in the state this needs",
    410: "a run's file was deleted or damaged by hand",
    413: "the upload or body is larger than the limit",
    422: "the method cannot run on this model",
    429: "too many requests or queued jobs from this client",
}
TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "the server's CONVLENS_TOKEN, sent as `Authorization: Bearer <token>` (or `?token=`)",
}
RST_LITERAL = re.compile(r"(?::[a-z]+:)?``?([^`]+)``?")
"""A docstring's ``code`` or :role:`target`: a summary is plain text (Swagger UI shows it as written)."""
PATH_ARGUMENT = re.compile(r"<(?:[a-z]+:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s ``/api`` routes."""
    services: Services = app.extensions["convlens"]
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if not rule.endpoint.startswith("api.") or rule.endpoint == CATCH_ALL:
            continue
        path, names = _path(rule.rule)
        view = app.view_functions[rule.endpoint]
        declared = OPERATIONS.get(rule.endpoint, Operation(answer=(200, "*/*", ANY_JSON)))
        for verb in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[verb.lower()] = _operation(rule.endpoint, view, names, declared)
    described: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "convlens",
            "version": _version(),
            "description": "See inside image CNNs. Errors are 4xx with the body {error, field}.",
        },
        "paths": paths,
        "components": {"schemas": {"Error": ERROR, "Job": JOB, **_job_requests(services)}},
    }
    if services.config.token:
        # Said only where it is asked for: clients, and the reference page's "Authorize", then send it.
        described["components"]["securitySchemes"] = {"token": TOKEN_SCHEME}
        described["security"] = [{"token": []}]
    return described


def _plain(text: str) -> str:
    return RST_LITERAL.sub(lambda match: match[1].lstrip("~"), text)


def _path(rule: str) -> tuple[str, list[str]]:
    """Flask's ``/api/jobs/<job_id>/images/<name>.png`` as ``/api/jobs/{job_id}/images/{name}.png``, and its
    argument names."""
    names = [match["name"] for match in PATH_ARGUMENT.finditer(rule)]
    return PATH_ARGUMENT.sub(lambda match: "{" + match["name"] + "}", rule), names


def _operation(endpoint: str, view, names: list[str], declared: Operation) -> dict[str, Any]:
    doc = (view.__doc__ or "").strip()
    status, media, schema = declared.answer
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": declared.path.get(name, {"type": "string", "minLength": 1, "maxLength": MAX_ID}),
        }
        for name in names
    ]
    parameters += [query.parameter() for query in declared.query]
    answer = (
        {"description": "OK", "content": {media: {"schema": schema}}} if media else {"description": "Done"}
    )
    responses: dict[str, Any] = {
        str(status): answer,
        **{
            str(code): {
                "description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            for code, why in ERROR_STATUSES.items()
        },
    }
    operation: dict[str, Any] = {
        "operationId": endpoint.removeprefix("api."),
        "summary": _plain(doc.split("\n\n")[0].replace("\n", " "))
        or endpoint.removeprefix("api.").replace("_", " "),
        "parameters": parameters,
        "responses": responses,
    }
    if declared.body == "job":
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
        }
    elif isinstance(declared.body, dict):
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": declared.body}},
        }
    elif declared.body == "file":
        file_part = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        operation["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": {**file_part, "required": ["file"]}}},
        }
    return operation


def _job_requests(services: Services) -> dict[str, Any]:
    """``JobRequest``: one of a request per method, told apart by ``method``, each with its ``params``."""
    models = services.models.ids()
    images = [item["id"] for item in services.images.list()]
    by_method: dict[str, Any] = {}
    for method in services.methods:
        by_method[f"JobRequest.{method.name}"] = {
            "type": "object",
            "properties": {
                "method": {"const": method.name},
                "model": {"type": "string", "minLength": 1, "maxLength": MAX_ID, "examples": models[:1]},
                "image": {"type": "string", "minLength": 1, "maxLength": MAX_ID, "examples": images[:1]},
                "params": {
                    "type": "object",
                    "properties": {param.name: param.json_schema() for param in method.params},
                    "additionalProperties": False,
                },
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "device": {
                    "enum": list(DEVICE_CLASSES),
                    "description": "the device class to run on: any (default), cpu, or gpu (needs a GPU worker)",
                },
            },
            "required": ["method", "model", "image"],
        }
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in by_method]
    return {
        "JobRequest": {
            "oneOf": refs,
            "discriminator": {
                "propertyName": "method",
                "mapping": {
                    name.removeprefix("JobRequest."): f"#/components/schemas/{name}" for name in by_method
                },
            },
        },
        **by_method,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convlens")
    except PackageNotFoundError:
        return "0"
