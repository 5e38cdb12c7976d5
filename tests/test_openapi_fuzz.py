"""Schemathesis fuzzes the real app (WSGI) from its own OpenAPI document: no input is a 5xx, every answer is one
the document declares, with the declared media type and body schema.

All operations, with the document's examples, the coverage phase (each boundary and each kind of wrong value)
and the fuzzing phase (valid and invalid requests). A job it starts is stopped at once: the point is the
request's checks, not the runs.
"""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from convlens import openapi

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
FUZZ = SchemathesisConfig.from_dict(
    {
        "seed": 21,
        "generation": {"mode": "all", "max-examples": 15},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)


@pytest.fixture(scope="module")
def fuzzed_app(models_dir, tmp_path_factory):
    """An app of its own (its uploads and jobs stay out of the session's app), one job running at a time."""
    from convlens.app import create_app
    from convlens.config import Config

    config = Config(
        models_dirs=[models_dir],
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        max_running_jobs=1,
        ensure_default_model=False,
    )
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", fuzzed_app, config=FUZZ)


@pytest.fixture(autouse=True)
def node_id_for_schemathesis(request):
    """Schemathesis 4.32's lazy schema reads ``node._nodeid``, which pytest 9 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_no_request_is_a_server_error_and_every_answer_is_as_documented(case, fuzzed_app):
    response = case.call()
    try:
        case.validate_response(response)
    finally:
        if case.method == "POST" and case.path == "/api/jobs" and response.status_code == 202:
            fuzzed_app.extensions["convlens"].jobs.stop(response.json()["id"])


def api_routes(app) -> dict[str, set[str]]:
    """The ``/api`` paths of ``app``'s route table in OpenAPI's spelling, each with its verbs."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.endpoint != openapi.CATCH_ALL:
            path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
            routes.setdefault(path, set()).update(rule.methods - {"HEAD", "OPTIONS"})
    return routes


def test_the_document_lists_every_api_route_with_its_verbs_and_declares_each(fuzzed_app):
    document = fuzzed_app.test_client().get("/api/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    listed = {path: {verb.upper() for verb in operations} for path, operations in document["paths"].items()}
    assert listed == api_routes(fuzzed_app)
    endpoints = {
        rule.endpoint for rule in fuzzed_app.url_map.iter_rules() if rule.endpoint.startswith("api.")
    }
    assert set(openapi.OPERATIONS) <= endpoints, "a declaration names no route"
    assert endpoints - {openapi.CATCH_ALL} <= set(openapi.OPERATIONS), "a route has no declared answer"


def test_each_methods_params_schema_takes_its_defaults_and_refuses_past_its_bounds_as_the_server_does(
    fuzzed_app,
):
    from convlens.errors import BadInput

    document = fuzzed_app.test_client().get("/api/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    methods = list(fuzzed_app.extensions["convlens"].methods)
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in schemas["JobRequest"]["oneOf"]} == {
        f"JobRequest.{method.name}" for method in methods
    }
    for method in methods:
        params = schemas[f"JobRequest.{method.name}"]["properties"]["params"]["properties"]
        assert set(params) == {param.name for param in method.params}
        for param in method.params:
            schema = params[param.name]
            if param.default is not None or param.nullable:
                assert jsonschema_rs.is_valid(schema, param.default), (method.name, param.name)
            past = [param.maximum + 1] if param.maximum is not None and param.kind != "models" else []
            past += [param.minimum - 1] if param.minimum is not None else []
            past += [[], {"a": 1}] if param.kind != "models" else [{"a": 1}, 3]
            for value in past:
                assert not jsonschema_rs.is_valid(schema, value), (method.name, param.name, value)
                with pytest.raises(BadInput):
                    param.check(value, None)
