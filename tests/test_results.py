"""What a run keeps of its frames for the GIF, and frames made into pixels only when they are shown."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from convlens.encode import EncodedFrame
from convlens.events import Frame, held, to_uint8
from convlens.images import to_image, to_pixels
from convlens.results import Reel, RunRecord, write_result

BITS = 11
"""A barcode frame tells apart 2**11 = 2048 frames."""


def numbered(index: int) -> np.ndarray:
    """A 4x4 frame whose pixels are its index (mod 256)."""
    return np.full((4, 4, 3), index % 256, dtype=np.uint8)


def barcode(index: int) -> np.ndarray:
    """An 8x88 frame showing ``index`` in binary: eleven 8x8 squares, white for a 1, most significant first.

    Black and white survive the GIF's palette, so each frame read back says which frame of the run it is.
    """
    bits = np.array([(index >> bit) & 1 for bit in reversed(range(BITS))], np.uint8)
    grey = np.kron(bits[None, :], np.ones((8, 8), np.uint8)) * 255
    return np.stack([grey] * 3, axis=2)


def gif_of_a_run(out_dir, run_length: int) -> tuple[list[int], dict]:
    """The frames of a ``run_length``-frame run written as the server and the CLI write it, read back from
    the GIF by their barcodes; and ``result.json``'s content."""
    reel = Reel()
    for index in range(run_length):
        reel.add(barcode(index))
    record = RunRecord("a_method", "a_model", "0" * 64, "onnx", "chelsea", {}, 0, [], {}, {})
    summary = write_result(out_dir, record, {}, reel.frames())
    shown = []
    for picture in ImageSequence.Iterator(Image.open(out_dir / summary["animation"])):
        squares = np.asarray(picture.convert("L"), dtype=float).reshape(8, BITS, 8).mean(axis=(0, 2))
        shown.append(int("".join("1" if square > 127 else "0" for square in squares), 2))
    return shown, summary


def test_a_long_runs_gif_holds_250_to_500_of_its_frames_evenly_spaced_first_and_last_included(tmp_path):
    # The README: every frame up to 500; past that every other one, then every 4th, ..., the last one included.
    run_length = 1239
    shown, summary = gif_of_a_run(tmp_path, run_length)
    assert 250 <= len(shown) <= 500 and summary["frames"] == len(shown)
    assert shown[0] == 0 and shown[-1] == run_length - 1
    gaps = np.diff(shown)
    assert (gaps[:-1] == gaps[0]).all() and 0 < gaps[-1] <= gaps[0], gaps


def test_a_gif_of_a_run_of_500_frames_holds_every_one(tmp_path):
    shown, _ = gif_of_a_run(tmp_path, 500)
    assert shown == list(range(500))


def test_a_reel_keeps_every_frame_up_to_its_limit():
    reel = Reel(max_frames=10)
    for index in range(10):
        reel.add(numbered(index))
    assert [int(frame[0, 0, 0]) for frame in reel.frames()] == list(range(10))


def test_a_long_run_is_kept_evenly_spaced_from_first_to_last():
    reel = Reel(max_frames=10)
    for index in range(1000):
        reel.add(numbered(index))
    kept = [int(frame[0, 0, 0]) for frame in reel.frames()]
    # 1000 frames halved down to every 128th: 0, 128, ..., 896, then the last frame.
    assert kept == [index % 256 for index in [*range(0, 1000, 128), 999]]
    assert 5 <= len(reel.kept) <= 10


def test_the_last_frame_is_not_added_twice_when_it_is_on_the_grid():
    reel = Reel(max_frames=4)
    for index in range(7):  # kept 0, 2, 4, 6 after one halving: 6 is the last
        reel.add(numbered(index))
    assert [int(frame[0, 0, 0]) for frame in reel.frames()] == [0, 2, 4, 6]


def test_a_reel_halves_when_its_frames_pass_its_byte_limit():
    reel = Reel(max_frames=1000, max_bytes=5 * numbered(0).nbytes)
    for index in range(20):
        reel.add(numbered(index))
    assert reel.kept_bytes <= 5 * numbered(0).nbytes
    assert [int(frame[0, 0, 0]) for frame in reel.frames()] == [0, 4, 8, 12, 16, 19]


def test_tensor_frames_are_kept_as_float16_and_become_the_same_pixels_within_a_level():
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    reel = Reel()
    reel.add(held(image.clone()))
    reel.add(held(image.clone()))
    assert reel.kept[0].dtype == torch.float16
    exact = to_uint8(to_image(image))
    for pixels in reel.frames():
        assert pixels.shape == (24, 32, 3) and pixels.dtype == np.uint8
        assert np.abs(pixels.astype(int) - exact).max() <= 1


def test_an_encoded_tensor_frame_knows_its_size_before_its_pixels_are_made():
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    frame = EncodedFrame(0, 0, "main", image)
    assert (frame.width, frame.height) == (32, 24) and frame._pixels is None
    decoded = np.asarray(Image.open(io.BytesIO(frame.data("png"))).convert("RGB"))
    assert np.array_equal(decoded, Frame(image).pixels())
    assert np.array_equal(decoded, to_uint8(to_image(image)))


def test_held_copies_a_methods_own_uint8_array_and_keeps_tensors_as_they_are():
    pixels = numbered(3)
    kept = held(pixels)
    pixels[:] = 9  # the method draws its next frame into the same array
    assert int(kept[0, 0, 0]) == 3
    tensor = torch.zeros(1, 3, 2, 2)
    assert held(tensor) is tensor


@pytest.mark.parametrize("layout", ["batch", "chw", "half", "strided"])
def test_a_tensors_pixels_are_those_of_the_numpy_path_out_of_range_and_nan_included(layout):
    image = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(3)) * 1.4 - 0.2
    image[0, :, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    tensor = {
        "batch": image,
        "chw": image[0],
        "half": image.half(),
        "strided": image.transpose(2, 3).contiguous().transpose(2, 3),
    }[layout]
    pixels = to_pixels(tensor)
    assert pixels.shape == (7, 9, 3) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert np.array_equal(pixels, to_uint8(to_image(tensor)))
    assert pixels[0, :4, 0].tolist() == [0, 255, 0, 128]


def test_a_frame_made_into_pixels_on_another_thread_gets_the_same_pixels_without_torch(monkeypatch):
    import threading

    import convlens.encode

    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    image[0, 0, 0, 0] = float("nan")
    frame = EncodedFrame(0, 0, "main", image)
    made: list[np.ndarray] = []
    monkeypatch.setattr(convlens.encode, "pixels_of", None)  # the job's torch path must not be taken here
    thread = threading.Thread(target=lambda: made.append(frame.pixels))
    thread.start()
    thread.join()
    assert np.array_equal(made[0], Frame(image).pixels())


def test_a_gif_shows_smaller_frames_scaled_to_the_last_ones_size(tmp_path):
    # DeepDream's frames are each octave at its own size, smallest first.
    from convlens.results import write_gif

    small = np.zeros((20, 30, 3), np.uint8)
    small[:, :15] = 255  # left half white
    write_gif(tmp_path / "run.gif", [small, np.zeros((40, 60, 3), np.uint8)])
    gif = Image.open(tmp_path / "run.gif")
    assert gif.n_frames == 2 and gif.size == (60, 40)
    first = np.asarray(gif.convert("RGB"))
    assert first[:, :28].min() > 200 and first[:, 32:].max() < 50
