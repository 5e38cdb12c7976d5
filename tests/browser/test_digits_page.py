"""The digits view in a real browser: learning curves drawn with uPlot while both nets train, their confusion
matrices, and a digit drawn on the pad (mouse, touch) turned into the nets' input as the data set's digits were
made (scikit-learn's 8×8; an MNIST-like IDX set's 28×28), checked against the same downsampling written here, and
both saved nets' probabilities checked against their ONNX files run with ONNX Runtime; a late answer to an older
drawing is dropped; digits drawn small or off-centre (by hand, and the data set's own) are read as drawn."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests
from browser_pixels import canvas_pixels, checked_page
from PIL import Image
from sklearn.datasets import load_digits

from convlens_plugins.training.digits import load_digits_split
from local import start_serve

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"
EPOCHS = 3
NETS = ("one_layer", "two_layer")
ONE = [(0.5, 0.12), (0.5, 0.88)]
"""A "1": a vertical stroke down the middle of the pad, in shares of its width and height."""
NET_COLOURS = {"one_layer": (31, 119, 180), "two_layer": (255, 127, 14)}
CONFUSION_COLOUR = np.array([31, 119, 180])
"""The colours of web/src/digits-view.ts and web/src/confusion-matrix.ts."""
ENDS_MS = 180_000
TERMINAL = ("done", "failed", "stopped")
MNIST_LIKE = "mnist_like"
RUN = {"layers": "both", "epochs": EPOCHS, "hidden_units": 64}


def write_mnist_like(folder: Path) -> None:
    """scikit-learn's digits in MNIST's four IDX files: each grown to 20×20 in a 28×28 frame, 0-255, ink bright."""
    digits = load_digits()
    pictures = np.zeros((len(digits.images), 28, 28), np.uint8)
    for index, image in enumerate(digits.images):
        grown = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        pictures[index, 4:24, 4:24] = np.asarray(grown)
    labels = digits.target.astype(np.uint8)
    folder.mkdir(parents=True)
    for name, values in {
        "train-images-idx3-ubyte": pictures[:1400],
        "train-labels-idx1-ubyte": labels[:1400],
        "t10k-images-idx3-ubyte": pictures[1400:],
        "t10k-labels-idx1-ubyte": labels[1400:],
    }.items():
        header = struct.pack(">I", 0x0800 + values.ndim) + struct.pack(f">{values.ndim}I", *values.shape)
        (folder / name).write_bytes(header + values.tobytes())


@pytest.fixture(scope="module")
def digits_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server of its own, so the test knows its data folder and reads the trained nets' files (URL, folder),
    with an MNIST-like data set, MNIST_LIKE."""
    data_dir = tmp_path_factory.mktemp("digits-data")
    datasets = tmp_path_factory.mktemp("digits-datasets")
    write_mnist_like(datasets / MNIST_LIKE)
    served = start_serve(models_dir, data_dir, {"CONVLENS_DATASETS_DIRS": str(datasets)})
    yield served.url, data_dir
    served.process.terminate()
    served.process.wait(timeout=30)


def train(server: str, **params) -> tuple[str, dict]:
    """A finished digits run of both nets, started through the API: its id and result.json."""
    body = {
        "method": "digits",
        "model": DEFAULT_MODEL,
        "image": "chelsea",
        "params": {**RUN, **params},
        "seed": 3,
    }
    answer = requests.post(f"{server}/api/jobs", json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    job = answer.json()["id"]
    deadline = time.monotonic() + ENDS_MS / 1000
    while (state := requests.get(f"{server}/api/jobs/{job}", timeout=30).json()["state"]) not in TERMINAL:
        assert time.monotonic() < deadline, f"the digits run is still {state}"
        time.sleep(0.3)
    assert state == "done"
    return job, requests.get(f"{server}/api/jobs/{job}/result", timeout=30).json()


@pytest.fixture(scope="module")
def trained(digits_server) -> tuple[str, dict]:
    """Both nets trained on scikit-learn's digits: the run's id and result.json."""
    return train(digits_server[0])


@pytest.fixture
def touch_page(browser, web_dist: Path, digits_server) -> Iterator[object]:
    """A page with touch input, on the digits server; uncaught page errors fail the test."""
    with checked_page(browser, has_touch=True) as page:
        yield page


def colour_count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= 2).sum())


