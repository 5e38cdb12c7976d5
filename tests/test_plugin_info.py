"""``GET /api/plugins`` lists each loaded plugin with its distribution, version and declared support;
``CONVLENS_TRACE_PLUGINS=1`` logs every hook call and every method run."""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import test_plugins

import convlens
from convlens.events import Progress
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.plugin_info import TRACE_ENV, describe_plugins
from convlens.plugins import MethodRegistry, make_plugin_manager
from convlens.runner import iterate, prepare_run
from local import Served, start_serve

example_site = test_plugins.example_site  # the example plugin, pip-installed into a private folder

OLD_PLUGIN = "convlens_oldplugin"
OLD_PLUGIN_MODULE = '''
"""A plugin that declares it works with convlens before 0.1 only, and with ONNX models."""

from convlens import hookimpl
from convlens.events import Progress, Result
from convlens.methods import Method

CONVLENS_SUPPORTS = {"formats": ["onnx"]}


def run(ctx):
    yield Progress(1, 1)
    yield Result(data={"old": True})


@hookimpl
def register_methods():
    return [Method(name="old_echo", title="Old echo", topic="Tests", run=run)]
'''


def write_old_plugin(site: Path) -> Path:
    """An installed distribution (module + dist-info) whose metadata says ``convlens (<0.1)``."""
    (site / f"{OLD_PLUGIN}.py").write_text(OLD_PLUGIN_MODULE)
    info = site / f"{OLD_PLUGIN}-2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        textwrap.dedent(
            """\
            Metadata-Version: 2.1
            Name: convlens-oldplugin
            Version: 2.3
            Summary: Declares an old convlens.
            Classifier: Framework :: convlens
            Requires-Dist: numpy
            Requires-Dist: convlens[test]>=9; extra == "dev"
            Requires-Dist: convlens (<0.1)
            """
        )
    )
    (info / "entry_points.txt").write_text(f"[convlens]\nold = {OLD_PLUGIN}\n")
    return site


def by_name(listing: list[dict]) -> dict[str, dict]:
    return {plugin["name"]: plugin for plugin in listing}


def test_built_in_plugins_are_listed_with_convlens_version_and_what_they_offer(client):
    answer = client.get("/api/plugins")
    assert answer.status_code == 200
    plugins = by_name(answer.get_json())
    assert {"basics", "attribution", "optimisation"} <= set(plugins)
    basics, attribution = plugins["basics"], plugins["attribution"]
    assert (basics["distribution"], basics["version"]) == ("convlens", convlens.__version__)
    assert "predict" in basics["methods"] and "saliency" in attribution["methods"]
    assert basics["sample_images"] > 0 and basics["datasets"] > 0 and attribution["sample_images"] == 0
    assert "gradients" in attribution["needs"]
    assert basics["supports"] == {"formats": None, "convlens": None, "compatible": True, "reason": None}


def test_a_distribution_declaring_another_convlens_is_listed_incompatible_yet_loaded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_old_plugin(tmp_path)))
    pm = make_plugin_manager({"old", "basics"})
    plugins = by_name(describe_plugins(pm, MethodRegistry(pm)))
    old = plugins["old"]
    assert (old["distribution"], old["version"], old["summary"]) == (
        "convlens-oldplugin",
        "2.3",
        "Declares an old convlens.",
    )
    assert old["framework_classifier"] and old["methods"] == ["old_echo"]
    # The extra's requirement (>=9) is not the plugin's range; the unconditional one is.
    assert old["supports"] == {
        "formats": ["onnx"],
        "convlens": "<0.1",
        "compatible": False,
        "reason": f"declares convlens <0.1; this server is {convlens.__version__}",
    }
    assert plugins["basics"]["supports"]["compatible"]


