"""What the README's API section promises of the server, checked through Flask's test client on an app made as
``convlens serve`` makes it: CORS, the 500 body, a plugin's crash, the job queue, pause and resume over REST,
thumbnails and the job list.

The app serves a small TorchScript model written into ``tmp_path`` and, beside the built-in ``basics`` plugin,
a plugin of this module whose methods wait on ``threading.Event`` gates the test opens, so a test knows where a
job is without sleeping; every wait is a hang guard.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convlens.app
from convlens import hookimpl
from convlens.app import create_app
from convlens.config import Config
from convlens.events import Progress, Result
from convlens.methods import Method
from convlens.params import Param
from convlens.plugins import make_plugin_manager

HANG_S = 120
"""The longest any wait here may take before the test fails as hung."""
MODEL = "small.pt"
SCRIPT = "/assets/convlens.js"
"""The script a page that embeds a view loads (README, "Embedding a view")."""


@dataclass
class Gate:
    """How a test holds and releases a job of ``held`` or ``paced``, and what the job saw."""

    entered: threading.Event = field(default_factory=threading.Event)
    """Set when the method's ``run`` has begun."""
    at_pause_point: threading.Event = field(default_factory=threading.Event)
    """``paced``: set after its first step, while it waits for ``go``."""
    go: threading.Event = field(default_factory=threading.Event)
    yielding: threading.Event = field(default_factory=threading.Event)
    """``paced``: set after ``go``, just before it yields its second step."""
    resumed: threading.Event = field(default_factory=threading.Event)
    """Set by the test just before it asks for a resume."""
    advanced_after_resume: bool | None = None
    """Whether the job asked for the step after the pause only once the test had resumed it."""


GATES: dict[str, Gate] = {}


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(HANG_S), f"hung: {what} within {HANG_S} s"


class LensCracked(Exception):
    """A plugin's own bug, not a ``BadInput``."""


def run_crash(ctx):
    yield Progress(1, 2)
    raise LensCracked("the lens cracked at step 2")


def run_held(ctx):
    """Holds until its gate's ``go``, then one step."""
    gate = GATES[ctx.params["gate"]]
    gate.entered.set()
    wait(gate.go, "the test to let the job go")
    yield Progress(1, 1)
    gate.advanced_after_resume = gate.resumed.is_set()
    yield Result(data={"steps": 1})


def run_paced(ctx):
    """Three steps; after the first it waits for its gate's ``go`` (the test pauses it meanwhile)."""
    gate = GATES[ctx.params["gate"]]
    gate.entered.set()
    yield Progress(1, 3)
    gate.at_pause_point.set()
    wait(gate.go, "the test to let the job go")
    gate.yielding.set()
    yield Progress(2, 3)
    # A paused job asks for no next event, so this line runs only once the job was resumed.
    gate.advanced_after_resume = gate.resumed.is_set()
    yield Progress(3, 3)
    yield Result(data={"steps": 3})


class AppTestMethods:
    @hookimpl
    def register_methods(self):
        gate = (Param("gate", "string", ""),)
        return [
            Method(name="crash", title="Crash", topic="tests", run=run_crash),
            Method(name="held", title="Held", topic="tests", run=run_held, params=gate),
            Method(name="paced", title="Paced", topic="tests", run=run_paced, params=gate),
        ]


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory) -> Path:
    """A folder with one small traced conv net, ``small.pt`` (16x16 input, 3 classes), and its card."""
    import torch
    from torch import nn

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, torch.rand(2, 3, 16, 16)), str(folder / MODEL))
    (folder / "small.json").write_text(json.dumps({"title": "Small", "input_size": [16, 16]}))
    return folder