def optdigits_input(alpha: np.ndarray) -> np.ndarray:
    """The contract's optdigits drawing, written independently, as NIST's preprocessing normalised optdigits'
    characters: pad pixels on at half ink; their bounding box scaled by 32 / its longer side (each box pixel into
    the cell its centre falls in, a cell on when at least half its pixels are; a cell no centre falls in takes the
    pixel under its centre), centred in 32×32 at ⌊(32 − size) / 2⌋; on-pixels counted in 4×4 blocks, / 16."""
    on = alpha.astype(np.int64) * 2 >= 255
    if not on.any():
        return np.zeros((8, 8))
    rows, columns = np.nonzero(on)
    top, left = rows.min(), columns.min()
    height, width = rows.max() - top + 1, columns.max() - left + 1
    longer = max(height, width)
    box = on[top : top + height, left : left + width]
    box_h, box_w = (max(1, int(np.floor(side * 32 / longer + 0.5))) for side in (height, width))
    cell_rows = np.minimum(box_h - 1, np.floor((np.arange(height) + 0.5) * 32 / longer).astype(int))
    cell_columns = np.minimum(box_w - 1, np.floor((np.arange(width) + 0.5) * 32 / longer).astype(int))
    ons, counts = np.zeros((box_h, box_w), int), np.zeros((box_h, box_w), int)
    np.add.at(ons, (cell_rows[:, None], cell_columns[None, :]), box)
    np.add.at(counts, (cell_rows[:, None], cell_columns[None, :]), 1)
    under_rows = np.minimum(height - 1, np.floor((np.arange(box_h) + 0.5) * longer / 32).astype(int))
    under_columns = np.minimum(width - 1, np.floor((np.arange(box_w) + 0.5) * longer / 32).astype(int))
    cells = np.where(counts > 0, 2 * ons >= counts, box[under_rows[:, None], under_columns[None, :]])
    bitmap = np.zeros((32, 32), bool)
    shift_row, shift_column = (32 - box_h) // 2, (32 - box_w) // 2
    bitmap[shift_row : shift_row + box_h, shift_column : shift_column + box_w] = cells
    return bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3)) / 16


def whole_pad_input(alpha: np.ndarray) -> np.ndarray:
    """The rule the pad had before: the whole pad as the 32×32 bitmap, no cropping to the ink."""
    cell = alpha.shape[0] // 32
    bitmap = alpha.astype(np.int64).reshape(32, cell, 32, cell).mean(axis=(1, 3)) >= 255 / 2
    return bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3)) / 16


def mnist_input(alpha: np.ndarray) -> np.ndarray:
    """The contract's mnist drawing, written independently: the ink's bounding box, each pad pixel into the cell
    of a 20×20-fitting box its centre falls in (cells the mean ink, 0..1), then shifted by whole pixels to bring
    the centre of mass nearest (14, 14) of 28×28, kept inside."""
    rows, columns = np.nonzero(alpha)
    top, left = rows.min(), columns.min()
    height, width = rows.max() - top + 1, columns.max() - left + 1
    scale = 20 / max(height, width)
    box_h, box_w = (max(1, int(np.floor(side * scale + 0.5))) for side in (height, width))
    ink = alpha[top : top + height, left : left + width] / 255
    cell_rows = np.minimum(box_h - 1, np.floor((np.arange(height) + 0.5) * scale).astype(int))
    cell_columns = np.minimum(box_w - 1, np.floor((np.arange(width) + 0.5) * scale).astype(int))
    sums, counts = np.zeros((box_h, box_w)), np.zeros((box_h, box_w))
    np.add.at(sums, (cell_rows[:, None], cell_columns[None, :]), ink)
    np.add.at(counts, (cell_rows[:, None], cell_columns[None, :]), 1)
    box = np.where(counts > 0, sums / np.maximum(counts, 1), 0)
    centre_row = (box.sum(axis=1) * (np.arange(box_h) + 0.5)).sum() / box.sum()
    centre_column = (box.sum(axis=0) * (np.arange(box_w) + 0.5)).sum() / box.sum()
    shift_row = int(np.clip(np.floor(14 - centre_row + 0.5), 0, 28 - box_h))
    shift_column = int(np.clip(np.floor(14 - centre_column + 0.5), 0, 28 - box_w))
    out = np.zeros((28, 28))
    out[shift_row : shift_row + box_h, shift_column : shift_column + box_w] = box
    return out


