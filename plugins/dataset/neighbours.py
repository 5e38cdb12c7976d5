"""Nearest neighbours in code space: the data-set images a network thinks are most like the query.

Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012,
section 6.1 and figure 4 (right): the training images whose last hidden layer's codes lie nearest the query's
by Euclidean distance; they may differ a great deal from the query in pixels and still show the same thing.

Here the code is any layer's activations (default: the penultimate, the layer the classifier reads; a spatial
layer is averaged over its positions), kept for the whole data set in the feature store
(:mod:`convlens.features`), and the distance is Euclidean (``l2``) or one minus the cosine similarity
(``cosine``, which ignores a code's length). The query is the chosen picture, or (``query_index``) one of the
data set's own images, which is then left out of its own neighbours. Beside them, the nearest neighbours by the
same distance in pixel space (each image resized to ``pixel_size`` squared, RGB in [0, 1]), the baseline the
paper's figure argues against.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.images import resize
from convlens.methods import Method, RunContext
from convlens.params import Choice, Dataset, Int, Layer

if TYPE_CHECKING:
    from convlens.datasets import Dataset as DataSet

REFERENCE = (
    "Krizhevsky, Sutskever, Hinton 2012, ImageNet Classification with Deep Convolutional Neural Networks, "
    "NIPS 2012, section 6.1, figure 4"
)
TILE = 96
"""Pixels a side of each picture in the mosaic."""
GAP = 4


def distances(codes: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """The distance of each row of ``codes`` (N x D) to ``query`` (D): Euclidean, or 1 - cosine similarity."""
    codes = np.asarray(codes, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    if metric == "l2":
        return np.sqrt(np.maximum(((codes - query) ** 2).sum(axis=1), 0.0))
    norms = np.linalg.norm(codes, axis=1) * np.linalg.norm(query)
    return 1.0 - (codes @ query) / np.where(norms > 0, norms, 1.0)


def nearest(found: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
    """Indices of the ``k`` smallest of the distances ``found``, nearest first (ties by index), without
    ``exclude``."""
    if exclude is not None:
        found = found.copy()
        found[exclude] = np.inf
    k = min(k, len(found) - (exclude is not None))
    return np.lexsort((np.arange(len(found)), found))[:k]


def pixel_codes(dataset: DataSet, size: int) -> Generator[int, None, np.ndarray]:
    """Each image of ``dataset`` resized to ``size`` x ``size``, flattened; yields how many are done."""
    codes = np.empty((len(dataset), size * size * 3), dtype=np.float32)
    for index in range(len(dataset)):
        codes[index] = resize(dataset.load(index), (size, size)).reshape(-1)
        if (index + 1) % 64 == 0 or index + 1 == len(dataset):
            yield index + 1
    return codes


def _tile(pixels: np.ndarray) -> np.ndarray:
    return resize(pixels, (TILE, TILE))


def mosaic(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of pictures (each resized to a square tile), the query first in each, a wider gap after it."""
    columns = max(len(row) for row in rows)
    height = len(rows) * (TILE + GAP) + GAP
    width = columns * (TILE + GAP) + 2 * GAP + GAP
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for r, row in enumerate(rows):
        top = GAP + r * (TILE + GAP)
        for c, picture in enumerate(row):
            left = GAP + c * (TILE + GAP) + (2 * GAP if c else 0)
            canvas[top : top + TILE, left : left + TILE] = _tile(picture)
    return canvas


def _describe(dataset: DataSet, indices: np.ndarray, found: np.ndarray) -> list[dict[str, Any]]:
    items = dataset.items()
    return [
        {"index": int(i), "key": items[i].key, "label": items[i].label, "distance": float(found[i])}
        for i in indices
    ]


def run(ctx: RunContext) -> Iterator[Event]:
    from convlens.features import layer_runner, penultimate_layer

    params = ctx.params
    dataset = ctx.datasets["dataset"]
    model = ctx.model
    layer = params["layer"] or penultimate_layer(model)
    query_index = params["query_index"]
    if query_index is not None and query_index >= len(dataset):
        raise BadInput(
            "params.query_index",
            f"data set {dataset.id!r} has {len(dataset)} images (0 to {len(dataset) - 1})",
        )
    total = 2 * len(dataset)

    extraction = ctx.features.extract(model, dataset, layer)
    try:
        while True:
            progress = next(extraction)
            yield Progress(progress.step, total)
    except StopIteration as finished:
        features = finished.value
    finally:
        extraction.close()

    if query_index is None:
        query_pixels = ctx.image
        run_layer, _ = layer_runner(model, layer)
        batch = resize(query_pixels, model.input_size).transpose(2, 0, 1)[None]
        activations = run_layer(np.ascontiguousarray(batch, dtype=np.float32))
        query_code = activations.mean(axis=(2, 3))[0] if activations.ndim == 4 else activations[0]
    else:
        query_pixels = dataset.load(query_index)
        query_code = features.codes[query_index]
    metric = params["metric"]
    k = params["k"]
    code_found = distances(features.codes, query_code, metric)
    by_code = nearest(code_found, k, exclude=query_index)
    code_row = [query_pixels, *(dataset.load(i) for i in by_code)]
    yield Frame(mosaic([code_row]), label="code space")

    size = params["pixel_size"]
    pixels = pixel_codes(dataset, size)
    try:
        while True:
            yield Progress(len(dataset) + next(pixels), total)
    except StopIteration as finished:
        pixel_space = finished.value
    query_vector = resize(query_pixels, (size, size)).reshape(-1)
    pixel_found = distances(pixel_space, query_vector, metric)
    by_pixels = nearest(pixel_found, k, exclude=query_index)
    rows = [code_row, [query_pixels, *(dataset.load(i) for i in by_pixels)]]
    picture = mosaic(rows)
    yield Frame(picture, label="code space (top) and pixel space (bottom)")
    yield Result(
        images={"neighbours": picture},
        arrays={"code_indices": by_code.astype(np.int64), "pixel_indices": by_pixels.astype(np.int64)},
        data={
            "dataset": dataset.id,
            "layer": features.layer,
            "engine": features.engine,
            "metric": metric,
            "query": {"index": query_index} if query_index is not None else {"image": "the chosen picture"},
            "code_neighbours": _describe(dataset, by_code, code_found),
            "pixel_neighbours": _describe(dataset, by_pixels, pixel_found),
        },
    )


NEIGHBOURS = Method(
    name="nearest_neighbours",
    title="Nearest neighbours in code space",
    topic="What the network has learned",
    description=(
        "The data-set images whose codes at a layer lie nearest the picture's (Euclidean or cosine), beside "
        "the nearest in pixel space."
    ),
    reference=REFERENCE,
    run=run,
    params=(
        Dataset("dataset", "skimage_crops", title="Data set"),
        Layer("layer", title="Code layer", help="empty: the penultimate layer"),
        Int("k", 8, minimum=1, maximum=32, title="Neighbours"),
        Choice("metric", "l2", ["l2", "cosine"], title="Distance"),
        Int(
            "query_index",
            None,
            nullable=True,
            minimum=0,
            title="Query from the data set",
            help="the index of a data-set image to query with; empty: the chosen picture",
        ),
        Int("pixel_size", 32, minimum=4, maximum=128, title="Pixel-space size"),
    ),
    needs=frozenset({"layers"}),
)
