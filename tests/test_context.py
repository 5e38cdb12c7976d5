"""Context (``context``): the subject pasted onto other backgrounds, checked against composites built here from
the method's mask and scikit-image's own pictures, top 5s from the model file run by ONNX Runtime directly, and a
background-only occlusion recomputed here window by window."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data

from convlens.errors import BadInput
from convlens.events import Frame, Predictions, Progress, Result
from convlens.models.default import DEFAULT_MODEL_ID as DEFAULT_MODEL
from convlens.testing import of_type, run_method

SIDE = 224
WINDOW, STRIDE = 64, 32
"""Windows of 64 px every 32 px: starts 0, 32, ..., 160 on each axis, so most pixels lie under four windows."""
STARTS = np.arange(0, SIDE - WINDOW + 1, STRIDE)
FEATHER = 2.0
BACKGROUNDS = ["grass", "brick", "gravel", "grey", "blue", "photo", "blurred"]


def resized(picture: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 (or HxW grey) as float32 in [0, 1] at 224x224: PIL's bicubic, as convlens resizes."""
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=2)
    return np.asarray(Image.fromarray(picture).resize((SIDE, SIDE), Image.BICUBIC), np.float32) / 255.0


def expected_background(name: str, picture: np.ndarray) -> np.ndarray:
    if name in ("grass", "brick", "gravel"):
        return resized(getattr(data, name)())
    if name == "photo":
        return resized(data.rocket())
    if (
        name == "blurred"
    ):  # scipy's "mirror" is OpenCV's default border (reflect-101), cut at 4 sigma as it is
        return gaussian_filter(picture, sigma=(8, 8, 0), mode="mirror", truncate=4.0)
    colour = {"grey": (0.5, 0.5, 0.5), "blue": (0.25, 0.45, 0.85)}[name]
    return np.broadcast_to(np.asarray(colour, np.float32), picture.shape)


