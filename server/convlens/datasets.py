"""Data sets: collections of images a method looks at together (top patches, the code map, neighbours).

A :class:`Dataset` lists its items in a stable order, loads one as HxWx3 uint8 and has a fingerprint that changes
when its content may have. :class:`FolderDataset` is a folder of images at any depth, labelled by its first-level
folders as torchvision's ``ImageFolder`` does; :class:`IdxDataset` a folder of MNIST's four IDX files; plugins
register others (``register_datasets``). The :class:`DatasetLibrary` is what the server and the CLI offer: the
registered ones, the folders found in the data-set folders, and uploaded zips (:mod:`convlens.dataset_zip`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dataset_zip import ZipLimits, unpack_zip
from .errors import BadInput, NotFound
from .images import read_image_file


@dataclass(frozen=True)
class DatasetItem:
    """One image of a data set: ``key`` names it within the set (a relative path), ``label`` its class."""

    key: str
    label: str | None = None


class Dataset(ABC):
    """A collection of images; ``items()`` and ``load(index)`` agree on one stable order."""

    id: str
    title: str
    source: str

    def __len__(self) -> int:
        return len(self.items())

    @abstractmethod
    def items(self) -> list[DatasetItem]:
        """Every item, in a stable order."""

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """The pixels of item ``index``: HxWx3 uint8 RGB, upright as a viewer shows them."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest that changes whenever the content of any item may have changed."""

    def labels(self) -> list[str]:
        """The distinct labels, sorted; ``[]`` for an unlabelled set."""
        return sorted({item.label for item in self.items() if item.label is not None})

    def skipped(self) -> list[dict[str, str]]:
        """Files that were left out, each ``{key, reason}``."""
        return []

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "source": self.source,
            "count": len(self),
            "labels": self.labels(),
            "skipped": len(self.skipped()),
        }

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise NotFound(
                "index", f"data set {self.id!r} has {len(self)} items (0–{len(self) - 1}), got {index}"
            )


IMAGE_EXTENSIONS = frozenset(ext for ext, _ in Image.registered_extensions().items())
"""File name endings PIL reads (``.png``, ``.jpg``, ``.webp``, ...); other files are skipped and listed."""


