"""What a real server sends over Socket.IO is what its AsyncAPI document (``GET /api/asyncapi.json``) describes.

Real python-socketio clients watch a few real jobs on the ``live_server`` (an attack, a code map, a job that
fails, one paused, resumed and stopped) and send good and bad payloads; every event and acknowledgement is
checked against its schema from the served document (with ``jsonschema_rs``), every event sent must be
described, and every described server event must have been seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
import socketio

from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL

ENDS_S = 180.0
"""Seconds a job of a few steps is given to end: a hang guard, never reached when the job works."""
FINAL = ("done", "failed", "stopped")


class Watcher:
    """A Socket.IO client that records every event and every acknowledgement; it acknowledges frames at once."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, Any]] = []
        self.acks: list[tuple[str, Any]] = []
        self.changed = threading.Condition()
        self.client = socketio.Client()
        self.client.on("*", self.received)
        self.client.connect(url, transports=["websocket"])

    def received(self, name: str, *args: Any) -> None:
        assert len(args) == 1, f"{name} came with {len(args)} arguments"
        (payload,) = args
        with self.changed:
            self.events.append((name, payload))
            self.changed.notify_all()
        if name == "frame":
            self.client.emit(
                "frame_ack",
                {"job": payload["job"], "seq": payload["seq"]},
                callback=lambda answer: self.acks.append(("frame_ack", answer)),
            )

    def call(self, name: str, *payload: Any) -> Any:
        answer = self.client.call(name, *payload, timeout=60)
        self.acks.append((name, answer))
        return answer

    def wait_for(self, job_id: str, names: tuple[str, ...]) -> str:
        """The first of ``names`` this viewer got for ``job_id``, waiting for it."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.seen(job_id, names), ENDS_S), (
                f"none of {names} for {job_id} within {ENDS_S} s: {[name for name, _ in self.events]}"
            )
            return self.seen(job_id, names)

    def seen(self, job_id: str, names: tuple[str, ...]) -> str | None:
        return next(
            (name for name, p in self.events if name in names and job_id in (p.get("job"), p.get("id"))),
            None,
        )


def start(url: str, method: str, params: dict) -> str:
    body = {"method": method, "model": DEFAULT_MODEL, "image": "chelsea", "params": params, "seed": 0}
    answer = requests.post(f"{url}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def watch_to_the_end(watcher: Watcher, url: str, method: str, params: dict) -> str:
    job_id = start(url, method, params)
    assert watcher.call("subscribe", {"job": job_id})["ok"] is True
    return watcher.wait_for(job_id, FINAL)


def as_json(value: Any, binary: list[str], where: str = "") -> Any:
    """``value`` with each ``bytes`` as a string (what ``format: binary`` describes), its place noted."""
    if isinstance(value, bytes):
        binary.append(where)
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return {key: as_json(item, binary, f"{where}/{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [as_json(item, binary, f"{where}/{index}") for index, item in enumerate(value)]
    return value


def binary_places(schema: dict) -> set[str]:
    """The properties ``format: binary`` marks, as ``/name`` (a payload's binary fields are top-level)."""
    return {
        f"/{name}" for name, prop in schema.get("properties", {}).items() if prop.get("format") == "binary"
    }


@pytest.fixture(scope="module")
def described(live_server) -> dict:
    answer = requests.get(f"{live_server}/api/asyncapi.json", timeout=60)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    return answer.json()


@pytest.fixture(scope="module")
def recorded(live_server) -> Iterator[Watcher]:
    """Everything a viewer got while watching jobs that, together, send every kind of event."""
    watcher = Watcher(live_server)
    try:
        # Frames, progress, metrics, predictions and a log line (the top class flips), then done.
        attack = {"attack": "bim", "epsilon": 32, "step": 8, "steps": 3}
        assert watch_to_the_end(watcher, live_server, "adversarial_attack", attack) == "done"
        # Points: the code map's positions.
        code_map = {"method": "pca", "thumb": 8, "size": 256}
        assert watch_to_the_end(watcher, live_server, "code_map", code_map) == "done"
        # A job the method refuses at run time: failed, naming the field.
        assert watch_to_the_end(watcher, live_server, "occlusion", {"window": 16, "stride": 17}) == "failed"
        # Pause, resume and stop, each acknowledged with the job.
        job_id = start(live_server, "class_model", {"steps": 1000})
        assert watcher.call("subscribe", {"job": job_id, "format": "png"})["ok"] is True
        watcher.wait_for(job_id, ("progress",))
        for control in ("pause", "resume", "stop"):
            assert watcher.call(control, {"job": job_id})["ok"] is True
        assert watcher.wait_for(job_id, FINAL) == "stopped"
        assert watcher.call("unsubscribe", {"job": job_id})["ok"] is True
        # Refused payloads: each acknowledged with the field to blame.
        assert watcher.call("subscribe", "not an object")["field"] == "body"
        assert watcher.call("frame_ack", {"job": job_id, "seq": "one"})["field"] == "seq"
        assert watcher.call("resume", {"job": "no-such-job"})["field"] == "job"
        assert watcher.call("subscribe", {"job": job_id, "format": "tiff"})["field"] == "format"
        yield watcher
    finally:
        watcher.client.disconnect()


def validator(described: dict, pointer: str):
    return jsonschema_rs.validator_for({"$ref": pointer, "components": described["components"]})


def test_every_event_the_server_sends_is_described_and_matches_its_schema(described, recorded):
    messages = described["components"]["messages"]
    sent_by_server = {
        ref["$ref"].rsplit("/", 1)[-1] for ref in described["channels"]["/"]["subscribe"]["message"]["oneOf"]
    }
    assert sent_by_server <= set(messages)
    undescribed = sorted({name for name, _ in recorded.events} - sent_by_server)
    assert not undescribed, f"events the server sent that the document does not describe: {undescribed}"
    for name, payload in recorded.events:
        binary: list[str] = []
        plain = as_json(payload, binary)
        errors = [
            str(error)
            for error in validator(described, f"#/components/messages/{name}/payload").iter_errors(plain)
        ]
        assert not errors, f"{name} {plain} does not match its schema: {errors}"
        assert set(binary) == binary_places(messages[name]["payload"]), name
    unseen = sorted(sent_by_server - {name for name, _ in recorded.events})
    assert not unseen, f"described server events never sent in these runs: {unseen}"


def test_every_acknowledgement_matches_its_schema(described, recorded):
    messages = described["components"]["messages"]
    sent_by_client = {
        ref["$ref"].rsplit("/", 1)[-1] for ref in described["channels"]["/"]["publish"]["message"]["oneOf"]
    }
    assert {name for name, _ in recorded.acks} == sent_by_client, "each client event was sent"
    for name, answer in recorded.acks:
        assert "x-ack" in messages[name], name
        errors = [
            str(error)
            for error in validator(described, f"#/components/messages/{name}/x-ack/args").iter_errors(answer)
        ]
        assert not errors, f"{name}'s acknowledgement {answer} does not match its schema: {errors}"
    assert {answer["ok"] for _, answer in recorded.acks} == {True, False}


def test_the_documents_share_the_job_schema(live_server, described):
    """The Job of the Socket.IO events is the REST API's Job, not a copy that may drift."""
    rest = requests.get(f"{live_server}/api/openapi.json", timeout=60).json()
    assert described["components"]["schemas"]["Job"] == rest["components"]["schemas"]["Job"]
    assert described["components"]["schemas"]["Error"] == rest["components"]["schemas"]["Error"]
