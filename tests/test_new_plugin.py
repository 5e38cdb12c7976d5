"""``convlens new-plugin``: the distribution it writes installs into a fresh virtual environment and passes its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import convlens
from convlens.cli import main

ONLY_PLUGINS_ENV = "CONVLENS_PLUGINS"


def without_plugin_filter() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != ONLY_PLUGINS_ENV}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """``convlens new-plugin my-lens`` run as a user runs it, in a fresh folder, so it writes ``./my-lens``."""
    cwd = tmp_path_factory.mktemp("new-plugin")
    completed = subprocess.run(
        [sys.executable, "-m", "convlens", "new-plugin", "my-lens"],
        cwd=cwd, capture_output=True, text=True, env=without_plugin_filter(),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"out": str(cwd / "my-lens")}
    return cwd / "my-lens"


@pytest.fixture(scope="module")
def venv_python(generated, tmp_path_factory) -> Path:
    """A fresh virtual environment with the generated plugin ``pip install -e``'d into it, offline.

    The machine has no network, so the venv gets convlens and its dependencies (torch, pytest, setuptools, pip)
    from this checkout's environment through one ``.pth`` line calling ``site.addsitedir`` on its
    site-packages: unlike a plain path line, that also runs that folder's own ``.pth`` files, so convlens' editable
    finder (``server/`` and ``plugins/``) and its dist-info (entry points, the ``pytest11`` fixtures) are seen,
    as they would be in a user's environment. The plugin itself is installed into the new venv only.
    """
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "convlens-dev.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-e", str(generated)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert list(Path(purelib).glob("my_lens-0.1.0.dist-info")), "installed into the new venv"
    return python


def test_generated_plugin_passes_its_own_tests_in_a_fresh_venv(generated, venv_python):
    completed = subprocess.run(
        [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(generated / "tests")],
        capture_output=True, text=True, env=without_plugin_filter(), cwd=generated,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "2 passed" in completed.stdout


def test_generated_plugin_is_listed_with_its_declared_support(venv_python):
    listed = subprocess.run(
        [str(venv_python), "-m", "convlens", "methods", "--json"],
        capture_output=True, text=True, check=True, env=without_plugin_filter(),
    )  # fmt: skip
    methods = {method["name"]: method for method in json.loads(listed.stdout)}
    assert methods["my_lens_channel_mean"]["plugin"] == "my_lens"
    assert methods["my_lens_channel_mean"]["needs"] == ["layers"]
    code = (
        "import json; from convlens.plugins import get_methods, get_plugin_manager;"
        "from convlens.plugin_info import describe_plugins;"
        "print(json.dumps(describe_plugins(get_plugin_manager(), get_methods())))"
    )
    described = subprocess.run(
        [str(venv_python), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=without_plugin_filter(),
    )
    (plugin,) = [p for p in json.loads(described.stdout) if p["name"] == "my_lens"]
    assert plugin["distribution"] == "my-lens" and plugin["version"] == "0.1.0"
    assert plugin["framework_classifier"] and plugin["methods"] == ["my_lens_channel_mean"]
    assert plugin["supports"]["compatible"] is True
    assert plugin["supports"]["formats"] == ["export", "onnx", "torchscript"]


def test_generated_distribution_declares_the_entry_point_and_a_range_around_this_convlens(
    generated, venv_python
):
    code = (
        "import json; from importlib.metadata import distribution; d = distribution('my-lens');"
        "print(json.dumps({'requires': d.requires, 'entry_points': [[e.group, e.name, e.value] for e in d.entry_points]}))"
    )
    installed = json.loads(
        subprocess.run([str(venv_python), "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert installed["entry_points"] == [["convlens", "my_lens", "my_lens"]]
    (requirement,) = [Requirement(line) for line in installed["requires"] if line.startswith("convlens")]
    assert requirement.specifier.contains(convlens.__version__)
    assert not requirement.specifier.contains("1000.0")
    assert (generated / "README.md").read_text().startswith("# my-lens\n")


@pytest.mark.parametrize(
    "name",
    ["my lens", "lens-é", "1lens", "-lens", "lens-", "class", "a" * 65, "json", "basics", ""],
    ids=["space", "unicode", "leading-digit", "leading-dash", "trailing-dash", "keyword", "too-long",
         "shadows-a-module", "an-installed-plugin", "empty"],
)  # fmt: skip
def test_new_plugin_refuses_a_name_that_makes_no_package(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "--", name]) == 2  # "--": "-lens" is a name, not an option
    assert capsys.readouterr().err.startswith("convlens: error: name: ")
    assert list(tmp_path.iterdir()) == []


def test_new_plugin_never_writes_into_a_folder_that_has_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["new-plugin", "my-lens", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("convlens: error: out: ")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["new-plugin", "my-lens", "--out", str(a_file)]) == 2
    assert a_file.read_text() == "x"


def test_new_plugin_writes_into_an_empty_folder_it_is_given(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["new-plugin", "Deep.Lens_2", "--out", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "src/deep_lens_2/__init__.py", "tests/test_deep_lens_2.py"
    ]  # fmt: skip
    assert '"Deep.Lens_2"' in (out / "pyproject.toml").read_text()