class FolderDataset(Dataset):
    """The images under ``path``, at any depth, in sorted path order.

    An image inside a first-level folder (``cat/1.jpg``, ``cat/more/2.jpg``) is labelled by that folder's name
    (torchvision's ``ImageFolder`` layout); images directly in ``path`` have no label. Hidden files and folders
    are ignored; other files that are not images PIL can read are skipped and listed in :meth:`skipped`. The
    folder is listed when first asked; :meth:`fingerprint` looks again (names, sizes and modification times), so a
    changed file is noticed without reading any content.
    """

    def __init__(
        self, path: Path, id: str | None = None, title: str | None = None, source: str = "folder"
    ) -> None:
        self.path = Path(path)
        self.id = id or self.path.name
        self.title = title or self.id
        self.source = source
        self._lock = threading.Lock()
        self._scanned: tuple[str, list[DatasetItem], list[dict[str, str]]] | None = None

    def _files(self) -> list[tuple[str, os.stat_result]]:
        """Every non-hidden file below the folder as (relative POSIX path, stat), sorted by path."""
        if not self.path.is_dir():
            raise NotFound("dataset", f"data set {self.id!r}: the folder {self.path} is gone")
        found = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                full = Path(root, name)
                try:
                    info = full.stat()
                except OSError:  # a dangling link, or removed while listed
                    continue
                found.append((full.relative_to(self.path).as_posix(), info))
        return sorted(found, key=lambda entry: entry[0])

    @staticmethod
    def _digest(files: Iterable[tuple[str, os.stat_result]]) -> str:
        digest = hashlib.sha256()
        for key, info in files:
            digest.update(f"{key}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def fingerprint(self) -> str:
        return self._digest(self._files())

    def _scan(self) -> tuple[str, list[DatasetItem], list[dict[str, str]]]:
        with self._lock:
            if self._scanned is None:
                files = self._files()
                items, skipped = [], []
                for key, _info in files:
                    reason = self._not_an_image(key)
                    if reason:
                        skipped.append({"key": key, "reason": reason})
                    else:
                        parts = key.split("/")
                        items.append(DatasetItem(key, parts[0] if len(parts) > 1 else None))
                if not items:
                    raise BadInput("dataset", f"data set {self.id!r}: no images in {self.path}")
                self._scanned = (self._digest(files), items, skipped)
            return self._scanned

    def _not_an_image(self, key: str) -> str | None:
        """Why the file ``key`` is not an image, or ``None``: a PIL extension and a header PIL recognises."""
        suffix = Path(key).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            return f"not an image file ({suffix or 'no extension'})"
        try:
            with Image.open(self.path / key):  # reads the header only
                return None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            return f"not an image PIL can read: {type(error).__name__}"

    def items(self) -> list[DatasetItem]:
        return self._scan()[1]

    def skipped(self) -> list[dict[str, str]]:
        return self._scan()[2]

    def load(self, index: int) -> np.ndarray:
        self._check_index(index)
        key = self.items()[index].key
        path = self.path / key
        if not path.is_file():
            raise NotFound("dataset", f"data set {self.id!r}: {key} was removed; look at the data set again")
        return read_image_file(path, field="dataset")


IDX_PARTS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""MNIST's four files by split (images, labels), each also taken gzipped (``.gz``)."""


def idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The IDX files of each split when ``folder`` holds all four (plain or ``.gz``), else ``None``."""
    found = {}
    for split, names in IDX_PARTS.items():
        paths = []
        for name in names:
            present = [folder / f for f in (name, f"{name}.gz") if (folder / f).is_file()]
            if not present:
                return None
            paths.append(present[0])
        found[split] = (paths[0], paths[1])
    return found


class IdxDataset(Dataset):
    """MNIST-style data from IDX files (:mod:`convlens.idx`): the ``train`` split's items, then ``t10k``'s, keyed
    ``train/00000``, ``t10k/00000``, ... and labelled by their label byte; each item a grey picture (ink bright, as
    MNIST has it). The files are read when first asked; a file that is not IDX, or images and labels that do
    not match, is ``BadInput`` naming ``dataset``."""

    def __init__(self, path: Path, id: str | None = None, source: str = "folder") -> None:
        self.path = Path(path)
        self.id = id or self.path.name
        self.title = self.id
        self.source = source
        self._lock = threading.Lock()
        self._scanned: tuple[str, dict[str, tuple[np.ndarray, np.ndarray]], list[DatasetItem]] | None = None

    def _paths(self) -> dict[str, tuple[Path, Path]]:
        files = idx_files(self.path)
        if files is None:
            raise NotFound("dataset", f"data set {self.id!r}: its IDX files in {self.path} are gone")
        return files

    def fingerprint(self) -> str:
        files = idx_files(self.path)
        if files is None:  # no longer IDX-shaped: a digest no reading had, so the library looks at it afresh
            return "gone"
        digest = hashlib.sha256()
        for images, labels in files.values():
            for path in (images, labels):
                try:
                    info = path.stat()
                except OSError:  # removed since it was found
                    return "gone"
                digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each split's images (N×H×W uint8) and labels (N uint8), by ``train`` and ``t10k``."""
        return self._scan()[1]

    def _scan(self) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]], list[DatasetItem]]:
        from .idx import read_idx

        with self._lock:
            if self._scanned is None:
                fingerprint = self.fingerprint()
                splits, items = {}, []
                for split, (image_path, label_path) in self._paths().items():
                    images = read_idx(image_path, "dataset", 3)
                    labels = read_idx(label_path, "dataset", 1)
                    if len(images) != len(labels):
                        raise BadInput(
                            "dataset",
                            f"data set {self.id!r}: {image_path.name} holds {len(images)} images but "
                            f"{label_path.name} {len(labels)} labels",
                        )
                    if splits and images.shape[1:] != next(iter(splits.values()))[0].shape[1:]:
                        raise BadInput("dataset", f"data set {self.id!r}: the splits' images differ in size")
                    splits[split] = (images, labels)
                    items += [DatasetItem(f"{split}/{i:05d}", str(label)) for i, label in enumerate(labels)]
                self._scanned = (fingerprint, splits, items)
            return self._scanned

    def items(self) -> list[DatasetItem]:
        return self._scan()[2]

    def load(self, index: int) -> np.ndarray:
        self._check_index(index)
        split, number = self.items()[index].key.split("/")
        grey = self.splits()[split][0][int(number)]
        return np.repeat(grey[..., None], 3, axis=2)


