"""The adversarial patch (Brown et al. 2017): the paste equals OpenCV's affine warp; a few training steps on the
default model raise the target's probability on held-out images far above a random patch's, recomputed here
with the eager module; the held-out numbers it reports are those of an independent recomputation at the
placements it reports; seeds repeat bit for bit; the frame, top-5s and metrics are streamed; a data set is split
into training and held-out images; a trained patch uploaded to the real server is applied by ``apply_patch``;
bad parameters are refused naming the field.

The oracle paste is ``cv2.warpAffine`` of the patch (times its mask) and of the mask with the matrix
``cv2.getRotationMatrix2D`` gives (OpenCV: positive angles turn anticlockwise, pixel centres at integers),
bilinear with zeros outside, then ``picture × (1 − warped mask) + warped patch``. Measured against convlens's
``grid_sample`` paste: at most 9.4e-6 apart, so 1e-4 is the tolerance. Probabilities come from the eager
EfficientNet-Lite0 (``build_efficientnet_lite0``) wrapped to take [0, 1] pixels, never from convlens's
``Model``; the ONNX file it runs differs from the eager module by about 1e-3 relative (README, Models).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Predictions, Progress, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.testing import of_type
from convlens_plugins.adversarial.patch import Placement, paste, patch_mask

TOLERANCE = 1e-4
TOASTER = 859
SIZE = 224


def disc(height: int, width: int) -> np.ndarray:
    """1 where a pixel's centre lies in the ellipse inscribed in the HxW rectangle."""
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    return (rows[:, None] ** 2 + cols[None, :] ** 2 <= 0.25).astype(np.float32)


