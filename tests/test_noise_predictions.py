"""Noise predictions: seeded noise of the stated law, top-5 and top probabilities equal to a fresh forward of the
same images through the tiny net's ``nn.Module``, and the threshold and rejected shares recomputed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.errors import BadInput
from convlens.events import Frame, Predictions, Progress, Result
from convlens.images import to_tensor
from convlens.plugins import get_plugin_manager, sample_images
from convlens.runner import samples_only
from convlens.testing import make_tiny_model, of_type
from convlens_plugins.adversarial.noise import gaussian_noise

SEED = 7
DRAWS = 70
BATCH = 32
SIZE = (64, 64)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model()


@pytest.fixture(scope="module")
def events(tiny):
    from convlens.testing import run_method

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    return run_method("noise_predictions", tiny, image, seed=SEED, draws=DRAWS, batch=BATCH, models=[])


def module_probabilities(model, images: np.ndarray) -> np.ndarray:
    """Softmax of the tiny net's ``nn.Module`` on Nx3xHxW [0, 1] images, normalised by the card's mean and std."""
    mean = torch.tensor(model.card.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.card.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.module((torch.as_tensor(images, dtype=torch.float32) - mean) / std).double()
    return torch.softmax(logits, dim=1).numpy()


def expected_draws(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's two noise patterns and its ``DRAWS`` noise images, drawn with numpy from the same seed."""
    rng = np.random.default_rng(seed)
    gaussian = np.clip(rng.normal(0.5, 0.25, (1, 3, *SIZE)), 0, 1)
    uniform = rng.random((1, 3, *SIZE))
    batches = [
        np.clip(rng.normal(0.5, 0.25, (min(BATCH, DRAWS - start), 3, *SIZE)), 0, 1)
        for start in range(0, DRAWS, BATCH)
    ]
    return np.concatenate([gaussian, uniform]).astype(np.float32), np.concatenate(batches).astype(np.float32)


def test_same_seed_repeats_bit_for_bit_and_another_differs(tiny, events):
    from convlens.testing import run_method

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    again = run_method("noise_predictions", tiny, image, seed=SEED, draws=DRAWS, batch=BATCH, models=[])[-1]
    other = run_method("noise_predictions", tiny, image, seed=SEED + 1, draws=DRAWS, batch=BATCH, models=[])[
        -1
    ]
    first = events[-1]
    for name in ("top_probabilities", "patterns"):
        assert np.array_equal(first.arrays[name], again.arrays[name])
    assert first.data == again.data
    assert not np.array_equal(first.arrays["top_probabilities"], other.arrays["top_probabilities"])


def test_noise_has_mean_half_and_std_quarter_before_clipping():
    noise = gaussian_noise(np.random.default_rng(0), 64, SIZE, clip=False).astype(np.float64)
    assert noise.shape == (64, 3, *SIZE)
    assert abs(noise.mean() - 0.5) < 0.002
    assert abs(noise.std() - 0.25) < 0.002
    clipped = gaussian_noise(np.random.default_rng(0), 64, SIZE)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    assert np.array_equal(clipped, np.clip(noise, 0, 1).astype(np.float32))


def test_patterns_and_draws_are_the_seeded_numpy_noise(events):
    noises, draws = expected_draws(SEED)
    patterns = events[-1].arrays["patterns"].transpose(0, 3, 1, 2)
    assert np.array_equal(patterns[:2], noises)
    assert set(np.unique(patterns[2:])) == {0.0, 1.0}
    assert events[-1].data["draws"] == len(draws)


def test_top5_of_each_pattern_equals_a_fresh_module_forward(tiny, events):
    result = events[-1]
    probabilities = module_probabilities(tiny, result.arrays["patterns"].transpose(0, 3, 1, 2))
    reported = result.data["patterns"]
    assert list(reported) == ["gaussian", "uniform", "stripes", "checkerboard"]
    for row, top in zip(probabilities, reported.values(), strict=True):
        assert [entry["index"] for entry in top] == list(np.argsort(-row)[:5])
        np.testing.assert_allclose([entry["probability"] for entry in top], np.sort(row)[::-1][:5], rtol=1e-5)