@pytest.fixture
def make_app(models_folder, tmp_path, monkeypatch):
    """``make_app()``: a test client of a new app serving ``small.pt`` with this module's plugin and the settings
    in the environment, read as ``convlens serve`` reads them."""
    monkeypatch.setenv("CONVLENS_HOME", str(tmp_path / "home"))  # no default model, none written

    def plugins():
        pm = make_plugin_manager({"basics"})
        pm.register(AppTestMethods(), name="app_tests")
        return pm

    monkeypatch.setattr(convlens.app, "get_plugin_manager", plugins)

    def make():
        config = Config(models_dirs=[models_folder], data_dir=tmp_path / "data", ensure_default_model=False)
        return create_app(config).test_client()

    return make


@pytest.fixture
def client(make_app):
    """This module's app (in place of conftest's, which serves the default model)."""
    return make_app()


def submit(client, method: str, **params) -> str:
    answer = client.post(
        "/api/jobs", json={"method": method, "model": MODEL, "image": "chelsea", "params": params}
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["id"]


def gated(client, method: str) -> tuple[str, Gate]:
    """A job of ``method`` with a new gate; its id and the gate."""
    key = f"gate{len(GATES)}"
    GATES[key] = Gate()
    return submit(client, method, gate=key), GATES[key]


def ended(client, job_id: str) -> dict:
    """The job, once it has ended."""
    job = client.application.extensions["convlens"].jobs.get(job_id)
    wait(job.ended, f"job {job_id} to end")
    return client.get(f"/api/jobs/{job_id}").get_json()


def job(client, job_id: str) -> dict:
    answer = client.get(f"/api/jobs/{job_id}")
    assert answer.status_code == 200
    return answer.get_json()


# -- CORS ------------------------------------------------------------------------------------------------

ELSEWHERE = "https://pages.example"


def preflight(client, path: str, origin: str = ELSEWHERE):
    """The browser's ``OPTIONS`` before a cross-origin JSON POST (``Content-Type`` is not a simple header)."""
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_by_default_every_origin_may_read_the_api_and_load_the_script(make_app, monkeypatch):
    monkeypatch.delenv("CONVLENS_CORS_ORIGINS", raising=False)
    client = make_app()
    for path in ("/api/jobs", "/api/images", "/api/jobs/nope", SCRIPT):
        answer = client.get(path, headers={"Origin": ELSEWHERE})
        assert answer.headers.get("Access-Control-Allow-Origin") == "*", path
    assert client.get(SCRIPT).status_code == 200, "the built front end is served"


def test_a_listed_page_elsewhere_may_post_a_job_after_the_preflight(make_app, monkeypatch):
    # <convlens-compare> on another site starts its jobs with a JSON POST; the browser asks first. With "*"
    # any page may read, and only a listed one change state (tests/test_auth.py).
    monkeypatch.setenv("CONVLENS_CORS_ORIGINS", f"*, {ELSEWHERE}")
    client = make_app()
    for path in ("/api/jobs", "/api/jobs/some-job/stop"):
        answer = preflight(client, path)
        assert answer.status_code == 200, path
        assert answer.headers.get("Access-Control-Allow-Origin") == ELSEWHERE
        assert "POST" in answer.headers.get("Access-Control-Allow-Methods", "").replace(" ", "").split(",")
        allowed = answer.headers.get("Access-Control-Allow-Headers", "").lower().replace(" ", "").split(",")
        assert "content-type" in allowed, path


def test_only_the_listed_origins_get_the_header(make_app, monkeypatch):
    monkeypatch.setenv("CONVLENS_CORS_ORIGINS", "https://one.example, https://two.example")
    client = make_app()
    for origin in ("https://one.example", "https://two.example"):
        for path in ("/api/jobs", SCRIPT):
            answer = client.get(path, headers={"Origin": origin})
            assert answer.headers.get("Access-Control-Allow-Origin") == origin, (origin, path)
            assert "Origin" in answer.headers.get_all("Vary"), "a cache keeps one answer per origin"
        assert preflight(client, "/api/jobs", origin).headers.get("Access-Control-Allow-Origin") == origin
    for origin in (ELSEWHERE, "https://one.example.evil", None):
        headers = {"Origin": origin} if origin else {}
        for path in ("/api/jobs", SCRIPT):
            assert "Access-Control-Allow-Origin" not in client.get(path, headers=headers).headers, (
                origin,
                path,
            )
        refused = preflight(client, "/api/jobs", origin or "null")
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert "Access-Control-Allow-Headers" not in refused.headers


# -- failures --------------------------------------------------------------------------------------------


def test_an_unexpected_error_in_a_request_is_a_500_naming_its_type(client, monkeypatch):
    store = client.application.extensions["convlens"].models

    def broken_get(model_id):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(store, "get", broken_get)
    answer = client.get(f"/api/models/{MODEL}")
    assert answer.status_code == 500
    assert answer.get_json() == {"error": "internal error: RuntimeError", "field": None}
    monkeypatch.undo()
    assert client.get(f"/api/models/{MODEL}").get_json()["id"] == MODEL, "the server stays up"


def test_a_plugin_that_crashes_fails_its_job_and_the_next_job_runs(client):
    crashed = ended(client, submit(client, "crash"))
    assert crashed["state"] == "failed"
    assert crashed["error"] == {"error": "LensCracked: the lens cracked at step 2", "field": None}
    assert crashed["progress"]["step"] == 1, "what it did before the crash is kept"
    after = ended(client, submit(client, "predict"))
    assert after["state"] == "done", after["error"]


# -- the queue, pause and resume --------------------------------------------------------------------------


def test_with_one_slot_a_second_job_waits_queued_and_a_pause_there_holds_it(make_app, monkeypatch):
    monkeypatch.setenv("CONVLENS_MAX_RUNNING_JOBS", "1")
    client = make_app()
    first, first_gate = gated(client, "held")
    wait(first_gate.entered, "the first job to start")
    second, second_gate = gated(client, "held")
    assert job(client, second)["state"] == "queued"
    paused = client.post(f"/api/jobs/{second}/pause")
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused", "a queued job pauses at once"
    assert not second_gate.entered.is_set()

    first_gate.go.set()
    first_job = ended(client, first)
    assert first_job["state"] == "done", first_job["error"]
    held = job(client, second)
    assert held["state"] == "paused" and held["started"] is None, "a paused job is given no slot"

    second_gate.go.set()
    second_gate.resumed.set()
    resumed = client.post(f"/api/jobs/{second}/resume")
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "running", "the slot is free"
    second_job = ended(client, second)
    assert second_job["state"] == "done", second_job["error"]
    assert second_job["started"] >= first_job["finished"], "it started only once the first had finished"
    assert second_gate.advanced_after_resume is True, "no step was taken while it was paused"


def test_pause_and_resume_over_rest(client):
    job_id, gate = gated(client, "paced")
    wait(gate.at_pause_point, "the job's first step")
    paused = client.post(f"/api/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    gate.go.set()
    # The method yields its second step now, and a job that ignored the pause would take it and go on, on
    # the thread that holds the GIL while this one wakes.
    wait(gate.yielding, "the job's second step")
    held = job(client, job_id)
    assert held["state"] == "paused" and held["progress"]["step"] == 1

    gate.resumed.set()
    resumed = client.post(f"/api/jobs/{job_id}/resume")
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "running"
    finished = ended(client, job_id)
    assert finished["state"] == "done", finished["error"]
    assert finished["progress"]["step"] == 3 and finished["result"]["data"] == {"steps": 3}
    assert gate.advanced_after_resume is True, "the steps stopped while it was paused"


def test_an_unknown_job_action_is_a_404_naming_the_action(client):
    job_id = submit(client, "predict")
    answer = client.post(f"/api/jobs/{job_id}/rewind")
    assert answer.status_code == 404
    assert answer.get_json()["field"] == "action" and "rewind" in answer.get_json()["error"]
    assert ended(client, job_id)["state"] == "done"


def test_jobs_are_listed_newest_first(client):
    ids = [submit(client, "predict") for _ in range(3)]
    for job_id in ids:
        ended(client, job_id)
    listed = [entry["id"] for entry in client.get("/api/jobs").get_json()["jobs"]]
    assert listed == ids[::-1]


# -- thumbnails --------------------------------------------------------------------------------------------


def png(answer) -> np.ndarray:
    assert answer.status_code == 200 and answer.mimetype == "image/png", answer.get_json(silent=True)
    return np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"))


@pytest.mark.parametrize("size", [8, 100, 300, 451, 4096])
def test_a_thumbnail_fits_the_size_with_the_aspect_kept(client, size):
    original = png(client.get("/api/images/chelsea"))
    height, width = original.shape[:2]  # 300 x 451
    thumbnail = png(client.get(f"/api/images/chelsea?size={size}"))
    scale = min(1.0, size / max(height, width))  # a thumbnail is never enlarged
    assert thumbnail.shape[1] == round(width * scale)
    assert abs(thumbnail.shape[0] - height * scale) <= 1
    # The whole picture, scaled down, not a crop: close to PIL's own resize of it.
    expected = np.asarray(Image.fromarray(original).resize(thumbnail.shape[1::-1], Image.Resampling.BOX))
    assert np.abs(thumbnail.astype(float) - expected).mean() < 8


@pytest.mark.parametrize("size", ["0", "7", "4097", "-5", "abc", "12.5", "１２", "²", "", "9" * 5000])
def test_a_bad_thumbnail_size_is_a_400_naming_size(client, size):
    answer = client.get("/api/images/chelsea", query_string={"size": size})
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "size" and answer.get_json()["error"]


def test_a_run_names_models_of_the_servers_own_folders_not_only_the_process_defaults(
    models_folder, tmp_path, monkeypatch
):
    """The app's model store reaches the jobs: ``other.pt`` is in a folder only the app's Config names (the
    process default, ``Config()`` under an empty home, has no models), so only that store can find it."""
    import torch
    from torch import nn

    monkeypatch.setenv("CONVLENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVLENS_MODELS_DIRS", raising=False)
    monkeypatch.setattr(
        convlens.app, "get_plugin_manager", lambda: make_plugin_manager({"basics", "adversarial"})
    )
    folder = tmp_path / "more-models"
    folder.mkdir()
    torch.manual_seed(1)
    other = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(other, torch.rand(2, 3, 16, 16)), str(folder / "other.pt"))
    (folder / "other.json").write_text(json.dumps({"title": "Other", "input_size": [16, 16]}))
    config = Config(
        models_dirs=[models_folder, folder], data_dir=tmp_path / "data", ensure_default_model=False
    )
    client = create_app(config).test_client()

    def noise_run(models):
        return client.post(
            "/api/jobs",
            json={
                "method": "noise_predictions",
                "model": MODEL,
                "image": "chelsea",
                "params": {"models": models, "draws": 4, "batch": 4},
            },
        )

    answer = noise_run(["other.pt"])
    assert answer.status_code == 202, answer.get_json()
    done = ended(client, answer.get_json()["id"])
    assert done["state"] == "done", done["error"]
    by_model = done["result"]["data"]["by_model"]
    assert [entry["model"] for entry in by_model] == [MODEL, "other.pt"]
    # other.pt's top class of each pattern is that of its module, run here in plain torch (ImageNet normalisation).
    patterns = np.load(io.BytesIO(client.get(done["result"]["array_urls"]["patterns"]).data))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = other(
            (torch.from_numpy(patterns).permute(0, 3, 1, 2) - mean[:, None, None]) / std[:, None, None]
        )
    tops = [entry[0]["index"] for entry in by_model[1]["patterns"].values()]
    assert tops == logits.argmax(dim=1).tolist()

    unknown = noise_run(["elsewhere.pt"])
    assert unknown.status_code == 400
    assert unknown.get_json()["field"] == "params.models" and "'elsewhere.pt'" in unknown.get_json()["error"]