def onnx_probabilities(path: Path, values: np.ndarray) -> np.ndarray:
    """Softmax of the ONNX file's logits for the grey H×W ``values`` as a 1x3xHxW picture."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    picture = np.repeat(values[None, None].astype(np.float32), 3, axis=1)
    logits = session.run(None, {session.get_inputs()[0].name: picture})[0][0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    return probabilities / probabilities.sum()


def pad_alpha(pad) -> np.ndarray:
    alpha = pad.evaluate(
        "(c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 3))"
    )
    side = int(np.sqrt(len(alpha)))
    return np.array(alpha, dtype=np.uint8).reshape(side, side)


def answered(page) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Once every net's bars show the preview's newest input: that input and each net's ten probabilities."""
    preview = page.get_by_test_id("digit-preview")
    bars = page.get_by_test_id("digit-bars")
    page.wait_for_function(
        "([preview, ...bars]) => bars.every((b) => b.dataset.seq === preview.dataset.seq)",
        arg=[preview.element_handle(), *(bars.nth(i).element_handle() for i in range(bars.count()))],
    )
    values = np.array(preview.evaluate("(c) => JSON.parse(c.dataset.values)"))
    shown = {}
    for i in range(bars.count()):
        net = bars.nth(i).get_attribute("data-net")
        rows = bars.nth(i).locator("li")
        shown[net] = np.array([float(rows.nth(k).get_attribute("data-probability")) for k in range(10)])
        # The bars' lengths say the same: each bar's share of its track.
        widths = rows.evaluate_all(
            "(rows) => rows.map((r) => r.querySelector('.bar').getBoundingClientRect().width /"
            " r.querySelector('.track').getBoundingClientRect().width)"
        )
        assert np.array(widths) == pytest.approx(shown[net], abs=0.01)
    return values, shown


def check_drawing(page, trained_dir: Path, models: dict[str, str], drawing: str = "optdigits") -> np.ndarray:
    """The preview shows the pad's pixels downsampled as ``drawing``; each net's bars what its ONNX file says."""
    values, shown = answered(page)
    alpha = pad_alpha(page.get_by_test_id("digit-pad"))
    if drawing == "optdigits":
        assert values == pytest.approx(optdigits_input(alpha), abs=0)
    else:
        assert values == pytest.approx(mnist_input(alpha), abs=1e-9)
    assert set(shown) == set(NETS)
    for net in NETS:
        expected = onnx_probabilities(trained_dir / models[net], values)
        assert shown[net] == pytest.approx(expected, abs=1e-3), net
    return values