def test_top_probabilities_and_histogram_equal_a_fresh_forward_of_the_draws(tiny, events):
    _, draws = expected_draws(SEED)
    result = events[-1]
    oracle = module_probabilities(tiny, draws).max(axis=1)
    np.testing.assert_allclose(result.arrays["top_probabilities"], oracle, rtol=1e-5)
    bins = result.data["bins"]
    assert bins["edges"][0] == 0 and bins["edges"][-1] >= oracle.max()
    assert bins["counts"] == np.histogram(oracle, bins=20, range=(0, bins["edges"][-1]))[0].tolist()
    assert sum(bins["counts"]) == DRAWS


def test_threshold_is_numpys_quantile_and_rejects_99_percent_of_noise(events):
    result = events[-1]
    top = result.arrays["top_probabilities"]
    assert result.data["threshold"] == np.quantile(top, 0.99)
    assert result.data["noise_rejected"] == np.count_nonzero(top <= np.quantile(top, 0.99)) / DRAWS


def test_rejected_share_of_sample_photos_equals_an_independent_count(tiny, events):
    result = events[-1]
    load = samples_only()
    names = [sample.id for sample in sample_images(get_plugin_manager())]
    assert {"chelsea", "coffee", "astronaut"} <= set(names)
    photos = np.concatenate([to_tensor(load(name), SIZE).numpy() for name in names])
    top = module_probabilities(tiny, photos).max(axis=1)
    threshold = np.quantile(result.arrays["top_probabilities"], 0.99)
    assert [entry["id"] for entry in result.data["samples"]] == names
    assert [entry["rejected"] for entry in result.data["samples"]] == [bool(p <= threshold) for p in top]
    assert result.data["samples_rejected"] == np.count_nonzero(top <= threshold) / len(names)


def test_streams_each_pattern_with_its_top5_then_the_histogram_as_it_fills(events):
    batches = -(-DRAWS // BATCH)
    assert [p.step for p in of_type(events, Progress)] == list(range(batches + 1))
    histograms = [f for f in of_type(events, Frame) if f.label == "histogram · tiny"]
    assert len(histograms) == batches + 1
    names = ["gaussian", "uniform", "stripes", "checkerboard"]
    assert [f.label for f in of_type(events, Frame)][:4] == [f"{name} · tiny" for name in names]
    tops = of_type(events, Predictions)[-1].tops
    assert tops == {
        f"{name} · tiny": [
            {"class": e["index"], "label": e["label"], "probability": e["probability"]} for e in top
        ]
        for name, top in events[-1].data["patterns"].items()
    }
    assert isinstance(events[-1], Result) and events[-1].data["models"] == ["tiny"]


def test_zero_draws_is_refused_naming_the_field(tiny):
    from convlens.testing import run_method

    with pytest.raises(BadInput) as error:
        run_method("noise_predictions", tiny, np.zeros((8, 8, 3), dtype=np.uint8), draws=0)
    assert error.value.field == "params.draws"


MANY_DRAWS, MANY_BATCH, BIG, SMALL = 12, 8, (224, 224), (32, 32)
ORDER = ["efficientnet_lite0.onnx", "tiny32.pt", "efficientnet_lite0.pt2"]
"""The run's model first, then the others in the order the request names them."""


@pytest.fixture(scope="module")
def shelf(models_dir, tmp_path_factory):
    """The default model's files and the tiny net traced to TorchScript, carded at 32 px: a model of another size."""
    import json

    from convlens.models.store import ModelStore

    directory = tmp_path_factory.mktemp("noise-models")
    tiny = make_tiny_model()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(tiny.module, torch.rand(2, 3, *SMALL)), str(directory / "tiny32.pt"))
    card = {"input_size": list(SMALL), "mean": list(tiny.card.mean), "std": list(tiny.card.std)}
    (directory / "tiny32.json").write_text(json.dumps({**card, "labels": tiny.card.labels}))
    return ModelStore([models_dir, directory])


@pytest.fixture(scope="module")
def many(shelf, default_model):
    from convlens.runner import iterate, prepare_run
    from convlens.testing import find_method

    method = find_method("noise_predictions")
    params = {"models": ["tiny32.pt", "efficientnet_lite0.pt2"], "draws": MANY_DRAWS, "batch": MANY_BATCH}
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    return list(iterate(method, prepare_run(method, default_model, image, params, seed=SEED, models=shelf)))


