"""The code map: a data set's codes laid out in two dimensions, images the network finds alike side by side.

Karpathy, "t-SNE visualization of CNN codes" (cs.stanford.edu/people/karpathy/cnnembed, 2014): the fc7 codes of
ImageNet validation images embedded in 2-D with t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE",
JMLR 9, 2008), each image drawn at its point, and the same layout snapped to a grid. The t-SNE here is openTSNE's
(Poličar, Stražar & Zupan, J. Stat. Softw. 109(3), 2024) with its defaults: perplexity-based affinities over the
3 × perplexity nearest neighbours, PCA initialisation, 250 iterations of early exaggeration (12) then the
ordinary ones, Barnes-Hut gradients below 10,000 points and FFT-accelerated interpolation (Linderman et al. 2019)
from there. ``method`` can instead be UMAP (McInnes, Healy & Melville 2018; umap-learn, ``iterations`` its
epochs) or PCA (scikit-learn).

Differences from the page: the codes are any layer's (default the penultimate, the one the classifier reads; a
spatial layer averaged over its positions), kept for the whole data set in the feature store
(:mod:`convlens.features`). While t-SNE runs, openTSNE hands its positions every ``every`` iterations to this
module, which draws them (each image a ``thumb``-pixel tile bordered in its label's colour, the layout scaled
uniformly into a 512-pixel square) and streams them with the KL divergence openTSNE evaluates there. UMAP
offers no such view of its progress: its map is drawn once, at the end. The grid is an optimal assignment of
points to the cells of the smallest square grid that holds them (least total squared distance between a point,
its layout scaled to the unit square, and its cell; ``scipy.optimize.linear_sum_assignment``); the assignment's
cost matrix grows as N², so above :data:`GRID_MAX` points a seeded random subset of that many is snapped. The
map's figure of merit is the neighbour hit (Paulovich, Nonato, Minghim & Levkowitz 2008): the fraction of each
point's 10 nearest neighbours in the layout that share its label, averaged over the labelled points.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Points, Progress, Result
from convlens.images import resize
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, Dataset, Float, Int, Layer

if TYPE_CHECKING:
    from convlens.datasets import Dataset as DataSet
    from convlens.models.base import Model

REFERENCE = (
    "Karpathy 2014, t-SNE visualization of CNN codes; van der Maaten & Hinton 2008, Visualizing Data using "
    "t-SNE, JMLR 9"
)
FRAME_SIZE = 512
"""Pixels a side of the frames streamed while the layout is optimised."""
GRID_MAX = 4096
"""The most points snapped to a grid (64 x 64 cells): the assignment then takes a few seconds on 2 cores, and its
cost matrix (points x cells) grows as the square of the number."""
NEIGHBOURS = 10
"""The neighbour hit counts each point's 10 nearest neighbours in the layout."""
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.uint8,
)
"""Label colours (matplotlib's tab10), reused in turn past ten labels."""
UNLABELLED = np.array((200, 200, 200), dtype=np.uint8)


@dataclass
class Snapshot:
    """The layout at ``iteration`` of ``total``: N x 2 float32 ``positions`` and the KL divergence there."""

    iteration: int
    total: int
    positions: np.ndarray
    kl_divergence: float | None = None


def smallest_set(method: str, perplexity: float) -> int:
    """The fewest points ``method`` lays out: t-SNE needs 3 x perplexity neighbours per point (openTSNE would
    silently lower the perplexity), UMAP's spectral start at least 5, PCA 2."""
    if method == "tsne":
        return max(4, math.floor(3 * perplexity) + 1)
    return 5 if method == "umap" else 2


class _Handover:
    """openTSNE's callback: hands a copy of the positions to the consumer and says whether to stop.

    openTSNE runs two optimisations (early exaggeration, then the ordinary one), each counting from 1, and
    tells its callbacks when each starts; the offset makes one count of both.
    """

    def __init__(self, total: int, early_iterations: int, publish: Callable[[Snapshot], bool]) -> None:
        self.total, self.early_iterations, self.publish = total, early_iterations, publish
        self.offset = -early_iterations

    def optimization_about_to_start(self) -> None:
        self.offset += self.early_iterations

    def __call__(self, iteration: int, error: float, embedding: np.ndarray) -> bool:
        snapshot = Snapshot(self.offset + iteration, self.total, np.array(embedding, dtype=np.float32), error)
        return not self.publish(snapshot)


