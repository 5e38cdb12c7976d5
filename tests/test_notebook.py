"""convlens.notebook on the Python side: the embedded server (one per process, reachable, letting the running
Jupyter servers' pages start jobs and no other page), the widgets' traits and front end, and bad arguments.
What the widget draws is tests/browser/test_notebook_widget.py's, in a real JupyterLab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from convlens import notebook
from convlens.client import Client, ClientError, JobHandle
from convlens.config import Config

NOTEBOOK_PAGE = "http://localhost:8899"
"""The origin of a Jupyter server the test pretends is running (its jpserver-*.json)."""


@pytest.fixture(scope="module")
def embedded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """:func:`convlens.notebook.serve` while a Jupyter server's file says it runs at ``NOTEBOOK_PAGE``."""
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    (runtime / "jpserver-4242.json").write_text(json.dumps({"url": f"{NOTEBOOK_PAGE}/", "pid": 4242}))
    before = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
    try:
        config = Config(models_dirs=[models_dir], data_dir=tmp_path_factory.mktemp("embedded-data"))
        yield notebook.serve(config=config)
    finally:
        if before is None:
            os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        else:
            os.environ["JUPYTER_RUNTIME_DIR"] = before


@pytest.fixture(scope="module")
def finished_job(embedded: Client) -> JobHandle:
    job = embedded.run("deepdream", image="chelsea", params={"steps": 1, "octaves": 1}, seed=1)
    assert job.wait(timeout=300, progress=False)["state"] == "done"
    return job


def test_serve_starts_one_reachable_server_and_returns_it_again(embedded: Client):
    assert embedded.url.startswith("http://127.0.0.1:")
    assert notebook.serve() is embedded
    assert notebook.serve(port=1) is embedded, (
        "a later call returns the running server whatever its arguments"
    )
    assert any(model.default for model in embedded.models())
    assert requests.get(f"{embedded.url}/socket.io/?EIO=4&transport=polling", timeout=30).ok


def test_a_running_jupyter_servers_pages_may_start_jobs_and_other_pages_only_watch(embedded: Client):
    def start_from(origin: str) -> requests.Response:
        return requests.post(
            f"{embedded.url}/api/jobs",
            json={"method": "no such method"},
            headers={"Origin": origin},
            timeout=30,
        )

    for page in (NOTEBOOK_PAGE, "http://127.0.0.1:8899"):  # a loopback Jupyter under both of its names
        answer = start_from(page)
        assert answer.json()["field"] == "method", (page, answer.text)  # past the origin check
    refused = start_from("http://elsewhere.example")
    assert refused.status_code == 403 and refused.json()["field"] == "Origin"
    watched = requests.get(
        f"{embedded.url}/api/models", headers={"Origin": "http://elsewhere.example"}, timeout=30
    )
    assert watched.ok and watched.headers["Access-Control-Allow-Origin"] == "*"


def test_jupyter_origins_reads_the_runtime_folders_server_files(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "jpserver-1.json").write_text(json.dumps({"url": "https://lab.example:9443/user/ada/"}))
    (tmp_path / "jpserver-2.json").write_text(json.dumps({"url": "http://0.0.0.0:8888/"}))
    (tmp_path / "jpserver-3.json").write_text("{half written")
    assert notebook.jupyter_origins() == [
        "https://lab.example:9443",
        "http://localhost:8888",
        "http://127.0.0.1:8888",
    ]


def test_the_job_widget_holds_the_server_the_job_and_the_built_front_end(embedded: Client, finished_job):
    widget = notebook.show(finished_job)
    assert isinstance(widget, notebook.ConvlensWidget)
    assert (widget.view, widget.server, widget.job, widget.token) == (
        "job",
        embedded.url,
        finished_job.id,
        "",
    )
    built = (Config(ensure_default_model=False).web_dist / "assets" / "widget.js").read_text()
    state = widget.get_state()
    assert state["_esm"] == built and "export" in built
    assert (state["server"], state["job"]) == (embedded.url, finished_job.id)

    by_id = notebook.show(finished_job.id)  # no server: serve()'s
    assert (by_id.server, by_id.job) == (embedded.url, finished_job.id)
    proxied = notebook.show(finished_job, browser_url="https://proxy.example/convlens/")
    assert proxied.server == "https://proxy.example/convlens"


def test_the_compare_widget_holds_its_choices(embedded: Client):
    import convlens

    widget = convlens.compare(
        image="chelsea",
        methods=["saliency", "gradcam"],
        target=285,
        model_b="efficientnet_lite0.pt",
        autorun=True,
    )
    assert (widget.view, widget.server, widget.image, widget.methods, widget.target) == (
        "compare",
        embedded.url,
        "chelsea",
        "saliency,gradcam",
        "285",
    )
    assert widget.model_b == "efficientnet_lite0.pt" and widget.autorun and widget.model == ""


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda: notebook.show(42), TypeError, "job"),
        (lambda: notebook.show("  "), TypeError, "job"),
        (lambda: notebook.show(None), TypeError, "job"),
        (lambda: notebook.show("abc", server=3.5), TypeError, "server"),
        (lambda: notebook.compare(methods="saliency"), TypeError, "methods"),
        (lambda: notebook.compare(methods=["saliency", 3]), TypeError, "methods"),
        (lambda: notebook.compare(target=-1), ValueError, "target"),
        (lambda: notebook.compare(target=True), ValueError, "target"),
        (lambda: notebook.compare(image=7), TypeError, "image"),
        (lambda: notebook.compare(browser_url=8080), TypeError, "browser_url"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(embedded: Client, call, error, field):
    with pytest.raises(error, match=rf"^{field}: "):
        call()


def test_a_job_the_server_does_not_know_is_refused_naming_job(embedded: Client):
    with pytest.raises(ClientError) as refused:
        notebook.show("0123456789ab")
    assert refused.value.status == 404 and refused.value.field == "job"


def test_a_front_end_never_built_is_named_with_how_to_build_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="npm run build"):
        notebook.widget_module(tmp_path)


def test_import_convlens_stays_free_of_the_widget_until_show_is_used():
    code = (
        "import sys, convlens\n"
        "assert 'anywidget' not in sys.modules and 'convlens.notebook' not in sys.modules\n"
        "assert convlens.show is convlens.notebook.show and convlens.compare is convlens.notebook.compare\n"
        "assert 'anywidget' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serving_where_other_machines_reach_it_needs_a_token(tmp_path: Path):
    code = "from convlens import notebook\nnotebook.serve(host='0.0.0.0')\n"
    environment = {**os.environ, "CONVLENS_DATA_DIR": str(tmp_path)}
    environment.pop("CONVLENS_TOKEN", None)
    environment.pop("CONVLENS_ALLOW_NO_TOKEN", None)
    ran = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode != 0 and "BadInput" in ran.stderr and "CONVLENS_TOKEN" in ran.stderr, ran.stderr