@pytest.fixture(scope="module")
def eager(pixel_space, default_model):
    """Softmax of each model's eager module on Nx3xHxW [0, 1] images, by model id."""
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    tiny = make_tiny_model()
    efficientnet = pixel_space(build_efficientnet_lite0(), default_model.card.mean, default_model.card.std)
    small = pixel_space(tiny.module, tiny.card.mean, tiny.card.std)

    def probabilities(model_id: str, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            net = small if model_id == "tiny32.pt" else efficientnet
            return torch.softmax(net(torch.as_tensor(images, dtype=torch.float32)).double(), dim=1).numpy()

    return probabilities


def test_every_model_sees_the_seeded_noise_at_its_own_size_as_its_eager_module_does(many, eager):
    result = many[-1]
    assert result.data["models"] == [entry["model"] for entry in result.data["by_model"]] == ORDER
    rng = np.random.default_rng(SEED)
    rng.normal(size=(1, 3, *BIG)), rng.random((1, 3, *BIG))  # the two noise patterns
    draws = {BIG: [], SMALL: []}
    for start in range(0, MANY_DRAWS, MANY_BATCH):
        count = min(MANY_BATCH, MANY_DRAWS - start)
        for size in (BIG, SMALL):  # the run's model's size first, then the others' in their order
            draws[size].append(np.clip(rng.normal(0.5, 0.25, (count, 3, *size)), 0, 1).astype(np.float32))
    reported = result.arrays["top_probabilities_by_model"]
    for which, entry in enumerate(result.data["by_model"]):
        size = SMALL if entry["model"] == "tiny32.pt" else BIG
        top = eager(entry["model"], np.concatenate(draws[size])).max(axis=1)
        np.testing.assert_allclose(reported[which], top, rtol=1e-4)
        counts, edges = np.histogram(top, bins=20, range=(0, entry["bins"]["edges"][-1]))
        assert entry["bins"]["counts"] == counts.tolist()
        np.testing.assert_allclose(entry["bins"]["edges"], edges, rtol=0, atol=1e-15)
        assert entry["threshold"] == np.quantile(reported[which], 0.99)
        assert entry["input_size"] == list(size)
    assert np.array_equal(result.arrays["top_probabilities"], reported[0])
    assert result.data["threshold"] == result.data["by_model"][0]["threshold"]


def test_each_model_has_its_top5_of_each_pattern_and_its_share_of_sample_photos_rejected(many, eager):
    import torch.nn.functional as F  # noqa: N812

    result = many[-1]
    shown = result.arrays["patterns"].transpose(0, 3, 1, 2)
    small = F.interpolate(torch.from_numpy(shown), size=SMALL, mode="bilinear", antialias=True).clamp(0, 1)
    names = [sample.id for sample in sample_images(get_plugin_manager())]
    load = samples_only()
    for entry in result.data["by_model"]:
        size, patterns = (SMALL, small.numpy()) if entry["model"] == "tiny32.pt" else (BIG, shown)
        for row, top in zip(eager(entry["model"], patterns), entry["patterns"].values(), strict=True):
            assert [e["index"] for e in top] == list(np.argsort(-row)[:5])
            np.testing.assert_allclose(
                [e["probability"] for e in top], np.sort(row)[::-1][:5], rtol=1e-4, atol=1e-6
            )
        photos = np.concatenate([to_tensor(load(name), size).numpy() for name in names])
        photo_top = eager(entry["model"], photos).max(axis=1)
        rejected = [bool(p <= entry["threshold"]) for p in photo_top]
        assert [s["rejected"] for s in entry["samples"]] == rejected
        assert entry["samples_rejected"] == sum(rejected) / len(names)


def test_a_frame_a_pattern_with_a_panel_and_a_top5_a_model(many):
    frames = of_type(many, Frame)[:4]
    for frame, name in zip(frames, ["gaussian", "uniform", "stripes", "checkerboard"], strict=True):
        assert frame.label == " | ".join(f"{name} · {model_id}" for model_id in ORDER)
        assert frame.pixels().shape[1] % len(ORDER) == 0
    tops = of_type(many, Predictions)[-1].tops
    by_model = {entry["model"]: entry for entry in many[-1].data["by_model"]}
    for panel, top in tops.items():
        name, model_id = panel.split(" · ")
        assert [e["class"] for e in top] == [e["index"] for e in by_model[model_id]["patterns"][name]]
    assert len(tops) == 4 * len(ORDER)


def test_a_run_through_the_server_compares_the_models_it_names(client, eager):
    import io
    import time

    request = {
        "method": "noise_predictions",
        "model": "efficientnet_lite0.onnx",
        "image": "chelsea",
        "seed": SEED,
        "params": {"models": ["efficientnet_lite0.pt2"], "draws": 8, "batch": 8},
    }
    answer = client.post("/api/jobs", json=request)
    assert answer.status_code == 202, answer.get_json()
    deadline = time.monotonic() + 120
    while (job := client.get(f"/api/jobs/{answer.get_json()['id']}").get_json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["state"] == "done", job["error"]
    assert job["result"]["data"]["models"] == ["efficientnet_lite0.onnx", "efficientnet_lite0.pt2"]
    rng = np.random.default_rng(SEED)
    rng.normal(size=(1, 3, *BIG)), rng.random((1, 3, *BIG))
    noise = np.clip(rng.normal(0.5, 0.25, (8, 3, *BIG)), 0, 1).astype(np.float32)
    top = eager("efficientnet_lite0.onnx", noise).max(axis=1)
    data = client.get(f"/api/jobs/{job['id']}/arrays/top_probabilities_by_model.npy").data
    np.testing.assert_allclose(np.load(io.BytesIO(data)), [top, top], rtol=1e-4)
    bad = client.post("/api/jobs", json={**request, "params": {"models": ["efficientnet_lite0.pt3"]}})
    assert bad.status_code == 400 and bad.get_json()["field"] == "params.models"


@pytest.fixture(scope="module")
def many_oracle(many, eager):
    """Each model's top probabilities over the run's draws by its eager module, in the run's model order."""
    reported = many[-1].arrays["top_probabilities_by_model"]
    for which, entry in enumerate(many[-1].data["by_model"]):
        rng = np.random.default_rng(SEED)
        rng.normal(size=(1, 3, *BIG)), rng.random((1, 3, *BIG))
        size = SMALL if entry["model"] == "tiny32.pt" else BIG
        noise = []
        for start in range(0, MANY_DRAWS, MANY_BATCH):
            count = min(MANY_BATCH, MANY_DRAWS - start)
            for shape in (BIG, SMALL):
                draw = np.clip(rng.normal(0.5, 0.25, (count, 3, *shape)), 0, 1).astype(np.float32)
                if shape == size:
                    noise.append(draw)
        np.testing.assert_allclose(
            reported[which], eager(entry["model"], np.concatenate(noise)).max(axis=1), rtol=1e-4
        )
    return reported


def test_the_histograms_share_one_range_that_covers_every_draw_and_ends_on_a_readable_value(
    many, many_oracle
):
    entries = many[-1].data["by_model"]
    edges = entries[0]["bins"]["edges"]
    assert all(entry["bins"]["edges"] == edges for entry in entries)
    largest = many_oracle.max()
    assert edges[0] == 0 and largest <= edges[-1] <= 1
    assert largest / edges[-1] >= 2 / 3, "the draws fill at least two thirds of the width"
    assert float(f"{edges[-1]:.2g}") == edges[-1], "the range's end reads in two significant digits"
    for entry, top in zip(entries, many_oracle, strict=True):
        assert sum(entry["bins"]["counts"]) == MANY_DRAWS
        assert entry["bins"]["counts"] == np.histogram(top, bins=20, range=(0, edges[-1]))[0].tolist()


def panels(picture: np.ndarray, count: int) -> list[np.ndarray]:
    """The ``count`` equal panels of a row of histograms, left to right."""
    assert picture.shape[1] % count == 0
    return np.split(picture, count, axis=1)


def test_each_threshold_line_is_at_its_column_and_bars_share_one_count_scale(many, many_oracle):
    from convlens_plugins.adversarial.noise import PLOT_HEIGHT, PLOT_LEFT, PLOT_TOP, PLOT_WIDTH

    result = many[-1]
    limit = result.data["by_model"][0]["bins"]["edges"][-1]
    counts = [entry["bins"]["counts"] for entry in result.data["by_model"]]
    tallest = max(max(row) for row in counts)
    plot_rows = slice(PLOT_TOP, PLOT_TOP + PLOT_HEIGHT)
    for panel, top, row in zip(
        panels(result.images["histograms"], len(ORDER)), many_oracle, counts, strict=True
    ):
        plot = panel[plot_rows]
        threshold = np.quantile(top, 0.99)
        x = PLOT_LEFT + min(int(threshold / limit * PLOT_WIDTH), PLOT_WIDTH - 1)
        red = np.flatnonzero(np.all(plot == (220, 40, 40), axis=2).any(axis=0))
        assert red.tolist() == [max(x - 1, PLOT_LEFT), x]
        for index, count in enumerate(row):
            column = PLOT_LEFT + int((index + 0.5) * PLOT_WIDTH / len(row))
            if column in red:
                continue
            bar = np.count_nonzero(np.all(plot[:, column] == (70, 90, 140), axis=1))
            assert bar == round(PLOT_HEIGHT * count / tallest), (index, count)


def written(text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """``text`` in the default font at the histograms' size, ``colour`` on white, cropped to its ink."""
    from PIL import Image, ImageDraw, ImageFont

    from convlens_plugins.adversarial.noise import FONT_SIZE

    canvas = Image.new("RGB", (200, 40), "white")
    ImageDraw.Draw(canvas).text((10, 10), text, font=ImageFont.load_default(size=FONT_SIZE), fill=colour)
    pixels = np.asarray(canvas)
    rows, cols = np.nonzero((pixels != 255).any(axis=2))
    return pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def found_at(region: np.ndarray, template: np.ndarray) -> list[tuple[int, int]]:
    """Top-left (row, column) of every exact copy of ``template`` in ``region``."""
    height, width = template.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(region, (height, width, 3))[:, :, 0]
    rows, cols = np.nonzero(np.all(windows == template, axis=(2, 3, 4)))
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def test_the_ends_of_the_range_and_each_threshold_are_written_where_they_belong(many, many_oracle):
    from convlens_plugins.adversarial.noise import PLOT_HEIGHT, PLOT_LEFT, PLOT_TOP, PLOT_WIDTH

    result = many[-1]
    limit = result.data["by_model"][0]["bins"]["edges"][-1]
    below = PLOT_TOP + PLOT_HEIGHT
    for panel, top in zip(panels(result.images["histograms"], len(ORDER)), many_oracle, strict=True):
        under = panel[below:]
        zero, end = written("0", (40, 40, 40)), written(f"{limit:g}", (40, 40, 40))
        assert any(abs(col - PLOT_LEFT) <= 2 for _, col in found_at(under, zero))
        assert any(abs(col + end.shape[1] - (PLOT_LEFT + PLOT_WIDTH)) <= 2 for _, col in found_at(under, end))
        threshold = np.quantile(top, 0.99)
        x = PLOT_LEFT + min(int(threshold / limit * PLOT_WIDTH), PLOT_WIDTH - 1)
        value = written(f"{threshold:.3g}", (220, 40, 40))
        places = found_at(panel[:PLOT_TOP], value)
        assert len(places) == 1
        ((_, col),) = places
        assert min(abs(col - x), abs(col + value.shape[1] - x)) <= 6, "beside its line"


def test_a_threshold_near_the_right_end_is_written_whole_left_of_its_line():
    from convlens_plugins.adversarial.noise import PLOT_LEFT, PLOT_TOP, PLOT_WIDTH, histogram_image

    threshold, limit = 0.1987, 0.2
    picture = histogram_image(np.array([0, 3, 9, 2]), limit, threshold)
    x = PLOT_LEFT + min(int(threshold / limit * PLOT_WIDTH), PLOT_WIDTH - 1)
    value = written("0.199", (220, 40, 40))
    ((_, col),) = found_at(picture[:PLOT_TOP], value)
    assert x - 6 <= col + value.shape[1] <= x