class Oracle:
    """The model file's probabilities for 224x224x3 pictures in [0, 1]: the card's normalisation, a fresh Runtime
    session, one picture a call."""

    def __init__(self, model) -> None:
        self.session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.mean = np.asarray(model.card.mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(model.card.std, np.float32).reshape(3, 1, 1)

    def __call__(self, picture: np.ndarray) -> np.ndarray:
        normalised = ((picture.transpose(2, 0, 1) - self.mean) / self.std)[None].astype(np.float32)
        logits = self.session.run(None, {self.name: normalised})[0][0].astype(np.float64)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


@pytest.fixture(scope="module")
def run(default_model, sample_image):
    """One run on chelsea, its subject cut out by saliency-seeded GrabCut (the default)."""
    events = run_method(
        "context",
        default_model,
        sample_image,
        backgrounds=",".join(BACKGROUNDS),
        window=WINDOW,
        stride=STRIDE,
        feather=FEATHER,
    )
    return events, of_type(events, Result)[0]


@pytest.fixture(scope="module")
def oracle(default_model) -> Oracle:
    return Oracle(default_model)


def test_each_composite_is_the_subject_feathered_over_the_scikit_image_background(run, sample_image):
    _, result = run
    mask, alpha = result.arrays["mask"], result.arrays["alpha"]
    assert mask.shape == (SIDE, SIDE) and set(np.unique(mask)) == {0, 1}
    np.testing.assert_allclose(
        alpha, gaussian_filter(mask.astype(np.float32), FEATHER, mode="mirror", truncate=4.0), atol=1e-4
    )
    picture = resized(sample_image)
    assert [row["background"] for row in result.data["backgrounds"]] == BACKGROUNDS
    for name, made in zip(BACKGROUNDS, result.arrays["composites"], strict=True):
        expected = alpha[:, :, None] * picture + (1 - alpha[:, :, None]) * expected_background(name, picture)
        np.testing.assert_allclose(made, expected, atol=2e-3, err_msg=name)
    assert result.data["subject_fraction"] == pytest.approx(mask.mean())


def test_the_top_5_on_each_background_is_the_model_files_and_the_class_is_ranked_in_it(
    run, oracle, sample_image
):
    events, result = run
    original = oracle(resized(sample_image))
    target = int(original.argmax())
    assert result.data["target"] == target and result.data["label"] == "Egyptian cat"
    assert result.data["original"]["probability"] == pytest.approx(original[target], abs=1e-4)
    pictures = result.arrays["composites"]
    for row, picture in zip(result.data["backgrounds"], pictures, strict=True):
        expected = oracle(picture)
        top = np.argsort(-expected)[:5]
        assert [entry["class"] for entry in row["top5"]] == list(top), row["background"]
        for entry in row["top5"]:
            assert entry["probability"] == pytest.approx(expected[entry["class"]], abs=1e-4)
        assert row["probability"] == pytest.approx(expected[target], abs=1e-4)
        assert row["rank"] == 1 + int((expected > expected[target] + 1e-6).sum())
        assert row["top1"] == top[0]
    # Streamed one composite at a time: a strip that fills in, each panel named with its own top 5.
    frames = [frame for frame in of_type(events, Frame) if "|" in frame.label]
    assert len(frames) == len(BACKGROUNDS) + 1
    assert frames[0].label == " | ".join(["original", *BACKGROUNDS])
    named = [list(event.tops) for event in of_type(events, Predictions)]
    assert named == [["original"]] + [[name] for name in BACKGROUNDS]
    last = of_type(events, Progress)[-1]
    assert last.step == last.total == len(BACKGROUNDS) + 2 * len(STARTS) ** 2


def test_background_occlusion_is_zero_on_the_subject_and_the_drop_of_hiding_background_alone(
    run, oracle, sample_image
):
    _, result = run
    mask, background_map = result.arrays["mask"], result.arrays["background_occlusion"]
    assert np.all(background_map[mask == 1] == 0)
    assert np.abs(background_map[mask == 0]).max() > 0
    picture = resized(sample_image)
    target = result.data["target"]
    base = oracle(picture)[target]

    def hidden(y: int, x: int) -> float:
        """The target's probability with the window at (y, x) grey over the background only."""
        occluded = picture.copy()
        window = occluded[y : y + WINDOW, x : x + WINDOW]
        window[mask[y : y + WINDOW, x : x + WINDOW] == 0] = 0.5
        return oracle(occluded)[target]

    rng = np.random.default_rng(3)
    background = np.argwhere(mask == 0)
    for y, x in background[rng.choice(len(background), 3, replace=False)]:
        rows = [s for s in STARTS if s <= y < s + WINDOW]
        cols = [s for s in STARTS if s <= x < s + WINDOW]
        drops = [base - hidden(row, col) for row in rows for col in cols]
        assert background_map[y, x] == pytest.approx(np.mean(drops), abs=1e-4), (y, x)
    total = np.clip(result.arrays["occlusion"], 0, None).sum()
    share = np.clip(background_map, 0, None).sum() / total
    assert result.data["background_fraction"] == pytest.approx(share, rel=1e-6)
    assert 0 < share < 1


def test_a_rectangle_cuts_the_subject_out_of_it_alone(default_model):
    """Coffee's cup and saucer (x 10-410, y 5-395 of its 600x400 pixels): GrabCut keeps nothing outside."""
    events = run_method(
        "context",
        default_model,
        data.coffee(),
        rectangle="10,5,400,390",
        backgrounds="grey",
        window=112,
        stride=112,
    )
    result = of_type(events, Result)[0]
    mask = result.arrays["mask"]
    left, top, right, bottom = round(10 * SIDE / 600), round(5 * SIDE / 400), round(410 * SIDE / 600), 221
    outside = np.ones_like(mask, bool)
    outside[top:bottom, left:right] = False
    assert result.data["cutout"] == "rectangle"
    assert mask[outside].sum() == 0 and mask[~outside].mean() > 0.5
    assert result.data["backgrounds"][0]["top1_label"] == "espresso"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"backgrounds": "grass,beach"}, "unknown background 'beach'"),
        ({"backgrounds": " , "}, "name at least one"),
        ({"backgrounds": "grass,grass"}, "named twice"),
        ({"rectangle": "10,10,0,40"}, "the rectangle is empty"),
        ({"rectangle": "10,10,40"}, "expected x,y,width,height"),
        ({"rectangle": "-1,10,40,40"}, "expected x,y,width,height"),
    ],
)
def test_the_api_refuses_bad_backgrounds_and_rectangles_naming_the_field(client, params, words):
    answer = client.post(
        "/api/jobs", json={"method": "context", "model": DEFAULT_MODEL, "image": "chelsea", "params": params}
    )
    assert answer.status_code == 400
    field = "params.backgrounds" if "backgrounds" in params else "params.rectangle"
    assert answer.get_json()["field"] == field and words in answer.get_json()["error"]


@pytest.mark.parametrize(
    ("picture", "rectangle", "words"),
    [
        (data.chelsea(), "400,10,60,40", "goes outside the 451x300-pixel picture"),
        (data.chelsea(), "10,280,60,40", "goes outside the 451x300-pixel picture"),
        (data.chelsea(), "0,0,451,300", "covers the whole picture"),
        (np.full((120, 160, 3), 128, np.uint8), "40,30,80,60", "covers nothing"),
        (data.chelsea(), "450,299,1,1", "covers nothing"),
    ],
    ids=["right", "below", "whole", "flat", "last-pixel"],
)
def test_a_rectangle_off_the_picture_or_a_mask_of_nothing_or_everything_is_refused(
    default_model, picture, rectangle, words
):
    with pytest.raises(BadInput) as refused:
        run_method("context", default_model, picture, rectangle=rectangle)
    assert refused.value.field == "params.rectangle" and words in str(refused.value)


@pytest.mark.parametrize(
    ("rectangle", "words"),
    [("0,0,500,100", "goes outside the 451x300-pixel picture"), ("0,0,451,300", "covers the whole picture")],
)
def test_a_rectangle_off_the_posted_picture_is_refused_when_the_job_is_requested(client, rectangle, words):
    body = {
        "method": "context",
        "model": DEFAULT_MODEL,
        "image": "chelsea",
        "params": {"rectangle": rectangle},
    }
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == "params.rectangle" and words in answer.get_json()["error"]
