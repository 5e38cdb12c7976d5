"""The notebook widget in a real JupyterLab (from PyPI) in headless Chromium: a notebook starts convlens' embedded
server in its kernel, runs a job and shows it with ``convlens.show``, then ``convlens.compare``; the widget's
canvas must hold the job's picture as the server gives it over REST, the comparison's map its own, the widget's
Stop must stop a running job, and a job of a server that needs a token must show too."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import pytest
import requests
from browser_pixels import canvas_pixels, checked_page, inferno, png_pixels
from test_compare import check_normalised_map

from local import REPO, free_port

pytestmark = pytest.mark.browser

NOTEBOOK = "convlens-widget.ipynb"
CELLS = (
    "import convlens\nclient = convlens.notebook.serve()\nprint('convlens server', client.url)",
    "job = client.run('deepdream', image='chelsea', params={'steps': 12, 'octaves': 1}, seed=1)\njob",
    "convlens.show(job)",
    "convlens.compare(image='chelsea', methods=['saliency'], autorun=True)",
    "long = client.run('deepdream', image='chelsea', params={'steps': 500, 'octaves': 1}, seed=2)\n"
    "convlens.show(long.id)",
    # A server of its own that needs a token: the widget must hand the client's token to the page.
    "from convlens.client import Client\n"
    "guarded = Client(GUARDED_URL, token=GUARDED_TOKEN)\n"
    "convlens.show(guarded.run('deepdream', image='chelsea', params={'steps': 3, 'octaves': 1}, seed=3))",
)
GUARDED_TOKEN = secrets.token_hex(16)
STARTS_S = 120
STATE = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""


def kernel_processes(runtime_dir: Path) -> list[int]:
    """The pids of the kernels of this JupyterLab (their command line names a connection file in its runtime
    folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(runtime_dir) in command and "kernel" in command:
                found.append(int(entry.name))
    return found


@pytest.fixture
def guarded_server(start_server) -> str:
    """A ``convlens serve`` with a token, whose URL the notebook's last cell is given."""
    return start_server(env={"CONVLENS_TOKEN": GUARDED_TOKEN})


@pytest.fixture
def jupyter_lab(tmp_path: Path, models_dir: Path, guarded_server: str) -> Iterator[tuple[str, str, Path]]:
    """``jupyter lab`` on a free port over a folder holding the notebook, every Jupyter and IPython folder in
    ``tmp_path`` and a kernel spec of this Python; its URL, token and runtime folder. Its kernels and itself are
    gone afterwards."""
    folders = {
        name: tmp_path / name.lower() for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR")
    }
    folders["JUPYTER_RUNTIME_DIR"] = tmp_path / "runtime"
    folders["JUPYTER_PATH"] = tmp_path / "path"
    for folder in folders.values():
        folder.mkdir()
    spec = folders["JUPYTER_PATH"] / "kernels" / "python3"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (convlens test)",
                "language": "python",
            }
        )
    )
    # No "get notified about Jupyter news?" toast over the outputs.
    settings = folders["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    settings.joinpath("notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    root = tmp_path / "notebooks"
    root.mkdir()
    sources = [
        source.replace("GUARDED_URL", repr(guarded_server)).replace("GUARDED_TOKEN", repr(GUARDED_TOKEN))
        for source in CELLS
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / NOTEBOOK)

    token, port = secrets.token_hex(16), free_port()
    environment = {
        **os.environ,
        **{name: str(folder) for name, folder in folders.items()},
        "CONVLENS_DATA_DIR": str(tmp_path / "convlens-data"),
        "CONVLENS_MODELS_DIRS": str(models_dir),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "jupyter.log"
    command = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # a container's root; it refuses to start otherwise
    with open(log_path, "w") as log:
        lab = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTS_S
        while True:
            assert lab.poll() is None, f"jupyter lab exited with {lab.returncode}:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/api/status", params={"token": token}, timeout=10).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (
                f"jupyter lab did not answer in {STARTS_S} s:\n{log_path.read_text()}"
            )
            time.sleep(0.5)
        yield url, token, folders["JUPYTER_RUNTIME_DIR"]
    finally:
        try:
            for kernel in requests.get(f"{url}/api/kernels", params={"token": token}, timeout=10).json():
                requests.delete(f"{url}/api/kernels/{kernel['id']}", params={"token": token}, timeout=30)
        except requests.RequestException:
            pass  # it is gone already: whatever kernel it left is killed below
        lab.terminate()  # SIGTERM: it shuts its kernels down and leaves
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
        for pid in kernel_processes(folders["JUPYTER_RUNTIME_DIR"]):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"kernel {pid} outlived its JupyterLab")


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()