def oracle_paste(
    picture: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: float, y: float, width: float, angle: float
) -> np.ndarray:
    """HxWx3 ``picture`` with the PxQx3 ``patch`` centred at (x, y) (pixel edges at integers), ``width`` pixels
    wide, turned ``angle`` degrees anticlockwise, by OpenCV."""
    rows, cols = patch.shape[:2]
    centre = ((cols - 1) / 2, (rows - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, width / cols)
    matrix[:, 2] += (x - 0.5 - centre[0], y - 0.5 - centre[1])
    layers = np.dstack([patch * mask[:, :, None], mask]).astype(np.float32)
    warped = cv2.warpAffine(
        layers,
        matrix,
        (picture.shape[1], picture.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return picture * (1 - warped[:, :, 3:]) + warped[:, :, :3]


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]


def at_input_size(pixels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """A uint8 picture resized by PIL (bicubic) to size x size, float in [0, 1]: what a job sees."""
    resized = Image.fromarray(np.asarray(pixels)[:, :, :3]).resize((size, size), Image.BICUBIC)
    return np.asarray(resized, dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def eager(pixel_space, default_model):
    """The default network as an eager module taking [0, 1] pixels."""
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return pixel_space(build_efficientnet_lite0(), default_model.card.mean, default_model.card.std)


def eager_probabilities(module, pictures: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        logits = module(torch.cat([as_tensor(picture) for picture in pictures]))
    return logits.double().softmax(dim=1).numpy()


PLACEMENTS = [
    Placement(100, 90, 40, 0),
    Placement(60.3, 150.7, 55.5, 17),
    Placement(120, 100, 30, -90),
    Placement(20, 20, 60, 45),
]


@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("placement", PLACEMENTS, ids=lambda p: f"{p.x}-{p.y}-{p.side}-{p.angle}")
def test_paste_equals_opencv_warp_affine(shape, placement):
    rng = np.random.default_rng(0)
    picture = rng.random((224, 200, 3)).astype(np.float32)
    patch = rng.random((40, 40, 3)).astype(np.float32)
    mask = disc(40, 40) if shape == "circle" else np.ones((40, 40), np.float32)
    np.testing.assert_array_equal(patch_mask(40, 40, shape)[0, 0].numpy(), mask)
    pasted = paste(as_tensor(picture), as_tensor(patch), torch.from_numpy(mask)[None, None], [placement])
    expected = oracle_paste(picture, patch, mask, placement.x, placement.y, placement.side, placement.angle)
    assert np.abs(expected - picture).max() > 0.5, "the oracle pasted nothing: the test would prove nothing"
    np.testing.assert_allclose(pasted[0].permute(1, 2, 0).numpy(), expected, atol=TOLERANCE, rtol=0)


TRAINING = {
    "steps": 15,
    "batch": 4,
    "lr": 0.2,
    "size": 100,
    "min_scale": 1.0,
    "max_scale": 1.5,
    "held_out": 2,
    "draws": 3,
    "every": 5,
}
"""A small budget: a large patch and a large step show the effect within 15 steps of 4 pastes."""


@pytest.fixture(scope="module")
def trained(default_model, sample_image):
    from convlens.testing import run_method

    return run_method("adversarial_patch", default_model, sample_image, seed=0, **TRAINING)


def test_a_few_steps_raise_the_target_probability_on_held_out_images_over_a_random_patch(trained, eager):
    result = trained[-1]
    assert isinstance(result, Result) and result.data["target"] == TOASTER
    patch, mask = result.arrays["patch"], result.arrays["mask"]
    assert patch.shape == (100, 100, 3) and mask.shape == (100, 100)
    noise = np.random.default_rng(1).random(patch.shape).astype(np.float32)
    held_out = [at_input_size(getattr(skimage_data, name)()) for name in result.data["held_out"]]
    trials = [
        (picture, placement)
        for picture, placements in zip(held_out, result.data["placements"], strict=True)
        for placement in placements
    ]
    assert len(trials) == TRAINING["held_out"] * TRAINING["draws"]

    def target_probabilities(shown: np.ndarray) -> np.ndarray:
        pasted = [oracle_paste(picture, shown, mask, **placement) for picture, placement in trials]
        return eager_probabilities(eager, pasted)

    trained_probabilities, noise_probabilities = target_probabilities(patch), target_probabilities(noise)
    assert trained_probabilities[:, TOASTER].mean() > 10 * noise_probabilities[:, TOASTER].mean()
    # What the run reported at its last test equals this recomputation at the placements it reported.
    last = [m.values for m in of_type(trained, Metrics) if "held-out success rate" in m.values][-1]
    assert last["held-out target probability"] == pytest.approx(
        trained_probabilities[:, TOASTER].mean(), rel=0.02
    )
    success = float((trained_probabilities.argmax(axis=1) == TOASTER).mean())
    assert result.data["success_rate"] == last["held-out success rate"] == success


def test_the_default_target_is_found_by_its_label(tiny_model, sample_image):
    from convlens.testing import run_method

    with pytest.raises(BadInput) as refused:
        run_method("adversarial_patch", tiny_model, sample_image, size=16)
    assert refused.value.field == "params.target" and "toaster" in refused.value.reason


TINY = {"target": 3, "size": 16, "steps": 4, "batch": 2, "held_out": 2, "draws": 2, "every": 2}


def test_same_seed_repeats_bit_for_bit_and_another_differs(convlens_run, tiny_model, sample_image):
    first, again, other = (
        convlens_run("adversarial_patch", tiny_model, sample_image, seed=seed, **TINY) for seed in (5, 5, 6)
    )
    np.testing.assert_array_equal(first[-1].arrays["patch"], again[-1].arrays["patch"])
    for mine, theirs in zip(of_type(first, Frame), of_type(again, Frame), strict=True):
        np.testing.assert_array_equal(mine.pixels(), theirs.pixels())
    assert [m.values for m in of_type(first, Metrics)] == [m.values for m in of_type(again, Metrics)]
    assert first[-1].data == again[-1].data
    assert not np.array_equal(first[-1].arrays["patch"], other[-1].arrays["patch"])


def test_streams_the_patch_and_patched_held_out_images_with_their_top5(
    convlens_run, tiny_model, sample_image
):
    events = convlens_run("adversarial_patch", tiny_model, sample_image, seed=2, **TINY)
    result = events[-1]
    frames, tops = of_type(events, Frame), of_type(events, Predictions)
    assert [frame.step for frame in frames] == [0, 2, 4] == [top.step for top in tops]
    assert {frame.label for frame in frames} == {"patch | patched 1 | patched 2"}
    pixels = frames[-1].pixels()
    height, width = pixels.shape[:2]
    assert width == 3 * height, "three square panels of equal integer width"
    # The first panel is the final patch as a sticker: white outside its disc.
    patch, mask = result.arrays["patch"], result.arrays["mask"]
    sticker = np.asarray(
        Image.fromarray(frames[-1].pixels()[:, :height]).resize((16, 16), Image.BOX), dtype=np.float32
    )
    expected = (patch * mask[:, :, None] + (1 - mask[:, :, None])) * 255
    assert np.abs(sticker - expected).mean() < 8, "the first panel is not the patch"
    # Each patched panel's top-5 is the tiny module's on the held-out image under its first placement.
    held = [at_input_size(getattr(skimage_data, name)(), 64) for name in result.data["held_out"]]
    assert set(tops[-1].tops) == {"patched 1", "patched 2"}
    for index, (picture, placements) in enumerate(zip(held, result.data["placements"], strict=True)):
        pasted = oracle_paste(picture, patch, mask, **placements[0])
        with torch.no_grad():
            probabilities = tiny_model.module(tiny_model.normalise(as_tensor(pasted)))[0].double().softmax(0)
        shown = tops[-1].tops[f"patched {index + 1}"]
        assert [entry["class"] for entry in shown] == probabilities.topk(5).indices.tolist()
        assert [entry["probability"] for entry in shown] == pytest.approx(
            probabilities.topk(5).values.tolist(), abs=1e-4
        )
    tested = [m.step for m in of_type(events, Metrics) if "held-out success rate" in m.values]
    trained = [m.step for m in of_type(events, Metrics) if "loss" in m.values]
    assert tested == [0, 2, 4] and trained == [1, 2, 3, 4]
    assert [p.step for p in of_type(events, Progress)] == [1, 2, 3, 4]


def test_a_diverging_loss_stops_the_run_naming_lr(run_diverging):
    from convlens_plugins.adversarial.patch import ADVERSARIAL_PATCH

    # Forward 1 tests the starting patch; 2, 3 and 4 are steps 1 to 3; the 4th returns infinite logits.
    run_diverging(
        ADVERSARIAL_PATCH,
        {**TINY, "steps": 5, "every": 10},
        after=3,
        match=r"loss is nan at step 3",
        logits=True,
    )


def test_a_data_set_is_split_into_training_and_held_out_images(convlens_run, tiny_model, sample_image):
    from convlens.runner import registered_datasets_only

    keys = {item.key for item in registered_datasets_only()("digits").items()}
    events = convlens_run(
        "adversarial_patch", tiny_model, sample_image, dataset="digits", images=6, **{**TINY, "steps": 1}
    )
    held_out, training = events[-1].data["held_out"], events[-1].data["training"]
    assert len(held_out) == 2 and len(training) == 4
    assert len(set(held_out + training)) == 6 and set(held_out + training) <= keys


def run_job(client, method: str, **body) -> dict:
    """POST a job of ``method`` on the default model; the job once it has ended."""
    answer = client.post("/api/jobs", json={"method": method, "model": DEFAULT_MODEL_ID, **body})
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    assert client.application.extensions["convlens"].jobs.get(job_id).ended.wait(120), "the job hung"
    return client.get(f"/api/jobs/{job_id}").get_json()


def upload(client, pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    answer = client.post("/api/images", data={"file": (io.BytesIO(buffer.getvalue()), "patch.png")})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["id"]


def test_apply_pastes_an_uploaded_patch_and_shows_the_top5_before_and_after(client, trained, eager):
    sticker = (trained[-1].images["patch"] * 255 + 0.5).astype(np.uint8)
    patch_id = upload(client, sticker)
    placement = {"size": 100, "x": 0.35, "y": 0.6, "scale": 1.3, "rotation": 30.0}
    job = run_job(client, "apply_patch", image="chelsea", params={"patch": patch_id, **placement})
    assert job["state"] == "done", job["error"]
    patched = np.load(io.BytesIO(client.get(job["result"]["array_urls"]["patched"]).data))
    chelsea = at_input_size(skimage_data.chelsea())
    expected = oracle_paste(
        chelsea, sticker.astype(np.float32) / 255, disc(100, 100), 0.35 * SIZE, 0.6 * SIZE, 1.3 * 100, 30.0
    )
    np.testing.assert_allclose(patched, expected, atol=TOLERANCE, rtol=0)
    before, after = eager_probabilities(eager, [chelsea, expected])
    data = job["result"]["data"]
    for shown, probabilities in ((data["top5_before"], before), (data["top5_after"], after)):
        assert [entry["class"] for entry in shown] == np.argsort(-probabilities)[:5].tolist()
        assert [entry["probability"] for entry in shown] == pytest.approx(
            np.sort(probabilities)[::-1][:5], rel=1e-2, abs=1e-4
        )


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("adversarial_patch", {"size": 300}, "params.size"),
        ("adversarial_patch", {"max_scale": 3.0}, "params.max_scale"),
        ("adversarial_patch", {"min_scale": 2.0, "max_scale": 1.5}, "params.min_scale"),
        ("adversarial_patch", {"min_scale": 0.01}, "params.min_scale"),
        ("adversarial_patch", {"steps": 0}, "params.steps"),
        ("adversarial_patch", {"target": 1000}, "params.target"),
        ("adversarial_patch", {"held_out": 50}, "params.held_out"),
        ("adversarial_patch", {"dataset": "digits", "images": 5, "held_out": 5}, "params.held_out"),
        ("apply_patch", {}, "params.patch"),
        ("apply_patch", {"patch": "chelsea", "scale": 3.0}, "params.scale"),
        ("apply_patch", {"patch": "no-such-image"}, "params.patch"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(client, method, params, field):
    answer = client.post(
        "/api/jobs", json={"method": method, "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": params}
    )
    assert 400 <= answer.status_code < 500, answer.get_json()
    assert answer.get_json()["field"] == field
