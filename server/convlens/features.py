"""The feature store: one layer's activations for every image of a data set, computed once and kept on disk.

The flow: data set → a thread pool decoding and resizing the next batches → batched forward passes (ONNX Runtime
for an ONNX file whose layer it can reach, else torch under ``inference_mode``) → per image the layer's code,
pooled over positions when the layer is spatial, and optionally per channel the k largest activations with
where they are → chunks written atomically under ``data_dir/features/<key>/`` → one ``codes.npy``.

A store is keyed by the model's sha256, the layer, the preprocessing (input size, mean, std, resize rule) and
the data set's fingerprint, so a second view of the same data set reuses it and a changed file makes a new one.
:meth:`FeatureStore.extract` is a generator of :class:`~convlens.events.Progress` events, so a method streams
it with ``codes = yield from store.extract(...)``; closing it (a job stopped) keeps every finished batch, and
a later call resumes after them, as it does after a crash (only whole chunks survive one).

The default layer is the penultimate code, the one the classifier reads (Krizhevsky, Sutskever & Hinton 2012,
section 6.1, retrieve by fc7 codes; Karpathy's t-SNE of CNN codes); a spatial layer there (EfficientNet's
7x7 head, before the global pooling) is pooled by its mean over positions, as that pooling does. The top
activations are what maximally activating patches need (Girshick, Donahue, Darrell & Malik 2014, section 3.1).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .errors import BadInput
from .events import Progress
from .images import resize
from .models.base import Model

RESIZE_RULE = "stretch-bicubic"
"""How an image becomes the model's input, as every job does it (:func:`convlens.images.resize`)."""
FORMAT_VERSION = 1
"""Part of the key: a change to what a store holds makes new stores rather than misreading old ones."""


class DatasetLike(Protocol):
    """What the store needs of a data set (:class:`convlens.datasets.Dataset` is one)."""

    id: str

    def __len__(self) -> int: ...
    def load(self, index: int) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class Preprocessing:
    """How pixels reach the network: resized to ``input_size`` by ``resize``, normalised by ``mean`` and ``std``."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = RESIZE_RULE

    @classmethod
    def of(cls, model: Model) -> Preprocessing:
        return cls(tuple(model.input_size), tuple(model.card.mean), tuple(model.card.std))


@dataclass
class Features:
    """A finished store: ``codes`` (N x C float32, pooled), ``top`` if asked for, and how they were made."""

    codes: np.ndarray
    layer: str
    shape: tuple[int, ...]
    """The layer's output shape for one image (CxHxW for a spatial layer, before pooling)."""
    engine: str
    """``onnxruntime`` or ``torch``: what ran the forward passes that made the store."""
    path: Path
    top: TopActivations | None = None


def penultimate_layer(model: Model) -> str:
    """The layer the classifier reads: the last one before the trailing layers shaped like the logits."""
    layers = model.layers()
    if len(layers) < 2:
        raise BadInput("layer", f"model {model.id!r} has no layer before its output")
    output = layers[-1].shape
    for layer in reversed(layers[:-1]):
        if layer.shape != output:
            return layer.name
    raise BadInput("layer", f"model {model.id!r} has no layer before its output")