def test_a_run_from_the_page_draws_both_nets_curves_and_their_confusion_matrices(touch_page, digits_server):
    page = touch_page
    server, _ = digits_server
    page.goto(server + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="digits"]').click()
    page.get_by_test_id("param-layers").select_option(RUN["layers"])
    page.get_by_test_id("param-epochs").fill(str(RUN["epochs"]))
    page.get_by_test_id("param-hidden_units").fill(str(RUN["hidden_units"]))
    page.get_by_test_id("run").click()
    page.locator('[data-testid=state][data-state="done"]').wait_for(timeout=ENDS_MS)
    job = page.get_by_test_id("job-view").get_attribute("job")
    result = requests.get(f"{server}/api/jobs/{job}/result", timeout=30).json()
    assert result["data"]["drawing"] == "optdigits" and set(result["data"]["nets"]) == set(NETS)

    # The curves: every epoch on both charts, each net's colour drawn.
    page.locator(f'[data-testid=digits-curves][data-epochs="{EPOCHS}"]').wait_for()
    for chart in ("digits-loss-chart", "digits-accuracy-chart"):
        pixels = canvas_pixels(page.locator(f"[data-testid={chart}] canvas"))
        for net in NETS:
            assert colour_count(pixels, NET_COLOURS[net]) > 100, (chart, net)

    # The confusion matrices: the counts of result.json in the cells, each cell shaded by its row share.
    for net in NETS:
        counts = np.array(result["data"]["nets"][net]["confusion"])
        figure = page.locator(f'figure.confusion-box[data-net="{net}"]')
        cells = figure.locator("[data-testid=confusion-table] tr").evaluate_all(
            "(rows) => rows.slice(1).map((r) => Array.from(r.querySelectorAll('td'), (td) => Number(td.textContent)))"
        )
        assert np.array_equal(np.array(cells), counts), net
        canvas = figure.get_by_test_id("confusion")
        left, top, cell = (int(canvas.get_attribute(f"data-{name}")) for name in ("left", "top", "cell"))
        pixels = canvas_pixels(canvas)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        corners = pixels[top + 3 : top + 10 * cell : cell, left + 3 : left + 10 * cell : cell]
        expected = np.round(255 + shares[..., None] * (CONFUSION_COLOUR - 255))
        assert np.abs(corners - expected).max() <= 1, net


def open_pad(page, server: str, job: str):
    """The finished run's page, scrolled to its drawing pad; the pad."""
    page.goto(f"{server}/#job={job}")
    pad = page.get_by_test_id("digit-pad")
    pad.scroll_into_view_if_needed()
    answered(page)  # the empty pad's answers first
    return pad


def saved_models(job: str, result: dict) -> dict[str, str]:
    models = {net: f"{job}-{net}.onnx" for net in NETS}
    assert all(model in result["models"] for model in models.values())
    return models


def test_a_one_drawn_with_the_mouse_is_the_downsampled_input_and_both_nets_probabilities(
    touch_page, digits_server, trained
):
    page = touch_page
    server, data_dir = digits_server
    job, result = trained
    pad = open_pad(page, server, job)
    draw(page, pad, [ONE], steps=25)
    one = check_drawing(page, data_dir / "trained", saved_models(job, result))
    assert pad.get_attribute("data-pointer-type") == "mouse"
    # Ink down the middle two columns, in every row but the ends, and nowhere else.
    assert (one[1:7, 3:5] > 0).all() and one[:, :3].sum() == 0 and one[:, 5:].sum() == 0
    # Clear empties the pad, the input and asks the nets again.
    page.get_by_test_id("digit-clear").click()
    assert not check_drawing(page, data_dir / "trained", saved_models(job, result)).any()


