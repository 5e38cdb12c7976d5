"""A finished run's frames as a WebM video (VP9), made from its GIF on first request.

Encoding VP9 costs seconds for a few hundred frames on a small CPU, far more than the GIF, so a job does not
pay it unless someone downloads the video; the file is then kept next to the GIF. The encoder is the ffmpeg
binary that the ``imageio-ffmpeg`` wheel ships. Frames keep the GIF's size (long side at most 384 px), padded
to even sides as 4:2:0 video needs, at the GIF's rate.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from PIL import Image, ImageSequence

from .errors import NotFound
from .results import GIF_FRAME_MS

_lock = threading.Lock()


def webm_of(gif: Path) -> Path:
    """The WebM beside ``gif`` (``frames.webm``), encoded now if it is not there yet."""
    webm = gif.with_suffix(".webm")
    with _lock:
        if not webm.is_file():
            if not gif.is_file():
                raise NotFound("animation", "this run has no frames to make a video of")
            encode_webm(gif, webm)
    return webm


def encode_webm(gif: Path, webm: Path) -> int:
    """Encode the frames of ``gif`` into ``webm`` (written atomically); the number of frames."""
    import imageio_ffmpeg

    with Image.open(gif) as animation:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(animation)]
    width, height = frames[0].size
    even = (width + width % 2, height + height % 2)
    partial = webm.with_suffix(".webm.part")
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{even[0]}x{even[1]}",
        "-r",
        f"{1000 / GIF_FRAME_MS:g}",
        "-i",
        "-",
        "-c:v",
        "libvpx-vp9",
        "-b:v",
        "0",
        "-crf",
        "32",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "webm",
        str(partial),
    ]
    raw = b"".join(_padded(frame, even).tobytes() for frame in frames)
    done = subprocess.run(command, input=raw, capture_output=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"ffmpeg failed to encode {webm.name}: {done.stderr.decode(errors='replace')[-500:]}"
        )
    partial.replace(webm)
    return len(frames)


def _padded(frame: Image.Image, size: tuple[int, int]) -> Image.Image:
    if frame.size == size:
        return frame
    canvas = Image.new("RGB", size)
    canvas.paste(frame, (0, 0))
    return canvas
