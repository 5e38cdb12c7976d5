"""The page's own .npy reader (web/src/npy.ts), fed what numpy writes: the one layout convlens serves is read
exactly; any other is refused with a reason, never misread."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytestmark = pytest.mark.browser

PARSE = """async (encoded) => {
  const { parseNpy } = await import("/assets/convlens.js");
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  try {
    const array = parseNpy(bytes.buffer);
    return { shape: array.shape, data: Array.from(array.data) };
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}"""


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> str:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def parse(page, live_server):
    page.goto(live_server + "/embed.html")
    return lambda encoded: page.evaluate(PARSE, encoded)


def test_float32_c_order_arrays_are_read_exactly(parse):
    values = np.random.default_rng(0).normal(size=(7, 5)).astype("<f4")
    values[0, 0] = -0.0
    values[1, 1] = np.float32(1e-38)
    for version in (None, (2, 0), (3, 0)):
        answer = parse(npy_bytes(values, version))
        assert answer.get("shape") == [7, 5], answer
        np.testing.assert_array_equal(np.array(answer["data"], dtype=np.float32), values.ravel())


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((3, 4), dtype="<f8"), "dtype <f8"),
        (np.zeros((3, 4), dtype=">f4"), "dtype >f4"),
        (np.zeros((3, 4), dtype="<i4"), "dtype <i4"),
        (np.asfortranarray(np.arange(12, dtype="<f4").reshape(3, 4)), "Fortran"),
    ],
)
def test_other_layouts_are_refused_with_the_reason(parse, array, reason):
    answer = parse(npy_bytes(array))
    assert "error" in answer, answer
    assert answer["error"].startswith("NpyError") and reason in answer["error"], answer["error"]


def test_truncated_or_foreign_files_are_refused(parse):
    whole = base64.b64decode(npy_bytes(np.ones((4, 4), dtype="<f4")))
    truncated = parse(base64.b64encode(whole[:-4]).decode())
    assert "needs 64 bytes" in truncated["error"], truncated
    png = parse(base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode())
    assert "does not start with" in png["error"], png
