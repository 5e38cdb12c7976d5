"""Plugins are found through the ``convlens`` entry-point group, built-ins and third-party alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pluggy
import pytest

from convlens import hookimpl
from convlens.events import Frame, Progress, Result
from convlens.methods import Method
from convlens.plugins import ONLY_PLUGINS_ENV, MethodRegistry, make_plugin_manager, plugins_from_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "convlens-example-plugin"
BUILT_INS = {
    "basics": "convlens_plugins.basics",
    "attribution": "convlens_plugins.attribution",
    "optimisation": "convlens_plugins.optimisation",
}


def test_built_in_topics_are_entry_points_in_the_convlens_group():
    found = {ep.name: ep.value for ep in entry_points(group="convlens")}
    assert BUILT_INS.items() <= found.items()


def test_plugin_manager_loads_built_ins_and_their_methods_and_samples():
    pm = make_plugin_manager()
    assert set(BUILT_INS) <= {name for name, _ in pm.list_name_plugin()}
    registry = MethodRegistry(pm)
    assert {"predict": "basics", "saliency": "attribution", "deepdream": "optimisation"}.items() <= (
        registry.plugin_of.items()
    )
    samples = [image.id for images in pm.hook.register_sample_images() for image in images]
    assert "chelsea" in samples


def test_convlens_plugins_env_loads_only_the_named_plugins(monkeypatch):
    monkeypatch.setenv(ONLY_PLUGINS_ENV, " basics , optimisation")
    only = plugins_from_env()
    assert only == {"basics", "optimisation"}
    registry = MethodRegistry(make_plugin_manager(only))
    assert set(registry.plugin_of.values()) == {"basics", "optimisation"}
    assert "saliency" not in registry.methods


def test_convlens_plugins_env_naming_a_missing_plugin_is_an_error():
    with pytest.raises(RuntimeError, match="not installed.*nonesuch"):
        make_plugin_manager({"basics", "nonesuch"})


def write_distribution(site: Path, name: str, module_text: str) -> None:
    """A minimal installed distribution (module + dist-info with one ``convlens`` entry point) under ``site``."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_text))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[convlens]\n{name} = {name}\n")