def test_a_notebook_shows_a_running_job_and_the_comparison_in_the_widget(browser, jupyter_lab, artifacts):
    url, token, runtime_dir = jupyter_lab
    with checked_page(browser) as page:
        page.set_default_timeout(120_000)
        page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        # Run All before the kernel is connected runs nothing: wait for the status bar's "| Idle".
        page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()
        run_all_cells(page)
        try:
            view = page.locator(".jp-OutputArea-output convlens-job-view").nth(0)
            view.wait_for(state="attached")
            server, job_id = view.get_attribute("server"), view.get_attribute("job")
            assert server.startswith("http://127.0.0.1:") and server != url, server
            # A frame arrives: the canvas is drawn (its data-seq set) with a picture, not a blank.
            canvas = view.locator("canvas[data-seq]").first
            canvas.wait_for(state="attached")
            assert canvas_pixels(canvas).std() > 10
            page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle())

            # The newest frame again, losslessly, is the result's picture the server gives over REST.
            view.evaluate("(view) => view.setAttribute('format', 'png')")
            page.wait_for_function(
                f"(view) => ({STATE})(view) === 'done' && view.shadowRoot.querySelector('canvas[data-seq]')",
                arg=view.element_handle(),
            )
            result = requests.get(f"{server}/api/jobs/{job_id}/result", timeout=60).json()
            expected = png_pixels(requests.get(server + result["images"]["dream"], timeout=60).content)
            drawn = canvas_pixels(view.locator("canvas[data-seq]").first)
            assert drawn.shape == expected.shape, (drawn.shape, expected.shape)
            assert np.abs(drawn - expected).max() <= 2, "the widget's canvas is not the job's picture"
            assert expected.std() > 10

            # The comparison view starts its own job from the notebook's page (another origin than the server's).
            compare = page.locator(".jp-OutputArea-output convlens-compare")
            compare.wait_for(state="attached")
            assert compare.get_attribute("server") == server
            page.locator('[data-testid="compare-grid"][data-state="done"]').wait_for(state="attached")
            check_normalised_map(page, server, "saliency", "efficientnet_lite0.onnx", inferno(page, server))
            # The pictures' thumbnails load too, from the server's origin into the notebook's page.
            thumb = compare.locator('[data-testid="image-thumb"][data-image="chelsea"] img')
            thumb.scroll_into_view_if_needed()
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
            )

            # The widget's Stop, from the notebook's page, stops a job running on the server.
            running = page.locator(".jp-OutputArea-output convlens-job-view").nth(1)
            running.wait_for(state="attached")
            page.wait_for_function(f"(view) => ({STATE})(view) === 'running'", arg=running.element_handle())
            running.get_by_test_id("stop").click()
            page.wait_for_function(f"(view) => ({STATE})(view) === 'stopped'", arg=running.element_handle())
            stopped = requests.get(f"{server}/api/jobs/{running.get_attribute('job')}", timeout=60).json()
            assert stopped["state"] == "stopped"

            # The token server's job: its socket and REST calls carry the token the kernel's client has.
            guarded = page.locator(".jp-OutputArea-output convlens-job-view").nth(2)
            guarded.wait_for(state="attached")
            guarded.scroll_into_view_if_needed()  # for the screenshot
            page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=guarded.element_handle())
            assert guarded.locator("canvas[data-seq]").count() > 0
            # Its result pictures too: another server's <img> carries the token in its URL (no cookie here).
            result_image = guarded.locator('[data-testid="result-image"] img').first
            result_image.wait_for(state="attached")
            result_image.scroll_into_view_if_needed()
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=result_image.element_handle()
            )
        except Exception as error:
            raise AssertionError(
                f"{error}\nthe cells' outputs: {page.locator('.jp-OutputArea').all_inner_texts()}"
            ) from error
        finally:
            page.screenshot(path=str(artifacts / "notebook-widget.png"), full_page=True)
    assert kernel_processes(runtime_dir), "the notebook's kernel should be running until the fixture ends"
