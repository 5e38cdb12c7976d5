"""The gallery of finished runs: a result's hash, its thumbnail, what of its files is missing, and retention.

A run's hash (:func:`result_hash`) covers what is reproducible of it: ``result.json`` without the time it was
written and with the job's id taken out of every string (a trained network's id names the run), then the bytes
of each file it lists (images, arrays, the frames' GIF), in that file's name order. Two runs of the same model,
image, method, parameters and seed on the same machine hash the same; another seed or parameter (both in
``result.json``) does not.

Retention (:class:`Retention`) keeps the newest ``keep_runs`` ended runs and at most ``keep_bytes`` of results
folders, deleting the oldest ended runs first; queued, running and paused runs are never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from . import late_view
from .errors import BadInput, NotFound

if TYPE_CHECKING:
    from .jobs import Job, JobManager

log = logging.getLogger(__name__)

THUMBNAIL = "thumbnail.png"
THUMBNAIL_SIDE = 160
UNHASHED = ("written",)
"""``result.json`` keys that differ between two runs of the same request."""


def listed_files(result: dict[str, Any]) -> list[str]:
    """The file names a run's ``result.json`` lists (images, arrays, the GIF), sorted."""
    names = [*(result.get("files") or {}).values(), *(result.get("arrays") or {}).values()]
    if result.get("animation"):
        names.append("frames.gif")
    return sorted(set(names))


def result_hash(folder: Path, result: dict[str, Any], job_id: str) -> str:
    """The sha256 of a run's reproducible content: ``result`` (as ``results.write_result`` returned it) and the
    bytes of each file it lists in ``folder``."""
    kept = {key: value for key, value in result.items() if key not in UNHASHED}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":")).replace(job_id, "")
    digest = hashlib.sha256(text.encode())
    for name in listed_files(result):
        digest.update(b"\0" + name.encode() + b"\0")
        with open(folder / name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def missing_files(folder: Path, result: dict[str, Any] | None) -> list[str]:
    """The files of a done run's folder that are gone (``result.json`` first), deleted by hand."""
    if result is None:
        return []
    return [name for name in ["result.json", *listed_files(result)] if not (folder / name).is_file()]


def thumbnail_source(folder: Path, result: dict[str, Any] | None) -> Path | None:
    """The picture a run's thumbnail is made from: its first result image, else its newest late frame."""
    files = (result or {}).get("files") or {}
    if files:
        return folder / next(iter(files.values()))
    try:
        index = json.loads((folder / late_view.FOLDER / late_view.INDEX).read_text())
        newest = max(index["frames"], key=lambda entry: entry["seq"])
    except (OSError, ValueError, KeyError):
        return None
    return folder / late_view.FOLDER / newest["file"]


def thumbnail(folder: Path, job: Job) -> Path:
    """The run's thumbnail, made from :func:`thumbnail_source` and kept as ``thumbnail.png`` in ``folder`` until
    its source changes; 410 naming ``thumbnail`` when the source was deleted or damaged by hand."""
    source = thumbnail_source(folder, job.result)
    if source is None:
        raise NotFound("thumbnail", f"job {job.id!r} made no picture to show")
    cached = folder / THUMBNAIL
    try:
        changed = source.stat().st_mtime_ns
    except OSError:
        raise BadInput("thumbnail", _gone(job, source), status=410) from None
    if cached.is_file() and cached.stat().st_mtime_ns >= changed:
        return cached
    try:
        with Image.open(source) as picture:
            picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            small = picture.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        reason = f"the picture {source.name!r} of job {job.id!r} is damaged: it is not a readable image"
        raise BadInput("thumbnail", reason, status=410) from None
    partial = folder / (THUMBNAIL + ".tmp")
    small.save(partial, "PNG")
    partial.replace(cached)  # whole or not at all, for a request reading it meanwhile
    return cached


def _gone(job: Job, source: Path) -> str:
    return f"the picture {source.name!r} of job {job.id!r} was deleted from the results folder"


def entry(job: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """A gallery entry of an ended run's record (``Job.to_json``): what it ran, how it ended, its links, and
    ``missing``, the files deleted by hand (every one if its folder went)."""
    folder = results_dir / job["id"]
    result = job.get("result")
    missing = missing_files(folder, result) if job["state"] == "done" else []
    has_picture = thumbnail_source(folder, result) is not None or bool(missing)
    return {
        "id": job["id"],
        "method": job["method"],
        "model": job["model"],
        "image": job["image"],
        "params": job["params"],
        "seed": job["seed"],
        "state": job["state"],
        "created": job["created"],
        "finished": job.get("finished"),
        "error": (job.get("error") or {}).get("error"),
        "sha256": (result or {}).get("sha256"),
        "again_of": job.get("again_of"),
        "same_result": job.get("same_result"),
        "thumbnail": f"/api/jobs/{job['id']}/thumbnail.png" if has_picture else None,
        "permalink": f"/#job={job['id']}",
        "missing": missing,
    }


@dataclass(frozen=True)
class Retention:
    """How many ended runs, and how many bytes of their results folders, a server keeps; 0: no limit."""

    keep_runs: int = 0
    keep_bytes: int = 0

    def apply(self, jobs: JobManager) -> list[str]:
        """Delete the oldest ended runs past either limit (record, folder, trained networks); their ids."""
        if self.keep_runs <= 0 and self.keep_bytes <= 0:
            return []
        ended = sorted(jobs.ended_records(), key=lambda record: (record.get("finished") or 0, record["id"]))
        doomed: list[str] = []
        if self.keep_runs > 0 and len(ended) > self.keep_runs:
            doomed = [record["id"] for record in ended[: len(ended) - self.keep_runs]]
            ended = ended[len(doomed) :]
        if self.keep_bytes > 0:
            sizes = [folder_bytes(jobs.results_dir / record["id"]) for record in ended]
            total = sum(sizes)
            for record, size in zip(ended, sizes, strict=True):
                if total <= self.keep_bytes:
                    break
                doomed.append(record["id"])
                total -= size
        jobs.discard(doomed)
        if doomed:
            log.info("retention: deleted %d run(s), the oldest past the limits", len(doomed))
        return doomed


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 if it is gone)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # deleted meanwhile
                pass
    return total


def page(
    jobs: JobManager, owner: str, limit: int, before: str | None = None
) -> tuple[list[dict], str | None]:
    """Up to ``limit`` gallery entries of ``owner``'s ended runs, newest first, after the job ``before``
    (``KeyError`` if unknown), and the cursor of the page after (``None`` on the last)."""
    entries = list(islice(jobs.ended_records(owner, before), limit + 1))
    following = entries[limit - 1]["id"] if len(entries) > limit else None
    return [entry(record, jobs.results_dir) for record in entries[:limit]], following