def test_a_zero_drawn_with_a_finger_is_the_downsampled_input_and_both_nets_probabilities(
    touch_page, digits_server, trained
):
    page = touch_page
    server, data_dir = digits_server
    job, result = trained
    pad = open_pad(page, server, job)
    box = pad.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    ring = [
        {"x": centre_x + 0.28 * box["width"] * np.sin(a), "y": centre_y - 0.38 * box["height"] * np.cos(a)}
        for a in np.linspace(0, 2 * np.pi, 60)
    ]
    # Touches as the browser gets them from a touch screen (CDP), which it turns into pointer events.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [ring[0]]})
    for point in ring[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    zero = check_drawing(page, data_dir / "trained", saved_models(job, result))
    assert pad.get_attribute("data-pointer-type") == "touch"
    # A ring: ink round it, none in the middle.
    assert zero.sum() > 8 and zero[3:5, 3:5].sum() == 0


def test_an_answer_for_an_older_drawing_that_comes_late_is_dropped(touch_page, digits_server, trained):
    page = touch_page
    server, data_dir = digits_server
    job, result = trained
    pad = open_pad(page, server, job)
    held = []

    def hold_the_first_two(route) -> None:
        """The stroke's first question to each net waits until the page has the answers to its last."""
        if len(held) < 2:
            held.append(route)
        else:
            route.continue_()

    page.route("**/predict", hold_the_first_two)
    draw(page, pad, [ONE], steps=25)
    models = saved_models(job, result)
    final = check_drawing(page, data_dir / "trained", models)
    assert len(held) == 2 and final.sum() > 0
    for route in held:
        route.continue_()
    bars = page.get_by_test_id("digit-bars")
    page.wait_for_function(
        "(bars) => bars.every((b) => b.dataset.dropped === '1')",
        arg=[bars.nth(i).element_handle() for i in range(bars.count())],
    )
    # The bars still show the whole stroke's answers, not the stroke's start's.
    assert np.array_equal(check_drawing(page, data_dir / "trained", models), final)


def test_on_an_mnist_like_data_set_the_drawing_is_boxed_and_centred_in_28_by_28(touch_page, digits_server):
    page = touch_page
    server, data_dir = digits_server
    job, result = train(server, dataset=MNIST_LIKE, epochs=2)
    assert result["data"]["drawing"] == "mnist" and result["data"]["input_size"] == [28, 28]
    pad = open_pad(page, server, job)
    # A "7" in the pad's top-left corner: the box and the centring must move it to the middle.
    draw(page, pad, [[(0.1, 0.1), (0.45, 0.1), (0.25, 0.5)]], steps=10)
    seven = check_drawing(page, data_dir / "trained", saved_models(job, result), drawing="mnist")
    rows, columns = np.nonzero(seven)
    assert rows.max() - rows.min() + 1 == 20 or columns.max() - columns.min() + 1 == 20
    weights = seven / seven.sum()
    assert abs((weights.sum(axis=1) * (np.arange(28) + 0.5)).sum() - 14) <= 0.5
    assert abs((weights.sum(axis=0) * (np.arange(28) + 0.5)).sum() - 14) <= 0.5


def draw(page, pad, strokes: list[list[tuple[float, float]]], steps: int = 12) -> None:
    """Each stroke, a polyline in shares of the pad's width and height, drawn with the mouse (``steps`` moves a
    segment)."""
    box = pad.bounding_box()

    def at(u: float, v: float) -> tuple[float, float]:
        return box["x"] + u * box["width"], box["y"] + v * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(*stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(*point), steps=steps)
        page.mouse.up()


def ring(u: float, v: float, across: float, down: float) -> list[tuple[float, float]]:
    return [(u + across * np.sin(a), v - down * np.cos(a)) for a in np.linspace(0, 2 * np.pi, 40)]


HAND_DRAWN = {
    "a 7 filling the pad": (7, [[(0.2, 0.12), (0.8, 0.12), (0.45, 0.88)]]),
    "a 7 in the top-left corner": (7, [[(0.1, 0.1), (0.45, 0.1), (0.25, 0.5)]]),
    "a 1 down the middle": (1, [[(0.5, 0.12), (0.5, 0.88)]]),
    "a short 1 at the bottom right": (1, [[(0.8, 0.55), (0.8, 0.92)]]),
    "a 0 filling the pad": (0, [ring(0.5, 0.5, 0.28, 0.38)]),
    "a small 0 at the top right": (0, [ring(0.75, 0.3, 0.12, 0.18)]),
}
"""Digits drawn with the mouse, each with the digit it is."""


def test_hand_drawn_digits_anywhere_on_the_pad_are_read_as_drawn_by_the_two_layer_net(
    touch_page, digits_server, trained
):
    page = touch_page
    server, data_dir = digits_server
    job, result = trained
    pad = open_pad(page, server, job)
    models = saved_models(job, result)
    read = {}
    for name, (digit, strokes) in HAND_DRAWN.items():
        draw(page, pad, strokes)
        values = check_drawing(page, data_dir / "trained", models)
        probabilities = onnx_probabilities(data_dir / "trained" / models["two_layer"], values)
        read[name] = (digit, int(probabilities.argmax()), round(float(probabilities.max()), 2))
        page.get_by_test_id("digit-clear").click()
        answered(page)
    assert all(digit == top for digit, top, _ in read.values()), read


def rebuilt_bitmap(image: np.ndarray) -> np.ndarray:
    """A 32×32 bitmap whose 4×4 block counts are the 8×8 ``image`` (0..16): each block's on pixels the ones nearest
    its centre."""
    distance = (np.arange(4)[:, None] - 1.5) ** 2 + (np.arange(4)[None, :] - 1.5) ** 2
    order = np.argsort(distance.ravel(), kind="stable")
    bitmap = np.zeros((8, 4, 8, 4), bool)
    for row in range(8):
        for column in range(8):
            block = np.zeros(16, bool)
            block[order[: int(image[row, column])]] = True
            bitmap[row, :, column, :] = block.reshape(4, 4)
    return bitmap.reshape(32, 32)


def test_the_test_sets_digits_drawn_small_and_off_centre_are_read_as_well_as_the_digits_themselves(
    digits_server, trained
):
    """scikit-learn's own test digits drawn on the pad at 3/4, 1/2 and 3/8 of its side away from its centre: the
    two-layer net reads their drawings about as often as their 8×8 values as their labels, and far more often than
    through the whole pad."""
    _, data_dir = digits_server
    job, result = trained
    session = onnxruntime.InferenceSession(
        str(data_dir / "trained" / saved_models(job, result)["two_layer"]), providers=["CPUExecutionProvider"]
    )

    def read(values: np.ndarray) -> int:
        picture = np.repeat(values[None, None].astype(np.float32), 3, axis=1)
        return int(session.run(None, {session.get_inputs()[0].name: picture})[0][0].argmax())

    _, _, test_x, test_y, _ = load_digits_split(3)  # the run's seed
    images, labels = test_x.reshape(-1, 8, 8)[::2] * 16, test_y[::2]
    right = {"digits": 0, "pad": 0, "whole pad": 0}
    for scale, (top, left) in ((6, (0, 64)), (4, (120, 10)), (3, (20, 150))):
        for image, label in zip(images, labels, strict=True):
            alpha = np.zeros((256, 256), np.uint8)
            drawn = np.kron(rebuilt_bitmap(np.rint(image)), np.ones((scale, scale), bool))
            alpha[top : top + 32 * scale, left : left + 32 * scale] = drawn * 255
            right["digits"] += read(image / 16) == label
            right["pad"] += read(optdigits_input(alpha)) == label
            right["whole pad"] += read(whole_pad_input(alpha)) == label
    shares = {way: count / (3 * len(labels)) for way, count in right.items()}
    assert shares["pad"] >= shares["digits"] - 0.05 and shares["pad"] >= shares["whole pad"] + 0.4, shares


def test_a_dot_smaller_than_the_bitmap_is_scaled_up_to_fill_it(touch_page, digits_server, trained):
    page = touch_page
    server, data_dir = digits_server
    job, result = trained
    pad = open_pad(page, server, job)
    draw(page, pad, [[(0.3, 0.7), (0.31, 0.71)]])
    rows, columns = np.nonzero(pad_alpha(pad).astype(int) * 2 >= 255)
    assert 0 < rows.max() - rows.min() + 1 < 32 and columns.max() - columns.min() + 1 < 32
    dot = check_drawing(page, data_dir / "trained", saved_models(job, result))
    # A disc filling the 32×32 bitmap: its middle blocks full, its corners' blocks nearly empty.
    assert (dot[2:6, 2:6] == 1).all() and dot[[0, 0, 7, 7], [0, 7, 0, 7]].max() <= 0.25, dot
