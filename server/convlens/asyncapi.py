"""The AsyncAPI 2.6 document of the Socket.IO events (``GET /api/asyncapi.json``): one JSON schema per payload.

Job, error and job-request schemas are :mod:`convlens.openapi`'s own, under ``components.schemas``, so the REST
and the Socket.IO documents cannot drift apart. A client event's acknowledgement is declared in its message's
``x-ack`` (the Socket.IO convention of AsyncAPI: ``{"args": schema}``). Binary fields (a frame's picture, the
points' positions) are ``{"type": "string", "format": "binary"}``: Socket.IO sends them as binary attachments.
The test of this module checks every payload a real server sends against these schemas.
"""

from __future__ import annotations

from typing import Any

from . import openapi
from .encode import MIME

JOB_REF = {"$ref": "#/components/schemas/Job"}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
JOB_ID = {"type": "string", "minLength": 1, "maxLength": openapi.MAX_ID, "description": "the job's id"}
BINARY = {"type": "string", "format": "binary"}
STEP = {"type": ["integer", "null"]}
VALUES = {"type": "object", "additionalProperties": {"type": "number"}}
POINT = {
    "type": "object",
    "properties": {"step": STEP, "values": VALUES},
    "required": ["step", "values"],
    "additionalProperties": False,
}
TOP_CLASS = {
    "type": "object",
    "properties": {
        "class": {"type": "integer", "minimum": 0},
        "label": {"type": "string"},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["class", "label", "probability"],
}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object of exactly these properties (``optional`` ones may be missing): a renamed field fails."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


ACK = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"ok": {"const": True}, "job": JOB_REF},
            "required": ["ok"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"ok": {"const": False}, **openapi.ERROR["properties"]},
            "required": ["ok", *openapi.ERROR["required"]],
            "additionalProperties": False,
        },
    ],
    "description": '{ok: true} (with the Job where named) or {ok: false, error, field}; field "body" for a '
    "payload that is not one object",
}
ACK_WITH_JOB = {
    "oneOf": [
        _object({"ok": {"const": True}, "job": JOB_REF}),
        ACK["oneOf"][1],
    ]
}

CLIENT_EVENTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "subscribe": (
        "Join the job's room; the server first sends what a viewer who watched has seen.",
        _object({"job": JOB_ID}, {"format": {"enum": sorted(MIME), "default": "jpeg"}}),
        ACK_WITH_JOB,
    ),
    "unsubscribe": ("Leave the job's room.", _object({"job": JOB_ID}), ACK),
    "frame_ack": (
        "The viewer has drawn frame seq; the next frame is sent only after this.",
        _object({"job": JOB_ID, "seq": {"type": "integer"}}),
        ACK,
    ),
    "stop": ("Stop the job.", _object({"job": JOB_ID}), ACK_WITH_JOB),
    "pause": ("Pause the job between two steps.", _object({"job": JOB_ID}), ACK_WITH_JOB),
    "resume": ("Resume a paused job.", _object({"job": JOB_ID}), ACK_WITH_JOB),
}
"""Client → server: ``name: (summary, payload, acknowledgement)``."""

SERVER_EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "job": ("The job, on subscribe and on every change of its state.", JOB_REF),
    "progress": (
        "The newest step; time is the server's clock (Unix seconds) when it was done.",
        _object(
            {
                "job": JOB_ID,
                "step": {"type": "integer"},
                "total": {"type": "integer"},
                "time": {"type": "number"},
            }
        ),
    ),
    "metrics": (
        "Every metrics point since the previous send, oldest first; step and values repeat the newest.",
        _object({"job": JOB_ID, "step": STEP, "values": VALUES, "points": {"type": "array", "items": POINT}}),
    ),
    "metrics_history": (
        "The job's kept metrics points, on subscribe.",
        _object({"job": JOB_ID, "history": {"type": "array", "items": POINT}}),
    ),
    "log": (
        "A line of the job's log.",
        _object({"job": JOB_ID, "level": {"type": "string"}, "message": {"type": "string"}}),
    ),
    "frame": (
        "A picture the job drew, sent to one viewer after it acknowledged the previous one (frame_ack).",
        _object(
            {
                "job": JOB_ID,
                "seq": {"type": "integer"},
                "step": STEP,
                "label": {"type": "string"},
                "mime": {"enum": sorted(MIME.values())},
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
                "data": {**BINARY, "description": "the encoded picture"},
            }
        ),
    ),
    "points": (
        "N x 2 positions (an embedding while it is optimised), the newest of each label.",
        _object(
            {
                "job": JOB_ID,
                "step": STEP,
                "label": {"type": "string"},
                "n": {"type": "integer", "minimum": 0},
                "data": {**BINARY, "description": "n pairs x0, y0, x1, y1, ... as little-endian float32"},
            }
        ),
    ),
    "predictions": (
        "The top classes of each panel the frames show, best first, by panel name.",
        _object(
            {
                "job": JOB_ID,
                "step": STEP,
                "tops": {"type": "object", "additionalProperties": {"type": "array", "items": TOP_CLASS}},
            }
        ),
    ),
    "done": ("The job ended with its result.", _object({"job": JOB_ID, "result": openapi.OBJECT})),
    "failed": ("The job failed: why, and the field to blame.", _object({"job": JOB_ID, "error": ERROR_REF})),
    "stopped": ("The job was stopped.", _object({"job": JOB_ID})),
}
"""Server → client: ``name: (summary, payload)``."""


def _message(name: str, summary: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "title": name, "summary": summary, "payload": payload}


def document() -> dict[str, Any]:
    """The AsyncAPI 2.6 document of the default namespace's events."""
    client = {
        name: {**_message(name, summary, payload), "x-ack": {"args": ack}}
        for name, (summary, payload, ack) in CLIENT_EVENTS.items()
    }
    server = {name: _message(name, summary, payload) for name, (summary, payload) in SERVER_EVENTS.items()}

    def refs(names) -> dict[str, Any]:
        return {"oneOf": [{"$ref": f"#/components/messages/{name}"} for name in names]}

    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "convlens Socket.IO events",
            "version": openapi._version(),
            "description": "Socket.IO (Engine.IO 4) on the default namespace /. A server with CONVLENS_TOKEN "
            "needs {token} as the connection's auth. A job's events go to the viewers who subscribed to it.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "/": {
                "description": "the default namespace",
                "publish": {"summary": "client → server", "message": refs(client)},
                "subscribe": {"summary": "server → client", "message": refs(server)},
                "bindings": {"ws": {"bindingVersion": "0.1.0"}},
            }
        },
        "components": {
            "messages": {**client, **server},
            "schemas": {"Job": openapi.JOB, "Error": openapi.ERROR},
        },
    }
