"""Whole classes of input that were 500s, or were accepted and failed later, are each a 4xx naming the field.

Over-long ids (a file name's length at most), digits ``str.isdigit()`` takes but ``int()`` refuses, integers too
long for ``int()`` or too large for a float, deeply nested JSON, bodies that are not objects, ``params`` that is
not an object, NaN and Infinity literals, and a wrong JSON type in every field of a job request.
"""

from __future__ import annotations

import json

import pytest

from convlens.models.default import DEFAULT_MODEL_ID as MODEL

LONG = "a" * 5000
DIGITS = "9" * 5000  # more than int() parses from a string (4,300)
JOB = {"method": "deepdream", "model": MODEL, "image": "chelsea"}


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/api/models/{LONG}", "model"),
        (f"/api/models/{LONG}/labels", "model"),
        (f"/api/models/{LONG}/predict?image=chelsea", "model"),
        (f"/api/images/{LONG}", "image"),
        (f"/api/images/upload-{LONG}", "image"),
        (f"/api/datasets/{LONG}", "dataset"),
        (f"/api/datasets/{LONG}/atlas", "dataset"),
        (f"/api/jobs/{LONG}", "job"),
        (f"/api/jobs/{LONG}/result", "job"),
        (f"/api/jobs/{LONG}/images/x.png", "job"),
        (f"/api/colormaps/{LONG}", "name"),
        (f"/api/datasets/skimage_crops/items/{DIGITS}", "index"),
        ("/api/datasets/skimage_crops/items/²", "index"),
        ("/api/datasets/skimage_crops/items/١٢", "index"),
    ],
)
def test_an_over_long_or_not_ascii_id_in_a_path_is_a_404_naming_it(client, path, field):
    answer = client.get(path)
    assert answer.status_code == 404, answer.data[:300]
    assert answer.get_json()["field"] == field
    assert len(answer.get_json()["error"]) < 1000  # the id is not echoed whole


@pytest.mark.parametrize("value", ["²", "１２", "١٢", DIGITS, "-1", "1e3", " ", "0x10"])
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/images/chelsea?size=", "size"),
        (f"/api/models/{MODEL}/predict?image=chelsea&k=", "k"),
        ("/api/datasets/skimage_crops?limit=", "limit"),
        ("/api/datasets/skimage_crops/atlas.json?offset=", "offset"),
    ],
)
def test_a_query_integer_that_int_would_refuse_or_misread_is_a_400_naming_it(client, path, field, value):
    answer = client.get(path + value)
    assert answer.status_code == 400, answer.data[:300]
    assert answer.get_json()["field"] == field


def post_job(client, text: str | bytes):
    return client.post("/api/jobs", data=text, content_type="application/json")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[" * 5000 + "]" * 5000, "body"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "body"),
        ('{"method": "deepdream", "seed": ' + DIGITS + "}", "body"),
        ("[]", "body"),
        ('"deepdream"', "body"),
        ("null", "body"),
        ("{", "body"),
        (b'{"method": "\xff"}', "body"),  # not UTF-8
        (json.dumps({**JOB, "params": []}), "params"),
        (json.dumps({**JOB, "params": 0}), "params"),
        (json.dumps({**JOB, "params": ""}), "params"),
        (json.dumps({**JOB, "params": False}), "params"),
        (json.dumps({**JOB, "params": "steps=3"}), "params"),
        (json.dumps(JOB)[:-1] + ', "params": {"lr": 1' + "0" * 400 + "}}", "params.lr"),
        (json.dumps(JOB)[:-1] + ', "params": {"lr": -1' + "0" * 400 + "}}", "params.lr"),
        (json.dumps(JOB)[:-1] + ', "params": {"steps": 1' + "0" * 400 + "}}", "params.steps"),
        (json.dumps(JOB)[:-1] + ', "params": {"lr": NaN}}', "params.lr"),
        (json.dumps(JOB)[:-1] + ', "params": {"lr": Infinity}}', "params.lr"),
        (json.dumps(JOB)[:-1] + ', "params": {"lr": -Infinity}}', "params.lr"),
        (json.dumps(JOB)[:-1] + ', "params": {"steps": 1e400}}', "params.steps"),
        (json.dumps({**JOB, "method": 1}), "method"),
        (json.dumps({**JOB, "method": ["deepdream"]}), "method"),
        (json.dumps({**JOB, "model": {"id": MODEL}}), "model"),
        (json.dumps({**JOB, "model": None}), "model"),
        (json.dumps({**JOB, "image": 7}), "image"),
        (json.dumps({**JOB, "image": ""}), "image"),
        (json.dumps({**JOB, "seed": "1"}), "seed"),
        (json.dumps({**JOB, "seed": 1.5}), "seed"),
        (json.dumps({**JOB, "seed": 2**64}), "seed"),
        (json.dumps({**JOB, "params": {"steps": "3"}}), "params.steps"),
        (json.dumps({**JOB, "params": {"steps": [3]}}), "params.steps"),
        (json.dumps({**JOB, "params": {"steps": True}}), "params.steps"),
        (json.dumps({**JOB, "params": {"layer": 3}}), "params.layer"),
        (json.dumps({**JOB, "params": {"layer": {"name": "x"}}}), "params.layer"),
        (json.dumps({**JOB, "device": "cuda:0"}), "device"),
        (json.dumps({**JOB, "device": "GPU"}), "device"),
        (json.dumps({**JOB, "device": ""}), "device"),
        (json.dumps({**JOB, "device": 1}), "device"),
        (json.dumps({**JOB, "device": ["gpu"]}), "device"),
        (json.dumps({**JOB, "device": "ｇｐｕ"}), "device"),
        (json.dumps({**JOB, "device": "g" * 10_000}), "device"),
        # No worker here: a job that wants a GPU is refused (422) rather than run on the CPU.
        (json.dumps({**JOB, "device": "gpu"}), "device"),
    ],
)
def test_a_job_request_of_a_wrong_shape_or_type_is_a_4xx_naming_the_field(client, text, field):
    answer = post_job(client, text)
    assert 400 <= answer.status_code < 500, answer.data[:300]
    assert answer.get_json()["field"] == field, answer.get_json()


def test_a_job_request_without_a_json_content_type_is_a_400_naming_the_body(client):
    answer = client.post("/api/jobs", data=json.dumps(JOB), content_type="text/plain")
    assert answer.status_code == 400 and answer.get_json()["field"] == "body"
