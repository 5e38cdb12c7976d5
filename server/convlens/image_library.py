"""The images a user can pick: plugins' samples, uploads (kept on disk by content hash), data sets' images
(``dataset:<data set id>:<index>``, e.g. a click on the code map) and finished jobs' result images
(``job:<job id>:<image name>``, e.g. a trained adversarial patch, read from the results folder)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import BadInput, NotFound
from .images import MAX_PIXELS, MAX_UPLOAD_BYTES, SampleImage, decode_image, read_image_file
from .params import plain_int

if TYPE_CHECKING:
    from .datasets import DatasetLibrary

DATASET_PREFIX = "dataset:"
JOB_PREFIX = "job:"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a job id may be: the server's are 12 hex digits; no dots or slashes, so no path leaves the results folder."""
MAX_JOB_IMAGE_ID = 200


class ImageLibrary:
    def __init__(
        self,
        samples: list[SampleImage],
        uploads_dir: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_PIXELS,
        datasets: DatasetLibrary | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self.samples = {sample.id: sample for sample in samples}
        self.uploads_dir = uploads_dir
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.datasets = datasets
        self.results_dir = results_dir
        """Where finished runs are written, one folder per job (``results.write_result``); ``None``: no job ids."""
        self.job_state: Callable[[str], str | None] | None = None
        """The state of a job this server knows (``None`` for one it does not), so that a job still running is
        told apart from an unknown one; without it only the results folder is read."""
        self._pixels: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def list(self) -> list[dict[str, str]]:
        items = [
            {"id": s.id, "title": s.title, "source": s.source or "sample", "url": f"/api/images/{s.id}"}
            for s in self.samples.values()
        ]
        for upload_id in self._upload_ids():
            items.append(
                {"id": upload_id, "title": upload_id, "source": "upload", "url": f"/api/images/{upload_id}"}
            )
        return items

    def _upload_ids(self) -> list[str]:
        if self.uploads_dir is None or not self.uploads_dir.is_dir():
            return []
        return sorted(path.stem for path in self.uploads_dir.glob("upload-*.png"))

    def get(self, image_id: str) -> np.ndarray:
        """HxWx3 uint8 pixels of a sample, an upload, a data set's image or a finished job's result image;
        ``BadInput`` (``NotFound``) names ``image``."""
        if image_id.startswith(DATASET_PREFIX):
            return self._dataset_image(image_id)  # not cached: the data set's files are the copy
        if image_id.startswith(JOB_PREFIX):
            return read_image_file(self.job_image_path(image_id), field="image")
        with self._lock:
            cached = self._pixels.get(image_id)
        if cached is not None:
            return cached
        if image_id in self.samples:
            pixels = np.asarray(self.samples[image_id].load())
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            pixels = np.ascontiguousarray(pixels[:, :, :3].astype(np.uint8))
        elif self.uploads_dir is not None and image_id.startswith("upload-") and image_id.isascii():
            path = self.uploads_dir / f"{Path(image_id).name}.png"
            if not path.is_file():
                raise NotFound("image", f"unknown image {image_id!r}")
            pixels = read_image_file(path, field="image")
        else:
            raise NotFound(
                "image",
                f"unknown image {image_id!r}; expected a sample ({', '.join(self.samples)}) or an upload id",
            )
        with self._lock:
            self._pixels[image_id] = pixels
        return pixels

    def _dataset_image(self, image_id: str) -> np.ndarray:
        """Item ``index`` of a data set, for ``dataset:<data set id>:<index>`` (the id may hold colons)."""
        dataset_id, _, index = image_id[len(DATASET_PREFIX) :].rpartition(":")
        shown = image_id[:120]
        if self.datasets is None:
            raise NotFound("image", f"unknown image {shown!r}: this library has no data sets")
        if not dataset_id or plain_int(index) is None:
            raise NotFound("image", f"expected dataset:<data set id>:<index>, got {shown!r}")
        try:
            dataset = self.datasets.get(dataset_id)
            count = len(dataset)
            if int(index) >= count:
                raise NotFound("index", f"data set {dataset.id!r} has items 0 to {count - 1}, not {index}")
            return dataset.load(int(index))
        except BadInput as error:  # an unknown or emptied data set, or a file gone
            raise NotFound("image", f"{shown!r}: {error.reason}") from None

    def job_image_path(self, image_id: str) -> Path:
        """The PNG of ``job:<job id>:<image name>``: the image ``name`` of the job's ``result.json`` ``files``, in
        its folder of the results folder. 400 for an id not of that form, 404 for a job with no result there or
        an image it did not make, 409 for a job this server is still running."""
        shown = repr(image_id[:120])
        if len(image_id) > MAX_JOB_IMAGE_ID:
            raise BadInput("image", f"a job image id is at most {MAX_JOB_IMAGE_ID} characters; got {shown}…")
        job_id, colon, name = image_id[len(JOB_PREFIX) :].partition(":")
        if not colon or not name or not JOB_ID.fullmatch(job_id):
            raise BadInput(
                "image",
                f"expected job:<job id>:<image name>, the job id in ASCII letters, digits, - and _; got {shown}",
            )
        if self.results_dir is None:
            raise NotFound("image", f"unknown image {shown}: this library reads no results folder")
        folder = self.results_dir / job_id
        try:
            files = json.loads((folder / "result.json").read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            state = self.job_state(job_id) if self.job_state is not None else None
            if state in ("queued", "running", "paused"):
                raise BadInput(
                    "image", f"job {job_id!r} is {state}: its result images exist once it is done", status=409
                ) from None
            why = f"job {job_id!r} {state}" if state else f"no finished job {job_id!r}"
            raise NotFound("image", f"{why}: it has no result images ({shown})") from None
        filename = files.get(name) if isinstance(files, dict) else None
        if not isinstance(filename, str) or Path(filename).name != filename or not filename.endswith(".png"):
            made = ", ".join(sorted(files)) if isinstance(files, dict) else ""
            raise NotFound(
                "image", f"job {job_id!r} made no result image {name[:60]!r}; its images: {made or 'none'}"
            )
        if not (folder / filename).is_file():
            raise NotFound(
                "image", f"job {job_id!r}'s result image {name[:60]!r} is gone from the results folder"
            )
        return folder / filename

    def add_upload(self, data: bytes) -> tuple[str, np.ndarray]:
        """Check and keep an uploaded file; returns its id and pixels."""
        pixels = decode_image(data, field="file", max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels)
        image_id = "upload-" + hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
        if self.uploads_dir is not None:
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
            path = self.uploads_dir / f"{image_id}.png"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                Image.fromarray(pixels).save(tmp, format="PNG")
                tmp.replace(path)
        with self._lock:
            self._pixels[image_id] = pixels
        return image_id, pixels

    def resolve(self, name_or_path: str) -> tuple[str, np.ndarray]:
        """For the CLI: a sample id, an upload id, a data set's or a finished job's image id, or a file path."""
        if name_or_path in self.samples or name_or_path.startswith(("upload-", DATASET_PREFIX, JOB_PREFIX)):
            return name_or_path, self.get(name_or_path)
        path = Path(name_or_path)
        if path.exists():
            return path.name, read_image_file(path, field="image")
        raise NotFound(
            "image", f"{name_or_path!r} is neither a sample ({', '.join(self.samples)}) nor a file"
        )