def tsne_layout(
    codes: np.ndarray,
    *,
    perplexity: float,
    early_iterations: int,
    iterations: int,
    every: int,
    seed: int,
    init: str = "pca",
    n_jobs: int = 1,
) -> Generator[Snapshot, None, Snapshot]:
    """openTSNE's ``TSNE(...).fit(codes)``, yielding a :class:`Snapshot` of the start (a PCA or random one) and
    then every ``every`` iterations; returns the final one.

    openTSNE runs on a thread of its own, so it keeps optimising while the consumer draws the previous
    snapshot; it waits when the consumer has not taken that one (a paused job pauses it), and stops at its next
    callback when the generator is closed.
    """
    from openTSNE import TSNE

    total = early_iterations + iterations
    handed: queue.Queue[Snapshot | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def publish(item: Snapshot | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    start: str | np.ndarray = init
    if init in ("pca", "random"):
        # openTSNE's own start, made here so that it can be shown before the affinities are ready.
        from openTSNE import initialization

        start = (
            initialization.pca(codes, 2, random_state=seed)
            if init == "pca"
            else initialization.random(len(codes), 2, random_state=seed)
        )
        yield Snapshot(0, total, start.astype(np.float32))
    tsne = TSNE(
        perplexity=perplexity,
        early_exaggeration_iter=early_iterations,
        n_iter=iterations,
        initialization=start,
        random_state=seed,
        n_jobs=n_jobs,
        callbacks=_Handover(total, early_iterations, publish),
        callbacks_every_iters=every,
    )
    final: list[Snapshot] = []

    def optimise() -> None:
        try:
            embedding = tsne.fit(codes)
            final.append(Snapshot(total, total, np.asarray(embedding, np.float32), embedding.kl_divergence))
            publish(None)
        except BaseException as error:  # re-raised on the consumer's thread
            publish(error)

    worker = threading.Thread(target=optimise, name="code-map-tsne", daemon=True)
    worker.start()
    try:
        while (item := handed.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
    return final[0]


def umap_layout(codes: np.ndarray, *, iterations: int, seed: int) -> np.ndarray:
    """UMAP's 2-D layout of ``codes`` (umap-learn; 15 neighbours or all, ``iterations`` epochs), N x 2 float32."""
    import umap

    layout = umap.UMAP(n_neighbors=min(15, len(codes) - 1), n_epochs=iterations, random_state=seed)
    return layout.fit_transform(codes).astype(np.float32)


def pca_layout(codes: np.ndarray, *, seed: int) -> np.ndarray:
    """The codes' first two principal components (scikit-learn), N x 2 float32."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(codes).astype(np.float32)


def snap_to_grid(positions: np.ndarray) -> tuple[np.ndarray, int]:
    """Each point's (row, col) in the smallest square grid that holds them all, one point a cell, and its side.

    The layout is min-max scaled to the unit square on each axis (x to columns, y to rows), the cell centres
    spread over it, and the total squared distance from points to their cells is minimised exactly
    (``scipy.optimize.linear_sum_assignment``).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    side = max(1, math.ceil(math.sqrt(len(positions))))
    low = positions.min(axis=0)
    span = np.where(np.ptp(positions, axis=0) > 0, np.ptp(positions, axis=0), 1.0)
    scaled = (positions - low) / span
    rows, cols = np.divmod(np.arange(side * side), side)
    centres = np.stack([cols, rows], axis=1) / max(side - 1, 1)
    points, cells = linear_sum_assignment(cdist(scaled, centres, "sqeuclidean"))
    placed = np.empty((len(positions), 2), dtype=np.int32)
    placed[points] = np.stack([rows[cells], cols[cells]], axis=1)
    return placed, side


def neighbour_hit(positions: np.ndarray, labels: list[str | None], k: int = NEIGHBOURS) -> float | None:
    """Mean over labelled points of the fraction of their ``k`` nearest others in ``positions`` with the same
    label; ``None`` when no point has a label."""
    from sklearn.neighbors import NearestNeighbors

    labelled = np.array([label is not None for label in labels])
    if not labelled.any() or len(positions) < 2:
        return None
    k = min(k, len(positions) - 1)
    _, found = NearestNeighbors(n_neighbors=k + 1).fit(positions).kneighbors(positions)
    own = np.arange(len(positions))[:, None]
    # Drop the point itself (first unless another lies exactly on it), keeping k others.
    others = np.array([row[row != i][:k] for row, i in zip(found, own[:, 0], strict=True)])
    names = np.array([label if label is not None else "" for label in labels], dtype=object)
    same = (names[others] == names[own]) & labelled[own]
    return float(same[labelled].mean())


def chance_hit(labels: list[str | None]) -> float | None:
    """The neighbour hit of a layout that ignores the codes: the chance that another point shares the label."""
    named = [label for label in labels if label is not None]
    if not named or len(labels) < 2:
        return None
    _, counts = np.unique(named, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(named) * (len(labels) - 1)))


class Thumbnails:
    """Every image of ``dataset`` as a ``size``-pixel tile with a border in its label's colour.

    Tiles start as squares of the label's colour and are filled in by a thread pool in the background, so a
    map can be drawn before all are loaded; :meth:`close` stops the loading.
    """

    def __init__(self, dataset: DataSet, size: int, labels: list[str | None], workers: int = 2) -> None:
        names = sorted({label for label in labels if label is not None})
        index = {name: i for i, name in enumerate(names)}
        self.colours = np.stack(
            [UNLABELLED if label is None else PALETTE[index[label] % len(PALETTE)] for label in labels]
        )
        self.size = size
        self.border = max(1, size // 12) if names else 0
        self.tiles = np.broadcast_to(self.colours[:, None, None, :], (len(labels), size, size, 3)).copy()
        self.dataset = dataset
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-map-thumbs")
        self._loading = [self._pool.submit(self._load, i) for i in range(len(labels))]

    def _load(self, index: int) -> None:
        inner = self.size - 2 * self.border
        picture = (resize(self.dataset.load(index), (inner, inner)) * 255 + 0.5).astype(np.uint8)
        b = self.border
        self.tiles[index, b : b + inner, b : b + inner] = picture

    def wait(self) -> None:
        """Until every tile is loaded (a picture that fails to load stays a colour square)."""
        for loading in self._loading:
            loading.exception()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def draw_map(tiles: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """A ``size``-pixel white square with tile i at point i of ``positions``, the layout scaled uniformly (both
    axes by one factor, so distances keep their meaning) and centred; later points drawn over earlier ones."""
    tile = tiles.shape[1]
    room = size - tile
    low = positions.min(axis=0)
    span = float(np.ptp(positions, axis=0).max()) or 1.0
    scaled = (positions - low) / span * room
    offset = (room - scaled.max(axis=0)) / 2
    left, top = np.rint(scaled + offset).astype(np.intp).T
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    steps = np.arange(tile)
    canvas[top[:, None, None] + steps[None, :, None], left[:, None, None] + steps[None, None, :]] = tiles
    return canvas


def draw_grid(tiles: np.ndarray, cells: np.ndarray, side: int) -> np.ndarray:
    """Tile i in cell ``cells[i]`` (row, col) of a ``side`` x ``side`` grid; points without a cell (-1) left out."""
    tile = tiles.shape[1]
    canvas = np.full((side * tile, side * tile, 3), 255, dtype=np.uint8)
    for (row, col), picture in zip(cells, tiles, strict=True):
        if row >= 0:
            canvas[row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = picture
    return canvas


def _grid_of(positions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Cells for at most :data:`GRID_MAX` points (a seeded random subset of a larger set; others -1)."""
    chosen = np.arange(len(positions))
    if len(chosen) > GRID_MAX:
        chosen = np.sort(rng.choice(len(positions), GRID_MAX, replace=False))
    cells = np.full((len(positions), 2), -1, dtype=np.int32)
    cells[chosen], side = snap_to_grid(positions[chosen])
    return cells, side, len(chosen)


def _label(method: str) -> str:
    """The frames' label, the same all run: a label names the canvas a frame is drawn on (one per label); the
    iteration is the frame's step."""
    return "t-SNE" if method == "tsne" else method.upper()


def check_size(params: dict[str, Any], model: Model, datasets: dict[str, DataSet]) -> None:
    """A data set too small for the layout: t-SNE's names ``params.perplexity``, the others ``params.dataset``."""
    dataset = datasets["dataset"]
    method, perplexity = params["method"], params["perplexity"]
    count = len(dataset)
    if count < smallest_set(method, perplexity):
        if method == "tsne":
            raise BadInput(
                "params.perplexity",
                f"data set {dataset.id!r} has {count} image{'s' * (count != 1)}; t-SNE with perplexity "
                f"{perplexity:g} needs at least {smallest_set(method, perplexity)}"
                + (f" (perplexity at most {(count - 1) / 3:g} for this set)" if count >= 4 else ""),
            )
        raise BadInput(
            "params.dataset",
            f"data set {dataset.id!r} has {count} images; {method} needs at least "
            f"{smallest_set(method, perplexity)}",
        )


def run(ctx: RunContext) -> Iterator[Event]:
    from convlens.features import penultimate_layer

    params = ctx.params
    dataset = ctx.datasets["dataset"]
    method = params["method"]
    count = len(dataset)
    layer = params["layer"] or penultimate_layer(ctx.model)
    steps = params["early_iterations"] + params["iterations"] if method == "tsne" else 1
    total = count + steps

    extraction = ctx.features.extract(ctx.model, dataset, layer)
    try:
        while True:
            yield Progress(next(extraction).step, total)
    except StopIteration as finished:
        features = finished.value
    finally:
        extraction.close()

    codes = features.codes
    labels = [item.label for item in dataset.items()]
    yield Log(f"{method}: {count} codes of {features.layer} ({codes.shape[1]} numbers each)")
    thumbnails = Thumbnails(dataset, params["thumb"], labels)
    try:
        kl = None
        if method == "tsne":
            layout = tsne_layout(
                codes,
                perplexity=params["perplexity"],
                early_iterations=params["early_iterations"],
                iterations=params["iterations"],
                every=params["every"],
                seed=ctx.seed,
                init=params["init"],
                n_jobs=params["n_jobs"],
            )
            try:
                while True:
                    snapshot = next(layout)
                    if snapshot.kl_divergence is not None:
                        yield Metrics(
                            {"kl_divergence": float(snapshot.kl_divergence)}, step=snapshot.iteration
                        )
                    # The points first: the page draws them itself, before this thread has drawn the frame.
                    yield Points(snapshot.positions, step=snapshot.iteration)
                    yield Frame(
                        draw_map(thumbnails.tiles, snapshot.positions, FRAME_SIZE),
                        step=snapshot.iteration,
                        label=_label(method),
                    )
                    yield Progress(count + snapshot.iteration, total)
            except StopIteration as finished:
                positions, kl = finished.value.positions, float(finished.value.kl_divergence)
            finally:
                layout.close()
        elif method == "umap":
            positions = umap_layout(codes, iterations=params["iterations"], seed=ctx.seed)
        else:
            positions = pca_layout(codes, seed=ctx.seed)
        thumbnails.wait()
        yield Progress(total, total)
        yield Points(positions, step=steps)
        picture = draw_map(thumbnails.tiles, positions, params["size"])
        yield Frame(draw_map(thumbnails.tiles, positions, FRAME_SIZE), step=steps, label=_label(method))
        images: dict[str, np.ndarray] = {"code_map": picture}
        arrays: dict[str, np.ndarray] = {"positions": positions.astype(np.float32)}
        grid: dict[str, Any] | None = None
        if params["grid"]:
            cells, side, placed = _grid_of(positions, ctx.rng)
            images["grid"] = draw_grid(thumbnails.tiles, cells, side)
            arrays["grid_positions"] = cells
            grid = {"side": side, "points": placed}
    finally:
        thumbnails.close()
    yield Result(
        images=images,
        arrays=arrays,
        data={
            "dataset": dataset.id,
            "layer": features.layer,
            "engine": features.engine,
            "method": method,
            "points": count,
            "dimensions": int(codes.shape[1]),
            "labels": labels,
            "neighbours": NEIGHBOURS,
            "neighbour_hit": neighbour_hit(positions, labels),
            "neighbour_hit_chance": chance_hit(labels),
            "kl_divergence": kl,
            "grid": grid,
        },
    )


CODE_MAP = Method(
    name="code_map",
    title="Code map (t-SNE of CNN codes)",
    topic="What the network has learned",
    description=(
        "A data set's codes at a layer embedded in 2-D (t-SNE, UMAP or PCA), each image drawn at its point, "
        "live while the layout is optimised; optionally snapped to a grid."
    ),
    reference=REFERENCE,
    check_datasets=check_size,
    run=run,
    params=(
        Dataset("dataset", "skimage_crops", title="Data set"),
        Layer("layer", title="Code layer", help="empty: the penultimate layer"),
        Choice("method", "tsne", ["tsne", "umap", "pca"], title="Embedding"),
        Float(
            "perplexity",
            30.0,
            minimum=1,
            maximum=1000,
            title="Perplexity",
            help="t-SNE: the effective number of neighbours; the data set needs more than 3 x perplexity images",
        ),
        Int("early_iterations", 250, minimum=0, maximum=5000, title="Early-exaggeration iterations"),
        Int(
            "iterations",
            500,
            minimum=1,
            maximum=10000,
            title="Iterations",
            help="t-SNE's after early exaggeration; UMAP's epochs",
        ),
        Choice("init", "pca", ["pca", "spectral", "random"], title="t-SNE start", help="seeded by the seed"),
        Int("every", 25, minimum=1, maximum=10000, title="Frame every", help="iterations between two frames"),
        Int("n_jobs", 1, minimum=1, maximum=max(1, os.cpu_count() or 1), title="Threads"),
        Bool(
            "grid", False, title="Snap to a grid", help=f"at most {GRID_MAX} points (a random subset above)"
        ),
        Int("thumb", 16, minimum=4, maximum=64, title="Thumbnail size"),
        Int("size", 1024, minimum=256, maximum=4096, title="Map size", help="pixels a side of the final map"),
    ),
    needs=frozenset({"layers"}),
)
