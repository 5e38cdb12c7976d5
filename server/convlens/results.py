"""A finished run on disk: final images as PNG, the frames as a GIF, and ``result.json``.

The server and the CLI write results the same way, so a run from either is
reproducible from its JSON: method, model and its sha256, parameters and seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import __version__
from .events import pixels_of, to_uint8

if TYPE_CHECKING:
    import torch

    from .trained import TrainedModel

GIF_MAX_SIDE = 384
GIF_FRAME_MS = 100
REEL_FRAMES = 500
"""A run of up to 500 frames keeps all; longer ones keep 251 to 500 (a 2000-step run: every 8th frame)."""
REEL_BYTES = 128 * 2**20


class Reel:
    """The frames a run keeps for its GIF: all of them while they fit, then evenly spaced over the whole run.

    Once more than ``max_frames`` are kept, or more than ``max_bytes``, every other one is dropped and only
    every other frame offered from then on is kept (every 4th, 8th, ... after further halvings), so a long
    run's GIF spans all of it with ``max_frames / 2`` to ``max_frames`` frames, the last frame added at the
    end. Tensors are kept as float16 and made into pixels only by :meth:`frames`: converting a 224-px frame
    between two steps of a run took 0.2-0.3 ms, 1-2% of the step, and the pixels of a run's frames are
    needed only once it ends. float16 holds each 8-bit level but may round some values to the next one.
    """

    def __init__(self, max_frames: int | None = None, max_bytes: int | None = None) -> None:
        self.max_frames = max(2, REEL_FRAMES if max_frames is None else max_frames)
        self.max_bytes = REEL_BYTES if max_bytes is None else max_bytes
        self.stride = 1
        self.offered = 0
        self.kept: list[np.ndarray | torch.Tensor] = []
        self.kept_bytes = 0
        self.last: np.ndarray | torch.Tensor | None = None

    def add(self, image: np.ndarray | torch.Tensor) -> None:
        """Offer the run's next frame; ``image`` as :func:`events.held` keeps it."""
        index, self.offered = self.offered, self.offered + 1
        self.last = image
        if index % self.stride:
            return
        if not isinstance(image, np.ndarray) and image.is_floating_point():
            image = image.detach().half()
        self.kept.append(image)
        self.kept_bytes += image.nbytes
        while len(self.kept) > 1 and (len(self.kept) > self.max_frames or self.kept_bytes > self.max_bytes):
            self.kept = self.kept[::2]
            self.kept_bytes = sum(frame.nbytes for frame in self.kept)
            self.stride *= 2

    def frames(self) -> list[np.ndarray]:
        """The kept frames and the last one, as HxWx3 uint8."""
        frames = list(self.kept)
        if (self.offered - 1) % self.stride and self.last is not None:
            frames.append(self.last)
        return [pixels_of(frame) for frame in frames]


@dataclass
class RunRecord:
    method: str
    model_id: str
    model_sha256: str
    model_format: str
    image: str
    params: dict[str, Any]
    seed: int
    predictions: list[dict[str, Any]]
    metrics: dict[str, float]
    data: dict[str, Any]
    panel_predictions: dict[str, Any] | None = None
    """The run's newest :class:`~convlens.events.Predictions` as ``{"step", "tops"}``; ``None`` if it yielded none."""


def to_jsonable(value: Any) -> Any:
    """Numpy scalars and arrays, tuples and paths made JSON-serialisable."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(
    out_dir: Path,
    record: RunRecord,
    images: dict[str, np.ndarray],
    frames: list[np.ndarray],
    arrays: dict[str, np.ndarray] | None = None,
    models: dict[str, TrainedModel] | None = None,
    trained_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the run into ``out_dir`` and return what ``result.json`` holds.

    ``models`` (the method's trained networks) go into ``trained_dir`` as model files named after the run
    (``out_dir``'s name), and ``result.json``'s ``models`` lists their ids.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model_ids: list[str] = []
    if models:
        from .trained import write_trained

        if trained_dir is None:
            raise ValueError("the method trained models, but the run has no folder to keep them in")
        model_ids = write_trained(trained_dir, out_dir.name, models)
    files: dict[str, str] = {}
    for name, image in images.items():
        filename = f"{name}.png"
        Image.fromarray(to_uint8(image)).save(out_dir / filename, compress_level=1)
        files[name] = filename
    array_files: dict[str, str] = {}
    for name, array in (arrays or {}).items():
        filename = f"{name}.npy"
        np.save(out_dir / filename, np.asarray(array), allow_pickle=False)
        array_files[name] = filename
    animation = None
    if len(frames) > 1:
        animation = "frames.gif"
        write_gif(out_dir / animation, frames)
    summary = {
        "convlens": __version__,
        "method": record.method,
        "model": {"id": record.model_id, "sha256": record.model_sha256, "format": record.model_format},
        "image": record.image,
        "params": record.params,
        "seed": record.seed,
        "predictions": record.predictions,
        "metrics": record.metrics,
        "panel_predictions": record.panel_predictions,
        "data": record.data,
        "files": files,
        "arrays": array_files,
        "animation": animation,
        "models": model_ids,
        "frames": len(frames),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    summary = to_jsonable(summary)
    # Written last and whole (a reader never sees half of it): its presence says the run's files are all there.
    partial = out_dir / "result.json.tmp"
    partial.write_text(json.dumps(summary, indent=2))
    partial.replace(out_dir / "result.json")
    return summary


def write_gif(path: Path, frames: list[np.ndarray]) -> None:
    """An animated GIF of the frames (pixels).

    Frames are scaled so the long side is at most ``GIF_MAX_SIDE`` and quantised with
    PIL's fast octree: its default median cut took 20.8 s for 90 frames of 448x298
    here, the octree 0.64 s.
    """
    size = _gif_size(Image.fromarray(to_uint8(frames[-1])).size)
    pictures = [
        Image.fromarray(to_uint8(frame)).resize(size).quantize(256, method=Image.Quantize.FASTOCTREE)
        for frame in frames
    ]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=GIF_FRAME_MS, loop=0)


def _gif_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, GIF_MAX_SIDE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