def model_fingerprint(model: Model) -> str:
    """The model file's sha256, or for an in-memory module the sha256 of its weights."""
    if model.path.is_file():
        return model.sha256
    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise BadInput("model", f"model {model.id!r} has no file or weights to key its features by")
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TopActivations:
    """Per channel the ``k`` largest activations seen so far, with their (image index, row, col).

    Memory is C x k whatever the number of images: each batch's candidates are cut to k per channel with
    ``argpartition`` and merged with the running k.
    """

    def __init__(self, k: int, channels: int) -> None:
        self.k = k
        self.values = np.full((channels, k), -np.inf, dtype=np.float32)
        self.where = np.full((channels, k, 3), -1, dtype=np.int64)

    def add(self, activations: np.ndarray, first_image: int) -> None:
        """Merge a batch of N x C x H x W (or N x C) activations whose first image is ``first_image``."""
        batch = activations.reshape(activations.shape[0], activations.shape[1], -1)
        height, width = activations.shape[2:] if activations.ndim == 4 else (1, 1)
        flat = batch.transpose(1, 0, 2).reshape(batch.shape[1], -1)  # C x (N*H*W), image-major
        if flat.shape[1] > self.k:
            best = np.argpartition(flat, -self.k, axis=1)[:, -self.k :]
        else:
            best = np.broadcast_to(np.arange(flat.shape[1]), (flat.shape[0], flat.shape[1]))
        values = np.take_along_axis(flat, best, axis=1).astype(np.float32)
        image, position = np.divmod(best, height * width)
        where = np.stack([image + first_image, position // width, position % width], axis=-1)
        merged_values = np.concatenate([self.values, values], axis=1)
        merged_where = np.concatenate([self.where, where], axis=1)
        keep = np.argpartition(merged_values, -self.k, axis=1)[:, -self.k :]
        self.values = np.take_along_axis(merged_values, keep, axis=1)
        self.where = np.take_along_axis(merged_where, keep[..., None], axis=1)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """Values (C x k, largest first) and their (image, row, col) (C x k x 3); fewer seen: -inf and -1."""
        order = np.argsort(-self.values, axis=1, kind="stable")
        return np.take_along_axis(self.values, order, axis=1), np.take_along_axis(
            self.where, order[..., None], axis=1
        )

    def save(self, path: Path, done: int) -> None:
        _write_atomically(
            path, lambda handle: np.savez(handle, values=self.values, where=self.where, done=done)
        )

    @classmethod
    def load(cls, path: Path) -> tuple[TopActivations, int]:
        with np.load(path) as saved:
            top = cls(saved["values"].shape[1], saved["values"].shape[0])
            top.values, top.where = saved["values"], saved["where"]
            return top, int(saved["done"])


class FeatureStore:
    """Stores under ``root`` (``Config.data_dir / "features"``), one folder per key."""

    def __init__(self, root: Path, chunk_size: int = 512, workers: int = 2) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.workers = workers
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def key(self, model: Model, layer: str, fingerprint: str) -> str:
        """The store's key: sha256 of the model, layer, preprocessing and the data set's ``fingerprint``."""
        spec = {
            "version": FORMAT_VERSION,
            "model": model_fingerprint(model),
            "layer": layer,
            "preprocessing": asdict(Preprocessing.of(model)),
            "dataset": fingerprint,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def features(
        self,
        model: Model,
        dataset: DatasetLike,
        layer: str | None = None,
        *,
        top_k: int = 0,
        batch_size: int = 32,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Features | None:
        """:meth:`extract` run to its end: the features, or ``None`` if ``stop`` was set first."""
        steps = self.extract(model, dataset, layer, top_k=top_k, batch_size=batch_size)
        try:
            while True:
                progress = next(steps)
                if on_progress:
                    on_progress(progress)
                if stop is not None and stop.is_set():
                    return None
        except StopIteration as finished:
            return finished.value
        finally:
            steps.close()

    def extract(
        self,
        model: Model,
        dataset: DatasetLike,
        layer: str | None = None,
        *,
        top_k: int = 0,
        batch_size: int = 32,
        on_top: Callable[[TopActivations], None] | None = None,
    ) -> Generator[Progress, None, Features]:
        """Yield :class:`Progress` (images done of all) as batches finish; return the :class:`Features`.

        ``layer`` defaults to :func:`penultimate_layer`; ``top_k`` > 0 also keeps per channel the k best
        positions, and ``on_top`` is given that accumulator before the pass, so a view can draw the best so far
        at each ``Progress``. A store already complete yields one ``Progress`` and returns at once.
        """
        layer = layer or penultimate_layer(model)
        shape = model.layer(layer).shape
        if len(shape) not in (1, 3):
            raise BadInput("layer", f"layer {layer!r} is {len(shape)}-D per image; codes need C or CxHxW")
        total = len(dataset)
        if total == 0:
            raise BadInput("dataset", f"data set {dataset.id!r} has no images")
        if top_k < 0:
            raise BadInput("top_k", "must be 0 or more")
        fingerprint = dataset.fingerprint()
        key = self.key(model, layer, fingerprint)
        folder = self.root / key[:32]
        with self._lock(key):
            folder.mkdir(parents=True, exist_ok=True)
            _write_meta(folder, model, layer, shape, dataset, total)
            codes_file = folder / "codes.npy"
            top_file = folder / f"top-{top_k}.npz"
            codes_done = total if codes_file.exists() else _chunks_done(folder)[0]
            top, top_done = (None, total)
            if top_k:
                top, top_done = (
                    TopActivations.load(top_file)
                    if top_file.exists()
                    else (TopActivations(top_k, shape[0]), 0)
                )
                if on_top is not None:
                    on_top(top)
            start = min(codes_done, top_done)
            engine = _engine_of(folder)
            if start < total:
                run, engine = layer_runner(model, layer)
                (folder / "engine").write_text(engine)
                size = Preprocessing.of(model).input_size
                yield from self._pass(
                    dataset, run, size, start, total, batch_size, folder, codes_done, top, top_file
                )
                if dataset.fingerprint() != fingerprint:  # its codes would mix the old files and the new
                    shutil.rmtree(folder, ignore_errors=True)
                    raise BadInput(
                        "dataset", f"data set {dataset.id!r} changed while its features were computed"
                    )
            else:
                yield Progress(total, total)
            if not codes_file.exists():
                _join_chunks(folder, codes_file)
            codes = np.load(codes_file)
        return Features(codes, layer, tuple(shape), engine, folder, top)

    def _pass(
        self,
        dataset: DatasetLike,
        run: Callable[[np.ndarray], np.ndarray],
        input_size: tuple[int, int],
        start: int,
        total: int,
        batch_size: int,
        folder: Path,
        codes_done: int,
        top: TopActivations | None,
        top_file: Path,
    ) -> Generator[Progress, None, None]:
        """Forward images ``start`` … ``total``, writing a chunk of codes (and the top state) every
        ``chunk_size`` images and at a stop, so that what is on disk always covers a prefix of the data set."""
        pending: list[np.ndarray] = []
        chunk_start = start
        done = start

        def commit() -> None:
            nonlocal chunk_start
            if done == chunk_start:
                return
            if done > codes_done:
                codes = np.concatenate(pending)[max(0, codes_done - chunk_start) :]
                first = max(chunk_start, codes_done)
                _write_atomically(folder / f"chunk-{first:09d}.npy", lambda handle: np.save(handle, codes))
            if top is not None:
                top.save(top_file, done)
            pending.clear()
            chunk_start = done

        starts = range(start, total, batch_size)
        batches = _prefetched(dataset, input_size, starts, batch_size, total, self.workers)
        try:
            for first, pixels in batches:
                activations = run(pixels)
                pending.append(activations.mean(axis=(2, 3)) if activations.ndim == 4 else activations)
                if top is not None:
                    top.add(activations, first)
                done = first + pixels.shape[0]
                if done - chunk_start >= self.chunk_size:
                    commit()
                yield Progress(done, total)
            commit()
        finally:
            batches.close()
            if done != chunk_start:  # stopped (the generator closed): keep the finished batches
                commit()

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())


def layer_runner(model: Model, layer: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A function from N x 3 x H x W pixels in [0, 1] to the layer's activations (numpy), and its engine.

    ONNX Runtime on a copy of the file cut at the layer's tensor when the model is an ONNX file that Runtime
    runs and the layer is one tensor of it; the model's torch forward otherwise.
    """
    run = _runtime_runner(model, layer) if model.format == "onnx" else None
    engine = "onnxruntime"
    if run is None:
        engine = "torch"

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                forward = model.forward(torch.from_numpy(pixels), [layer], logits=False)
            return forward.activations[layer].float().numpy()

    return run, engine


def _runtime_runner(model: Model, layer: str) -> Callable[[np.ndarray], np.ndarray] | None:
    import onnx
    import onnx.utils

    from .models.onnx import runtime_session

    if model._runtime() is None:  # type: ignore[attr-defined]
        return None
    model.layers()
    tensor = model._tensor_of.get(model._node_of.get(layer, ""))  # type: ignore[attr-defined]
    proto = onnx.load(str(model.path))
    if tensor is None or tensor not in {name for node in proto.graph.node for name in node.output}:
        return None
    try:
        cut = onnx.utils.Extractor(proto).extract_model([model.input_name], [tensor])  # type: ignore[attr-defined]
        session = runtime_session(cut.SerializeToString())
    except Exception:  # noqa: BLE001 - a graph Runtime cannot cut or run is left to torch
        return None
    mean = np.asarray(model.card.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(model.card.std, dtype=np.float32).reshape(1, 3, 1, 1)
    fixed = model.fixed_batch  # type: ignore[attr-defined]
    name, dtype = model.input_name, model.input_dtype  # type: ignore[attr-defined]

    def run(pixels: np.ndarray) -> np.ndarray:
        inputs = ((pixels - mean) / std).astype(dtype, copy=False)
        count = inputs.shape[0]
        if not fixed or count == fixed:
            return session.run(None, {name: inputs})[0].astype(np.float32, copy=False)
        parts = []
        for begin in range(0, count, fixed):
            chunk = inputs[begin : begin + fixed]
            if chunk.shape[0] < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - chunk.shape[0], *chunk.shape[1:]), dtype)])
            parts.append(session.run(None, {name: chunk})[0][: min(fixed, count - begin)])
        return np.concatenate(parts).astype(np.float32, copy=False)

    return run


def _prefetched(
    dataset: DatasetLike,
    input_size: tuple[int, int],
    starts: Sequence[int],
    batch_size: int,
    total: int,
    workers: int,
) -> Generator[tuple[int, np.ndarray], None, None]:
    """(first index, N x 3 x H x W float32) batches, decoded and resized by a pool ``workers`` batches ahead,
    so the next batches are ready while the current one runs through the network."""

    def load(first: int) -> tuple[int, np.ndarray]:
        stop = min(first + batch_size, total)
        pixels = np.empty((stop - first, 3, *input_size), dtype=np.float32)
        for row, index in enumerate(range(first, stop)):
            pixels[row] = resize(dataset.load(index), input_size).transpose(2, 0, 1)
        return first, pixels

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convlens-features")
    queue: deque[Future] = deque()
    upcoming = iter(starts)
    try:
        for first in upcoming:
            queue.append(pool.submit(load, first))
            if len(queue) > workers:
                break
        while queue:
            batch = queue.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                queue.append(pool.submit(load, following))
            yield batch
    finally:
        for future in queue:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _chunks_done(folder: Path) -> tuple[int, list[Path]]:
    """How many images the chunks on disk cover from the start, and those chunks in order."""
    done, chunks = 0, []
    for path in sorted(folder.glob("chunk-*.npy")):
        first = int(path.stem.split("-")[1])
        if first != done:
            break
        done += int(np.load(path, mmap_mode="r").shape[0])
        chunks.append(path)
    return done, chunks


def _join_chunks(folder: Path, codes_file: Path) -> None:
    _, chunks = _chunks_done(folder)
    codes = np.concatenate([np.load(path) for path in chunks])
    _write_atomically(codes_file, lambda handle: np.save(handle, codes))
    for path in folder.glob("chunk-*.npy"):
        path.unlink()


def _engine_of(folder: Path) -> str:
    path = folder / "engine"
    return path.read_text() if path.exists() else "unknown"


def _write_meta(folder: Path, model: Model, layer: str, shape, dataset: DatasetLike, total: int) -> None:
    meta: dict[str, Any] = {
        "model": model.id,
        "layer": layer,
        "shape": list(shape),
        "preprocessing": asdict(Preprocessing.of(model)),
        "dataset": dataset.id,
        "images": total,
    }
    path = folder / "meta.json"
    if not path.exists():
        _write_atomically(path, lambda handle: handle.write(json.dumps(meta, indent=1).encode()))


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file renamed over ``path``: a crash leaves the old file or the new, whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
