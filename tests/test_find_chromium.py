"""The browser tests find Chromium the way `make browser` does: CONVLENS_CHROMIUM, else chromium or
chromium-browser on the PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from convlens.testing import find_chromium


def executable(folder: Path, name: str) -> str:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def path(tmp_path, monkeypatch) -> Path:
    """An empty folder that is the whole PATH."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CONVLENS_CHROMIUM", raising=False)
    return tmp_path / "bin"


def test_debians_chromium_first_then_ubuntus_name(path):
    assert find_chromium() is None
    ubuntu = executable(path, "chromium-browser")
    assert find_chromium() == ubuntu
    debian = executable(path, "chromium")
    assert find_chromium() == debian


def test_convlens_chromium_names_it_and_only_it(path, tmp_path, monkeypatch):
    executable(path, "chromium")
    mine = executable(tmp_path / "elsewhere", "my-chrome")
    monkeypatch.setenv("CONVLENS_CHROMIUM", mine)
    assert find_chromium() == mine
    monkeypatch.setenv("CONVLENS_CHROMIUM", str(tmp_path / "missing"))
    assert find_chromium() is None, "a browser named but missing is not silently replaced by another"