RECHECK_S = 1.0
"""How long the library trusts a folder's listing before looking at its files again."""


def open_folder(path: Path, dataset_id: str, source: str) -> FolderDataset | IdxDataset:
    """The folder as an :class:`IdxDataset` when it holds MNIST's four IDX files, else a :class:`FolderDataset`."""
    if idx_files(path) is not None:
        return IdxDataset(path, id=dataset_id, source=source)
    return FolderDataset(path, id=dataset_id, source=source)


class DatasetLibrary:
    """The data sets a user can pick: the plugins' (``register_datasets``), each sub-folder of ``dirs`` (the id
    is the folder's name; earlier folders and registered sets win a name) and the uploads kept in
    ``uploads_dir``. Folders are only read."""

    def __init__(
        self,
        registered: Iterable[Dataset] = (),
        dirs: Iterable[Path] = (),
        uploads_dir: Path | None = None,
        zip_limits: ZipLimits | None = None,
    ) -> None:
        self.registered = {dataset.id: dataset for dataset in registered}
        self.dirs = [Path(d) for d in dirs]
        self.uploads_dir = uploads_dir
        self.zip_limits = zip_limits or ZipLimits()
        self._folders: dict[Path, tuple[FolderDataset | IdxDataset, float]] = {}
        self._lock = threading.Lock()

    def _folder_paths(self) -> dict[str, tuple[Path, str]]:
        """Each folder data set's id → (path, source), first found first."""
        found: dict[str, tuple[Path, str]] = {}
        roots = [(d, "folder") for d in self.dirs]
        if self.uploads_dir is not None:
            roots.append((self.uploads_dir, "upload"))
        for root, source in roots:
            try:
                children = sorted(root.iterdir())
            except OSError:  # missing or unreadable: nothing to offer from it
                continue
            for child in children:
                if child.is_dir() and not child.name.startswith(".") and child.name not in self.registered:
                    found.setdefault(child.name, (child, source))
        return found

    def ids(self) -> list[str]:
        return [*self.registered, *self._folder_paths()]

    def get(self, dataset_id: str) -> Dataset:
        """The data set ``dataset_id``; ``NotFound`` names ``dataset``. A folder whose files changed since it
        was last listed is listed again."""
        if dataset_id in self.registered:
            return self.registered[dataset_id]
        folders = self._folder_paths()
        if dataset_id not in folders:
            raise NotFound("dataset", f"unknown data set {dataset_id[:80]!r}; expected one of {self.ids()}")
        path, source = folders[dataset_id]
        with self._lock:
            dataset, checked = self._folders.get(path, (None, 0.0))
            # Looking again stats every file: at most once a second, not at each of a page's thumbnails.
            if dataset is None or time.monotonic() - checked > RECHECK_S:
                if (
                    dataset is None
                    or dataset._scanned is None
                    or dataset._scanned[0] != dataset.fingerprint()
                ):
                    dataset = open_folder(path, dataset_id, source)
                self._folders[path] = (dataset, time.monotonic())
        return dataset

    def list(self) -> list[dict[str, Any]]:
        """Every data set's :meth:`Dataset.to_json`; one that cannot be read is ``{id, title, source, error}``."""
        listing = []
        for dataset_id in self.ids():
            try:
                listing.append(self.get(dataset_id).to_json())
            except BadInput as error:
                listing.append(
                    {"id": dataset_id, "title": dataset_id, "source": "folder", "error": error.reason}
                )
        return listing

    def add_zip(self, data: bytes, filename: str = "") -> Dataset:
        """Check and unpack an uploaded zip of images into the uploads folder; the new data set.

        ``BadInput`` naming ``file``: not a zip, a bad member (named), too large, or no image in it.
        """
        if self.uploads_dir is None:
            raise BadInput("file", "this server keeps no uploads", status=403)
        folder = unpack_zip(data, self.uploads_dir, Path(filename or "dataset").stem, self.zip_limits)
        dataset = open_folder(folder, folder.name, "upload")
        try:
            dataset.items()
        except BadInput as error:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(dataset, IdxDataset):
                raise BadInput("file", f"the zip's IDX files cannot be read: {error.reason}") from None
            raise BadInput("file", f"the zip holds no images PIL can read ({error.reason})") from None
        return self.get(folder.name)
