"""What a finished job shows a viewer who subscribes late, kept on disk so the job itself can leave memory.

When a job ends, each label's newest frame (lossless PNG), each label's newest points and every panel's newest
top classes are written to ``<results>/<job id>/late/``, with ``late.json`` naming them, written last. A late
viewer of a job no longer in memory (ended, or from before a restart) is sent them as a viewer who watched saw
them last. A folder deleted by hand leaves a late viewer the job's state, history, log and result only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import events as ev
from .encode import EncodedFrame

if TYPE_CHECKING:
    from .jobs import Job

FOLDER = "late"
INDEX = "late.json"


def write(folder: Path, job: Job) -> None:
    """Keep ``job``'s newest frames, points and top classes in ``folder`` (nothing if it has none)."""
    frames = list(job.latest_frames.values())
    points = list(job.latest_points.values())
    tops = job.latest_tops
    if not (frames or points or tops):
        return
    folder.mkdir(parents=True, exist_ok=True)
    index: dict = {"frames": [], "points": [], "tops": [], "tops_step": tops.step}
    for frame in frames:
        name = f"frame-{frame.seq}.png"
        (folder / name).write_bytes(frame.data("png"))
        index["frames"].append({"seq": frame.seq, "step": frame.step, "label": frame.label, "file": name})
    for number, kept in enumerate(points):
        name = f"points-{number}.npy"
        np.save(folder / name, kept.positions, allow_pickle=False)
        index["points"].append({"step": kept.step, "label": kept.label, "file": name})
    for panel, top in tops.tops().items():
        step = tops.events([panel])[0].step
        index["tops"].append({"panel": panel, "step": step, "top": top})
    partial = folder / (INDEX + ".tmp")
    partial.write_text(json.dumps(index))
    partial.replace(folder / INDEX)


def load(folder: Path, job: Job, quality: int = 85) -> None:
    """Fill ``job``'s newest frames, points and top classes from ``folder``, when it holds a complete set."""
    try:
        index = json.loads((folder / INDEX).read_text())
        frames = {
            entry["label"]: EncodedFrame(
                entry["seq"], entry["step"], entry["label"], _pixels(folder / entry["file"]), quality
            )
            for entry in index["frames"]
        }
        points = {
            entry["label"]: ev.Points(
                np.load(folder / entry["file"], allow_pickle=False), entry["step"], entry["label"]
            )
            for entry in index["points"]
        }
    except (OSError, ValueError, KeyError):
        return  # deleted or damaged by hand: the viewer gets the rest of the job
    job.latest_frames = frames
    job.latest_points = points
    tops = ev.PanelTops()
    for entry in index["tops"]:
        tops.add(ev.Predictions({entry["panel"]: entry["top"]}, step=entry["step"]))
    tops.step = index["tops_step"]
    job.latest_tops = tops


def _pixels(path: Path) -> np.ndarray:
    with Image.open(io.BytesIO(path.read_bytes())) as picture:
        return np.asarray(picture.convert("RGB"))
