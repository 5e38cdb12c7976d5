"""convlens writes its own files (the default model, uploads) only into its own folder, its home, and reads the
folders a user names: ``convlens --models-dir DIR`` lists DIR's models and leaves DIR as it was.

``CONVLENS_HOME`` points the home at a tmp folder here. Exporting the default model takes about a minute, so the
home's models/ is seeded with copies of the checkout's three files (what the export would write), without the
card: the default model must still be named by the card convlens ships.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

DEFAULT_FILES = ("efficientnet_lite0.onnx", "efficientnet_lite0.pt", "efficientnet_lite0.pt2")
CARD_TITLE = "EfficientNet-Lite0 (ImageNet-1k)"


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``, hidden ones too, with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def home(models_dir: Path, tmp_path: Path) -> Path:
    """A convlens home whose models/ holds the default model's three files, copied, and nothing else."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for name in DEFAULT_FILES:
        shutil.copy(models_dir / name, home / "models" / name)
    return home


@pytest.fixture
def users_models(tmp_path: Path) -> Path:
    """A folder of the user's: one small TorchScript model with its card."""
    folder = tmp_path / "my-models"
    folder.mkdir()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(net.eval(), torch.rand(2, 3, 32, 32)), str(folder / "mine.pt"))
    (folder / "mine.json").write_text(json.dumps({"title": "mine", "input_size": [32, 32]}))
    return folder


def convlens(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "CONVLENS_HOME": str(home)}
    environment.pop("CONVLENS_MODELS_DIRS", None)
    return subprocess.run(
        [sys.executable, "-m", "convlens", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_models_dir_the_user_names_is_listed_and_left_untouched(home, users_models, tmp_path):
    before, home_before = listing(users_models), listing(home)
    answer = convlens("--models-dir", str(users_models), "models", "--json", home=home, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    models = {model["id"]: model for model in json.loads(answer.stdout)}
    assert set(models) == {*DEFAULT_FILES, "mine.pt"}
    assert models["mine.pt"]["title"] == "mine"
    assert {models[name]["title"] for name in DEFAULT_FILES} == {CARD_TITLE}
    assert listing(users_models) == before, "convlens wrote into a folder the user named"
    assert listing(home) == home_before, "the home had every file already"


@pytest.mark.slow
def test_the_default_model_in_the_home_names_its_classes(home, tmp_path):
    out = tmp_path / "out"
    answer = convlens("run", "predict", "--image", "chelsea", "--out", str(out), home=home, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["id"] == "efficientnet_lite0.onnx"
    assert (result["predictions"][0]["index"], result["predictions"][0]["label"]) == (285, "Egyptian cat")


def test_uploads_go_to_the_home(home, tmp_path, monkeypatch):
    from convlens.app import create_app

    monkeypatch.setenv("CONVLENS_HOME", str(home))
    monkeypatch.delenv("CONVLENS_DATA_DIR", raising=False)
    client = create_app().test_client()
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(buffer, "PNG")
    answer = client.post("/api/images", data={"file": (io.BytesIO(buffer.getvalue()), "grey.png")})
    assert answer.status_code == 201, answer.get_json()
    assert (home / "uploads" / f"{answer.get_json()['id']}.png").is_file()
