"""Settings a user gives convlens through ``CONVLENS_*`` variables and the command line, as the README states
them: several model folders (``CONVLENS_MODELS_DIRS``, a repeated ``--models-dir``) and a stream rate that is not
a number. How ``CONVLENS_STREAM_HZ`` paces a job is in ``test_jobs.py``; ``CONVLENS_CORS_ORIGINS`` and
``CONVLENS_MAX_RUNNING_JOBS`` are in ``test_app.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convlens.app import create_app
from convlens.config import Config
from convlens.errors import BadInput

HANG_S = 300
"""The longest a ``convlens`` command may take before the test fails as hung."""


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Two model folders: ``alpha.pt`` (3 classes) in the first, ``beta.pt`` (5 classes) in the second, each a
    small traced conv net with its card."""
    import torch
    from torch import nn

    folders = []
    for name, classes in (("alpha", 3), ("beta", 5)):
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(classes)
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, classes),
        ).eval()
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(net, torch.rand(2, 3, 16, 16)), str(folder / f"{name}.pt"))
        (folder / f"{name}.json").write_text(json.dumps({"title": name.title(), "input_size": [16, 16]}))
        folders.append(folder)
    return folders[0], folders[1]


def test_the_server_lists_the_models_of_every_folder_in_convlens_models_dirs(
    two_folders, tmp_path, monkeypatch
):
    alpha, beta = two_folders
    monkeypatch.setenv("CONVLENS_MODELS_DIRS", f"{alpha}:{beta}")
    monkeypatch.setenv(
        "CONVLENS_HOME", str(tmp_path / "home")
    )  # convlens' own folder: empty, no default model
    app = create_app(Config(data_dir=tmp_path / "data", ensure_default_model=False))
    listing = {model["id"]: model for model in app.test_client().get("/api/models").get_json()}
    assert set(listing) == {"alpha.pt", "beta.pt"}
    assert (listing["alpha.pt"]["title"], listing["alpha.pt"]["num_classes"]) == ("Alpha", 3)
    assert (listing["beta.pt"]["title"], listing["beta.pt"]["num_classes"]) == ("Beta", 5)


def test_models_dir_given_twice_lists_the_models_of_both_folders(two_folders):
    # Before the command's name or after it, as `convlens models [--json] ... (and --models-dir DIR, repeatable)`.
    alpha, beta = two_folders
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "convlens",
            "--models-dir",
            str(alpha),
            "models",
            "--json",
            "--models-dir",
            str(beta),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert answer.returncode == 0, answer.stderr
    listing = {model["id"]: model for model in json.loads(answer.stdout)}
    assert {"alpha.pt", "beta.pt"} <= set(listing)
    assert listing["alpha.pt"]["num_classes"] == 3 and listing["beta.pt"]["num_classes"] == 5


def test_a_stream_rate_that_is_not_a_number_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONVLENS_STREAM_HZ", "fast")
    with pytest.raises(BadInput) as error:
        Config()
    assert error.value.field == "CONVLENS_STREAM_HZ"
    assert error.value.reason == "expected a number, got 'fast'"


def test_the_server_does_not_start_with_a_stream_rate_that_is_not_a_number(tmp_path):
    answer = subprocess.run(
        [sys.executable, "-m", "convlens", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env={**os.environ, "CONVLENS_STREAM_HZ": "fast", "CONVLENS_DATA_DIR": str(tmp_path)},
    )
    assert answer.returncode == 2, answer.stderr
    assert "convlens: error: CONVLENS_STREAM_HZ: expected a number, got 'fast'" in answer.stderr
    assert "Traceback" not in answer.stderr
