"""The images a user can pick: plugins' samples, uploads (kept on disk by content hash) and data sets' images
(``dataset:<data set id>:<index>``, e.g. a click on the code map)."""

from __future__ import annotations

import hashlib
import threading
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


class ImageLibrary:
    def __init__(
        self,
        samples: list[SampleImage],
        uploads_dir: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_PIXELS,
        datasets: DatasetLibrary | None = None,
    ) -> None:
        self.samples = {sample.id: sample for sample in samples}
        self.uploads_dir = uploads_dir
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.datasets = datasets
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
        """HxWx3 uint8 pixels of a sample, an upload or a data set's image; ``NotFound`` names ``image``."""
        if image_id.startswith(DATASET_PREFIX):
            return self._dataset_image(image_id)  # not cached: the data set's files are the copy
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
        """For the CLI: a sample id, an upload id, or a file path."""
        if name_or_path in self.samples or name_or_path.startswith(("upload-", DATASET_PREFIX)):
            return name_or_path, self.get(name_or_path)
        path = Path(name_or_path)
        if path.exists():
            return path.name, read_image_file(path, field="image")
        raise NotFound(
            "image", f"{name_or_path!r} is neither a sample ({', '.join(self.samples)}) nor a file"
        )
