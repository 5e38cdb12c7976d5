"""The images a user can pick: plugins' samples, uploads (kept on disk by content hash), data sets' images
(``dataset:<data set id>:<index>``, e.g. a click on the code map) and finished jobs' result images
(``job:<job id>:<image name>``, e.g. a trained adversarial patch, read from the results folder).

Decoded pictures and encoded thumbnails are kept in one cache bounded in bytes; an upload belongs to the clients
that sent it, each under the name it gave (:mod:`convlens.upload_owners`), and anyone with its id may read it."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .byte_cache import ByteLRU
from .errors import BadInput, NotFound
from .images import MAX_PIXELS, MAX_UPLOAD_BYTES, SampleImage, decode_image, read_image_file
from .params import plain_int
from .upload_owners import UploadOwners, upload_name

if TYPE_CHECKING:
    from .datasets import DatasetLibrary

DATASET_PREFIX = "dataset:"
JOB_PREFIX = "job:"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a job id may be: the server's are 12 hex digits; no dots or slashes, so no path leaves the results folder."""
MAX_JOB_IMAGE_ID = 200
CACHE_BYTES = 256 * 2**20


def encode_png(pixels: np.ndarray, size: int = 0) -> bytes:
    """HxWx3 uint8 as PNG bytes, scaled down to fit ``size`` x ``size`` when given (a thumbnail)."""
    picture = Image.fromarray(pixels)
    if size:
        picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class ImageLibrary:
    def __init__(
        self,
        samples: list[SampleImage],
        uploads_dir: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_PIXELS,
        datasets: DatasetLibrary | None = None,
        results_dir: Path | None = None,
        cache_bytes: int = CACHE_BYTES,
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
        self.cache = ByteLRU(cache_bytes)
        """Decoded pixels by ``("pixels", id)`` and PNGs by ``("png", id, size)``, of samples and uploads."""
        self.owners = UploadOwners(uploads_dir) if uploads_dir is not None else None
        self._lock = threading.Lock()  # around changes to the uploads' files and their owners

    def list(self, client: str | None = None) -> list[dict[str, str]]:
        """The samples, then the uploads ``client`` owns under the names it gave them, the first sent first."""
        items = [
            {"id": s.id, "title": s.title, "source": s.source or "sample", "url": f"/api/images/{s.id}"}
            for s in self.samples.values()
        ]
        if client is not None and self.owners is not None and self.uploads_dir.is_dir():
            for upload_id, name in self.owners.owned_by(client):
                items.append(
                    {"id": upload_id, "title": name, "source": "upload", "url": f"/api/images/{upload_id}"}
                )
        return items

    def _upload_path(self, image_id: str) -> Path | None:
        """The PNG of an upload id (whether it exists or not); ``None`` for another id."""
        if self.uploads_dir is None or not image_id.startswith("upload-") or not image_id.isascii():
            return None
        return self.uploads_dir / f"{Path(image_id).name}.png"

    def get(self, image_id: str) -> np.ndarray:
        """HxWx3 uint8 pixels of a sample, an upload, a data set's image or a finished job's result image;
        ``BadInput`` (``NotFound``) names ``image``."""
        if image_id.startswith(DATASET_PREFIX):
            return self._dataset_image(image_id)  # not cached: the data set's files are the copy
        if image_id.startswith(JOB_PREFIX):
            return read_image_file(self.job_image_path(image_id), field="image")
        cached = self.cache.get(("pixels", image_id))
        if cached is not None:
            return cached
        upload = self._upload_path(image_id)
        if image_id in self.samples:
            pixels = np.asarray(self.samples[image_id].load())
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            pixels = np.ascontiguousarray(pixels[:, :, :3].astype(np.uint8))
        elif upload is not None:
            if not upload.is_file():
                raise NotFound("image", f"unknown image {image_id!r}")
            pixels = read_image_file(upload, field="image")
        else:
            raise NotFound(
                "image",
                f"unknown image {image_id!r}; expected a sample ({', '.join(self.samples)}) or an upload id",
            )
        # Jobs read the whole picture (a crop, a style image, deepdream's octaves), so the full size is kept.
        self.cache.put(("pixels", image_id), pixels, pixels.nbytes)
        return pixels

    def png(self, image_id: str, size: int = 0) -> bytes | Path:
        """The image as PNG, fitted into ``size`` x ``size`` when given: an upload's or a job's own file when no
        size is asked, else encoded once and kept in the cache (samples and uploads)."""
        if not size:
            upload = self._upload_path(image_id)
            if upload is not None and upload.is_file():
                return upload
            if image_id.startswith(JOB_PREFIX):
                return self.job_image_path(image_id)
        cacheable = image_id in self.samples or self._upload_path(image_id) is not None
        key = ("png", image_id, size)
        cached = self.cache.get(key) if cacheable else None
        if cached is not None:
            return cached
        data = encode_png(self.get(image_id), size)
        if cacheable:
            self.cache.put(key, data, len(data))
        return data

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

    def add_upload(
        self, data: bytes, owner: str | None = None, filename: str | None = None
    ) -> tuple[str, np.ndarray]:
        """Check and keep an uploaded file, owned by ``owner`` (a client id) under ``filename`` made fit to show
        (:func:`~convlens.upload_owners.upload_name`); returns its id and pixels."""
        pixels = decode_image(data, field="file", max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels)
        image_id = "upload-" + hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
        if self.uploads_dir is not None:
            with self._lock:
                self.uploads_dir.mkdir(parents=True, exist_ok=True)
                path = self.uploads_dir / f"{image_id}.png"
                if not path.exists():
                    tmp = path.with_suffix(".tmp")
                    Image.fromarray(pixels).save(tmp, format="PNG")
                    tmp.replace(path)
                if owner is not None:
                    self.owners.add(image_id, owner, upload_name(filename, image_id))
        self.cache.put(("pixels", image_id), pixels, pixels.nbytes)
        return image_id, pixels

    def delete_upload(self, image_id: str, owner: str) -> None:
        """``owner`` gives up its upload ``image_id``; the file goes with its last owner. 404 for an id that is
        no upload here, 403 for a sample or an upload ``owner`` does not own."""
        if image_id in self.samples:
            raise BadInput("image", f"{image_id!r} is a sample: it belongs to the server", status=403)
        path = self._upload_path(image_id)
        if path is None or self.owners is None or not path.is_file():
            raise NotFound("image", f"no upload {image_id[:120]!r}")
        with self._lock:
            if owner not in self.owners.owners(image_id):
                raise BadInput("image", f"upload {image_id!r} is not yours to delete", status=403)
            if not self.owners.remove(image_id, owner):
                path.unlink(missing_ok=True)
                self.cache.discard(lambda key: key[1] == image_id)

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
