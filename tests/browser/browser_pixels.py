"""Reading what a page drew (a canvas's exact pixels, the server's PNGs, the colour table); a checked page."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

CANVAS_PNG = "(canvas) => canvas.toDataURL('image/png')"


def canvas_pixels(locator) -> np.ndarray:
    """HxWx3 uint8 pixels of a <canvas> (lossless: through a PNG data URL)."""
    url = locator.evaluate(CANVAS_PNG)
    return png_pixels(base64.b64decode(url.split(",", 1)[1]))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def fetch_png(page, url: str) -> np.ndarray:
    answer = page.request.get(url)
    assert answer.ok, f"{url}: {answer.status}"
    return png_pixels(answer.body())


def fetch_npy(page, url: str) -> np.ndarray:
    answer = page.request.get(url)
    assert answer.ok, f"{url}: {answer.status}"
    return np.load(io.BytesIO(answer.body()), allow_pickle=False)


def inferno(page, live_server: str) -> np.ndarray:
    """The server's inferno table, 256x3 in 0-255 (tests/test_api.py checks it against colormaps.py)."""
    return np.array(page.request.get(f"{live_server}/api/colormaps/inferno").json()["colors"], dtype=np.int16)


def compare_normalisation(attribution: np.ndarray) -> tuple[np.ndarray, float]:
    """The comparison view's rule, written independently: positive part / its 99th percentile, clipped."""
    positive = np.maximum(attribution.astype(np.float64), 0.0)
    scale = float(np.percentile(positive, 99))
    if scale <= 0:
        scale = float(positive.max())
    normalised = np.minimum(positive / scale, 1.0) if scale > 0 else np.zeros_like(positive)
    return normalised, scale


def coloured(normalised: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[np.floor(np.clip(normalised, 0, 1) * 255 + 0.5).astype(np.intp)]


@contextmanager
def checked_page(browser, **options) -> Iterator[object]:
    """A page in a fresh 1440x1000 context (``options`` for the context too), 30 s timeouts; uncaught page errors
    fail the test once it is done with the page."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, **options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
