"""Headless Chromium (Debian's, driven by Playwright) on the built web front end.

The server fixture is ``live_server`` and the browser ``browser``, both from ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_pixels import checked_page

from convlens import testing

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = list(testing.CHROMIUM_ARGS)
WEB_INDEX = REPO / "web" / "dist" / "index.html"
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built front end; the tests use what `make web` built and never build it themselves."""
    if not WEB_INDEX.is_file():
        pytest.fail(
            f"{WEB_INDEX} is missing: run `make web` (cd web && npm ci && npm run build) first", pytrace=False
        )
    return WEB_INDEX.parent


@pytest.fixture
def page(browser, web_dist: Path, live_server: str) -> Iterator[object]:
    """A fresh page; uncaught page errors fail the test that caused them."""
    with checked_page(browser, base_url=live_server) as page:
        yield page


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