def test_tracing_logs_each_hook_call_with_its_plugins_and_each_method_run(
    monkeypatch, caplog, tiny_model, sample_image
):
    monkeypatch.setenv(TRACE_ENV, "1")
    caplog.set_level(logging.INFO, logger="convlens.plugins.trace")
    pm = make_plugin_manager({"basics", "optimisation"})
    registry = MethodRegistry(pm)
    pm.hook.register_sample_images()
    lines = [record.getMessage() for record in caplog.records if record.name == "convlens.plugins.trace"]
    assert any(line.startswith("hook register_methods ran plugins [basics] in ") for line in lines), lines
    assert any(
        line.startswith("hook register_sample_images ran plugins [optimisation, basics] in ")
        for line in lines
    ), lines

    caplog.clear()
    method = registry.get("predict")
    events = list(iterate(method, prepare_run(method, tiny_model, sample_image, {})))
    (line,) = [record.getMessage() for record in caplog.records if record.name == "convlens.plugins.trace"]
    assert line.startswith(f"method predict done: {len(events)} events, ") and line.endswith(" s wall"), line


def test_tracing_a_method_stopped_early_says_so_and_closes_its_generator(monkeypatch, caplog, tiny_model):
    closed = []

    def run(ctx):
        try:
            for step in range(5):
                yield Progress(step, 5)
        finally:
            closed.append(True)

    method = Method(name="five_steps", title="Five steps", topic="Tests", run=run)
    monkeypatch.setenv(TRACE_ENV, "1")
    caplog.set_level(logging.INFO, logger="convlens.plugins.trace")
    events = iterate(method, prepare_run(method, tiny_model, np.zeros((8, 8, 3), np.uint8), {}))
    next(events), next(events)
    events.close()
    assert closed == [True]
    (line,) = [record.getMessage() for record in caplog.records if record.name == "convlens.plugins.trace"]
    assert line.startswith("method five_steps closed early: 2 events, "), line


# -- a real `convlens serve` with the example plugin and the old one installed, tracing on ------------------


@pytest.fixture(scope="module")
def traced_server(example_site, models_dir, tmp_path_factory):
    old_site = write_old_plugin(tmp_path_factory.mktemp("old-site"))
    served = start_serve(
        models_dir,
        tmp_path_factory.mktemp("plugins-data"),
        {"PYTHONPATH": f"{example_site}:{old_site}", TRACE_ENV: "1", "CONVLENS_PLUGINS": ""},
    )
    yield served
    served.process.terminate()
    served.process.wait(timeout=30)


def test_served_plugins_list_the_example_with_its_own_distribution_and_the_old_one_incompatible(
    traced_server: Served,
):
    plugins = by_name(requests.get(f"{traced_server.url}/api/plugins", timeout=60).json())
    example = plugins["example"]
    assert (example["distribution"], example["version"]) == ("convlens-example-plugin", "0.1.0")
    assert example["methods"] == ["channel_mosaic"] and example["sample_images"] == 1
    assert example["supports"]["compatible"] and example["supports"]["convlens"] is None
    assert plugins["basics"]["version"] == convlens.__version__
    assert plugins["old"]["supports"]["compatible"] is False
    # Loaded anyway: its method is offered, and the server said why it might not work.
    methods = {
        m["name"]: m["plugin"] for m in requests.get(f"{traced_server.url}/api/methods", timeout=60).json()
    }
    assert methods["old_echo"] == "old"
    assert f"plugin old: declares convlens <0.1; this server is {convlens.__version__}" in traced_server.log()


def test_served_with_tracing_logs_hook_calls_and_the_time_of_a_job_run(traced_server: Served):
    job = requests.post(
        f"{traced_server.url}/api/jobs",
        json={"method": "old_echo", "model": DEFAULT_MODEL_ID, "image": "chelsea"},
        timeout=60,
    ).json()
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    while (state := requests.get(f"{traced_server.url}/api/jobs/{job['id']}", timeout=30).json())[
        "state"
    ] in (
        "queued",
        "running",
        "paused",
    ):
        assert time.monotonic() < deadline, traced_server.log()
        time.sleep(0.2)
    assert state["state"] == "done", state
    log = traced_server.log()
    assert "convlens.plugins.trace INFO hook register_methods ran plugins [old] in " in log
    assert "convlens.plugins.trace INFO hook register_sample_images ran plugins [" in log
    deadline = time.monotonic() + 30  # the line is written as the run's iterator ends, just before "done"
    while "method old_echo done: 2 events, " not in log:
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
        log = traced_server.log()
