"""convlens installed from its wheel, as a user of the package index gets it, serves from any folder: the page
(the built front end is in the wheel), the default model named by its card (the card and labels are in the
wheel), and its own files in the per-user data folder, never inside the environment it is installed in.

The wheel is built from a copy of the checkout (its files, and the built web/dist) and installed without its
dependencies into a fresh virtual environment, which sees the test environment's installed packages through a
``.pth`` file (no download of torch again) but not its editable convlens: the convlens imported is the wheel's.
Exporting the default model takes about a minute, so the per-user models folder is seeded with copies of the
checkout's three files (what the export would write there), without the card.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from local import REPO, free_port

pytestmark = pytest.mark.slow

DEFAULT_FILES = ("efficientnet_lite0.onnx", "efficientnet_lite0.pt", "efficientnet_lite0.pt2")
HANG_GUARD_S = 300


def checkout_copy(destination: Path, with_web_dist: bool = True) -> Path:
    """The checkout's files (tracked, or new and not ignored) and, when asked, its built web/dist."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (raw.decode() for raw in names)):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    if with_web_dist:
        shutil.copytree(REPO / "web" / "dist", destination / "web" / "dist")
    return destination


def build_wheel(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def files_under(folder: Path) -> set[str]:
    """What is in ``folder``, bytecode caches left out (Python writes them wherever it imports from)."""
    return {
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@dataclass
class Installed:
    venv: Path
    home: Path
    cwd: Path

    @property
    def user_data(self) -> Path:
        """The per-user data folder the XDG Base Directory spec gives with ``XDG_DATA_HOME`` unset."""
        return self.home / ".local" / "share" / "convlens"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = checkout_copy(root / "source")
    built = build_wheel(source, root / "dist")
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("convlens-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    # After the wheel, so that pip saw no convlens already installed. A path listed in a .pth file is searched
    # but its own .pth files are not run, so the test environment's editable convlens finder stays out.
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site_packages) / "test-dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")

    home, cwd = root / "home", root / "somewhere-else"
    cwd.mkdir()
    imported = subprocess.run(
        [
            str(python),
            "-c",
            "import convlens, convlens_plugins; print(convlens.__file__, convlens_plugins.__file__)",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in imported), imported

    models = home / ".local" / "share" / "convlens" / "models"
    models.mkdir(parents=True)
    for name in DEFAULT_FILES:
        shutil.copy(models_dir / name, models / name)
    return Installed(venv, home, cwd)


@dataclass
class Server:
    url: str
    venv_files_before: set[str]


@pytest.fixture(scope="module")
def server(installed: Installed) -> Iterator[Server]:
    """``convlens serve`` of the installed wheel, run from an unrelated folder with HOME in tmp."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CONVLENS_") and key not in ("XDG_DATA_HOME", "PYTHONPATH")
    }
    environment.update(HOME=str(installed.home), PYTHONUNBUFFERED="1")
    venv_files_before = files_under(installed.venv)
    port = free_port()
    process = subprocess.Popen(
        [str(installed.venv / "bin" / "convlens"), "serve", "--port", str(port)],
        cwd=installed.cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in process.stdout:
            output.append(line)
            if "Listening at: http://" in line:  # gunicorn says so once its socket listens
                listening.set()
        listening.set()  # it exited

    threading.Thread(target=read, daemon=True).start()
    try:
        assert listening.wait(HANG_GUARD_S) and process.poll() is None, "".join(output)
        url = f"http://127.0.0.1:{port}"
        # The worker builds the app after it forks (the first time writing the default model): the request waits
        # in the socket's backlog until then.
        assert requests.get(url + "/api/models", timeout=HANG_GUARD_S).ok, "".join(output)
        yield Server(url, venv_files_before)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_installed_page_is_served(server: Server):
    answer = requests.get(server.url + "/", timeout=60)
    assert answer.status_code == 200
    assert "<convlens-app></convlens-app>" in answer.text


def test_the_installed_default_model_names_the_cat(server: Server):
    answer = requests.get(
        server.url + "/api/models/efficientnet_lite0.onnx/predict?image=chelsea", timeout=120
    )
    assert answer.status_code == 200, answer.text
    top = answer.json()[0]
    assert (top["index"], top["label"]) == (285, "Egyptian cat")
    model = requests.get(server.url + "/api/models/efficientnet_lite0.onnx", timeout=120).json()
    assert model["title"] == "EfficientNet-Lite0 (ImageNet-1k)"


def test_the_installed_server_keeps_its_files_in_the_per_user_folder(installed: Installed, server: Server):
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(buffer, "PNG")
    answer = requests.post(
        server.url + "/api/images", files={"file": ("grey.png", buffer.getvalue(), "image/png")}, timeout=60
    )
    assert answer.status_code == 201, answer.text
    assert (installed.user_data / "uploads" / f"{answer.json()['id']}.png").is_file()
    assert sorted(path.name for path in (installed.user_data / "models").iterdir()) == sorted(DEFAULT_FILES)
    assert files_under(installed.venv) == server.venv_files_before, "convlens wrote inside its environment"
    assert not any(installed.cwd.iterdir()), "convlens wrote into the folder it was started from"


@pytest.mark.browser
def test_the_installed_page_renders_in_chromium(server: Server, browser):
    errors: list[str] = []
    page = browser.new_page()
    try:
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        # <convlens-app> drew its model picker from the API: the page's script ran and reached the server.
        page.get_by_test_id("model-select").locator('option[value="efficientnet_lite0.onnx"]').wait_for(
            state="attached", timeout=60_000
        )
    finally:
        page.close()
    assert not errors, errors


def test_a_wheel_without_the_built_front_end_is_not_built(tmp_path: Path):
    source = checkout_copy(tmp_path / "source", with_web_dist=False)
    built = build_wheel(source, tmp_path / "dist")
    assert built.returncode != 0
    assert "web/dist/index.html is missing" in built.stdout + built.stderr
    assert not list(tmp_path.glob("dist/*.whl"))