def test_a_misspelt_hook_name_stops_the_plugin_manager(tmp_path, monkeypatch):
    write_distribution(
        tmp_path,
        "convlens_typo_plugin",
        """
        from convlens import hookimpl

        @hookimpl
        def register_method():
            return []
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pluggy.PluginValidationError, match="register_method"):
        make_plugin_manager({"convlens_typo_plugin"})


def test_two_plugins_declaring_one_method_name_is_an_error():
    def declare(plugin_name):
        class Plugin:
            @hookimpl
            def register_methods(self):
                return [Method(name="same", title=plugin_name, topic="t", run=lambda ctx: iter(()))]

        return Plugin()

    pm = make_plugin_manager(set())
    pm.register(declare("one"), name="one")
    pm.register(declare("two"), name="two")
    with pytest.raises(RuntimeError, match="'same' is declared by plugins"):
        MethodRegistry(pm)


# -- the example third-party plugin, installed as a user would --------------------------------------------

LIST_AND_RUN = """
import json

import numpy as np

from convlens.events import Frame
from convlens.plugins import get_methods, get_plugin_manager
from convlens.runner import iterate, prepare_run
from convlens.testing import make_tiny_model

registry = get_methods()
samples = [i.id for images in get_plugin_manager().hook.register_sample_images() for i in images]
method = registry.get("channel_mosaic")
ctx = prepare_run(method, make_tiny_model(), np.zeros((40, 50, 3), np.uint8), {"layer": "conv1", "count": 5})
events = list(iterate(method, ctx))
print(json.dumps({
    "methods": registry.plugin_of,
    "samples": samples,
    "frames": [e.image.shape for e in events if isinstance(e, Frame)],
    "result": events[-1].data,
}))
"""


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """examples/convlens-example-plugin built and installed (``pip install --target``) into a private folder.

    A private folder, not the shared virtual environment, so no other test (or engineer) sees the plugin
    unless it puts that folder on its path. The source is copied first so the build leaves nothing behind.
    """
    source = tmp_path_factory.mktemp("example-source") / "convlens-example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return site


def run_python(site: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != ONLY_PLUGINS_ENV}
    environment.update(PYTHONPATH=str(site), **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, cwd=site
    )


def test_installed_example_plugin_is_discovered_and_runs_through_the_runner(example_site):
    answer = json.loads(run_python(example_site, LIST_AND_RUN).stdout)
    assert answer["methods"]["channel_mosaic"] == "example"
    assert {"predict", "saliency", "deepdream"} <= set(answer["methods"])
    assert "example-checkerboard" in answer["samples"]
    assert len(answer["frames"]) == 2  # 5 tiles in 3 columns: two rows
    assert [c["channel"] for c in answer["result"]["channels"]] == [0, 1, 2, 3, 4]


def test_convlens_plugins_env_can_load_only_the_example_plugin(example_site):
    code = "import json; from convlens.plugins import get_methods; print(json.dumps(get_methods().plugin_of))"
    answer = json.loads(run_python(example_site, code, **{ONLY_PLUGINS_ENV: "example"}).stdout)
    assert answer == {"channel_mosaic": "example"}


def test_example_plugin_passes_its_own_tests_written_with_the_convlens_fixtures(example_site):
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env={**os.environ, "PYTHONPATH": str(example_site)},
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout


def test_example_channel_mosaic_fills_tiles_row_by_row(monkeypatch, convlens_run, tiny_model, sample_image):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from convlens_example_plugin import register_methods, register_sample_images

    (method,) = register_methods()
    events = convlens_run(method, tiny_model, sample_image, layer="relu2", count=7, tile=16)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [p.step for p in events if isinstance(p, Progress)] == [1, 2, 3]
    # Row by row: each frame has one more row of tiles than the last, the rest still background.
    row_band = [slice(2 + r * 18, 2 + r * 18 + 16) for r in range(3)]
    assert not np.allclose(frames[0].image[row_band[0]], 0.25)
    assert np.allclose(frames[0].image[row_band[1]], 0.25)
    assert not np.allclose(frames[1].image[row_band[1]], 0.25)
    assert np.array_equal(frames[-1].image, events[-1].images["mosaic"])
    assert isinstance(events[-1], Result) and len(events[-1].data["channels"]) == 7
    (sample,) = register_sample_images()
    assert sample.load().shape == (256, 256, 3) and sample.load().dtype == np.uint8


def test_example_plugin_is_listed_by_the_api_and_runs_over_the_socket(example_site, start_server):
    import requests
    import socketio

    url = start_server(env={"PYTHONPATH": str(example_site)})
    methods = {m["name"]: m for m in requests.get(f"{url}/api/methods", timeout=30).json()}
    assert methods["channel_mosaic"]["plugin"] == "example"
    assert "example-checkerboard" in {
        image["id"] for image in requests.get(f"{url}/api/images", timeout=30).json()
    }
    job = requests.post(
        f"{url}/api/jobs",
        json={
            "method": "channel_mosaic",
            "model": "efficientnet_lite0.pt2",
            "image": "example-checkerboard",
            "params": {"layer": "_blocks.3", "count": 6},
        },
        timeout=60,
    ).json()
    frames, finished = [], []
    ended = threading.Event()
    client = socketio.Client()
    client.on(
        "frame",
        lambda data: (frames.append(data), client.emit("frame_ack", {"job": job["id"], "seq": data["seq"]})),
    )
    client.on("done", lambda data: (finished.append(data), ended.set()))
    client.on("failed", lambda data: (finished.append(data), ended.set()))
    client.connect(url, transports=["websocket"])
    try:
        # Subscribed after the job was posted, perhaps after it ended: the end is sent to a late viewer too.
        assert client.call("subscribe", {"job": job["id"]}, timeout=30)["ok"]
        assert ended.wait(120), "the example plugin's job never said it ended"
    finally:
        client.disconnect()
    assert "result" in finished[0], finished[0]
    assert frames and frames[-1]["data"][:2] == b"\xff\xd8"
    assert len(finished[0]["result"]["data"]["channels"]) == 6
