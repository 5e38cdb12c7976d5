"""Searches for pictures a model is sure of, by its outputs alone: MAP-Elites and CMA-ES over two encodings.

MAP-Elites: Mouret & Clune, "Illuminating search spaces by mapping elites", 2015 (arXiv:1504.04909), as Nguyen,
Yosinski & Clune 2015 (arXiv:1412.1897, section 2) use it: one champion per class, each new picture a mutated
copy of a random champion, taking the place of every champion it beats. The direct encoding's mutation is
theirs: each number mutated with probability ``rate`` (halved every 1,000 generations) by Deb's bounded
polynomial mutation (Deb & Goyal 1996) with distribution index 15. CMA-ES: Hansen & Ostermeier 2001, through
pycma's ask and tell, one search per class.

Differences from the papers: a generation is a batch of ``population`` pictures, so that the model sees them in
one forward pass (the paper breeds one at a time); the classes are the chosen targets, not all of the model's.
The direct genome is a ``resolution``² grid of RGB values upsampled (bilinear) to the model's input; the paper's
is the input itself. A CPPN's weights (:mod:`.cppn`) mutate by the same polynomial mutation within ±3; the paper's
NEAT also grows the network. CMA-ES minimises the negative log-probability of its class; a direct genome is
clipped to [0, 1] to be drawn, and one of over :data:`FULL_COVARIANCE_UP_TO` numbers has a diagonal covariance
(sep-CMA-ES, Ros & Hansen 2008), since the full matrix's eigendecomposition grows with its cube. pycma draws its
samples from a generator seeded by the run (its ``randn`` option), not from NumPy's global one, which other jobs
in the same process share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from . import cppn

ETA = 15.0
"""The polynomial mutation's distribution index (the paper's "mutation strength")."""
RATE_HALVING = 1000
"""The mutation rate halves every this many generations."""
FULL_COVARIANCE_UP_TO = 1000
"""CMA-ES on a genome longer than this learns only the covariance's diagonal."""

Evaluate = Callable[[np.ndarray], np.ndarray]
"""Nx3xHxW float32 pictures in [0, 1] → their NxK log-probabilities (float64)."""


@dataclass(frozen=True)
class Direct:
    """A genome that is the picture: ``resolution``² RGB values in [0, 1], upsampled to the model's input."""

    resolution: int
    lower: float = 0.0
    upper: float = 1.0
    sigma: float = 0.2
    """CMA-ES's starting step size."""

    @property
    def length(self) -> int:
        return 3 * self.resolution**2

    def random(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` genomes of uniform noise, as the paper starts."""
        return rng.random((count, self.length))

    def images(self, genomes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        grid = np.clip(genomes, 0.0, 1.0).reshape(-1, 3, self.resolution, self.resolution)
        pictures = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))
        if tuple(size) != (self.resolution, self.resolution):
            pictures = F.interpolate(pictures, size=tuple(size), mode="bilinear", align_corners=False)
        return pictures.clamp(0, 1).numpy()


@dataclass(frozen=True)
class Cppn:
    """A genome of CPPN weights (:mod:`.cppn`), drawn at any size."""

    lower: float = -cppn.WEIGHT_BOUND
    upper: float = cppn.WEIGHT_BOUND
    sigma: float = 1.0

    @property
    def length(self) -> int:
        return cppn.genome_size()

    def random(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.uniform(self.lower, self.upper, (count, self.length))

    def images(self, genomes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return cppn.render(genomes, size)


Encoding = Direct | Cppn


def polynomial_mutation(
    genomes: np.ndarray, rng: np.random.Generator, rate: float, lower: float, upper: float, eta: float = ETA
) -> np.ndarray:
    """Copies of ``genomes`` with each number, with probability ``rate``, moved by Deb's polynomial mutation
    within [``lower``, ``upper``] (NSGA-II's bounded form, distribution index ``eta``)."""
    chosen = rng.random(genomes.shape) < rate
    u = rng.random(genomes.shape)
    span = upper - lower
    below = (genomes - lower) / span
    above = (upper - genomes) / span
    power = 1.0 / (eta + 1.0)
    low = u < 0.5
    with np.errstate(invalid="ignore"):
        down = (2 * u + (1 - 2 * u) * (1 - below) ** (eta + 1)) ** power - 1
        up = 1 - (2 * (1 - u) + 2 * (u - 0.5) * (1 - above) ** (eta + 1)) ** power
    moved = genomes + np.where(chosen, np.where(low, down, up), 0.0) * span
    return np.clip(moved, lower, upper)


@dataclass
class Champion:
    """The most confident picture found so far for one class."""

    target: int
    genome: np.ndarray | None = None
    image: np.ndarray | None = None
    """3xHxW float32 in [0, 1]."""
    log_probabilities: np.ndarray | None = None
    """Of every class, for the picture (K, float64)."""
    queries_to: dict[float, int | None] = field(default_factory=dict)
    """Queries made when the first picture reached each confidence (``None``: not yet)."""

    @property
    def log_confidence(self) -> float:
        return -math.inf if self.log_probabilities is None else float(self.log_probabilities[self.target])

    @property
    def confidence(self) -> float:
        return math.exp(self.log_confidence)


class Archive:
    """One :class:`Champion` per target class, the queries made so far, and when each reached the ``bars``."""

    def __init__(self, targets: list[int], bars: tuple[float, ...]) -> None:
        self.champions = [Champion(target, queries_to=dict.fromkeys(bars)) for target in targets]
        self.queries = 0

    def offer(
        self, genomes: np.ndarray, images: np.ndarray, log_probabilities: np.ndarray, only: int | None = None
    ) -> None:
        """Pictures just evaluated, in order; each champion (only the ``only``-th, if given) keeps the first of
        the most confident, and each bar notes the query that first reached it."""
        chosen = self.champions if only is None else [self.champions[only]]
        for champion in chosen:
            scores = log_probabilities[:, champion.target]
            for bar, reached in champion.queries_to.items():
                above = np.flatnonzero(scores >= math.log(bar))
                if reached is None and above.size:
                    champion.queries_to[bar] = self.queries + int(above[0]) + 1
            best = int(np.argmax(scores))
            if scores[best] > champion.log_confidence:
                champion.genome = genomes[best].copy()
                champion.image = images[best].copy()
                champion.log_probabilities = log_probabilities[best].copy()
        self.queries += len(genomes)

    def reached(self, confidence: float) -> bool:
        return all(champion.confidence >= confidence for champion in self.champions)


def map_elites(
    encoding: Encoding,
    archive: Archive,
    evaluate: Evaluate,
    rng: np.random.Generator,
    *,
    size: tuple[int, int],
    population: int,
    rate: float,
    max_queries: int,
    confidence: float,
) -> Iterator[int]:
    """Run MAP-Elites on ``archive``'s targets, yielding each generation's number after it updates the archive
    (0: the random start); stops when every champion reaches ``confidence`` or ``max_queries`` are made."""
    genomes = encoding.random(rng, min(population, max_queries))
    images = encoding.images(genomes, size)
    archive.offer(genomes, images, evaluate(images))
    generation = 0
    yield generation
    while archive.queries < max_queries and not archive.reached(confidence):
        generation += 1
        count = min(population, max_queries - archive.queries)
        parents = np.stack(
            [archive.champions[i].genome for i in rng.integers(len(archive.champions), size=count)]
        )
        shrunk = rate * 0.5 ** (generation // RATE_HALVING)
        genomes = polynomial_mutation(parents, rng, shrunk, encoding.lower, encoding.upper)
        images = encoding.images(genomes, size)
        archive.offer(genomes, images, evaluate(images))
        yield generation


def cma_strategy(encoding: Encoding, rng: np.random.Generator, population: int):
    """A ``cma.CMAEvolutionStrategy`` from a random genome of ``encoding``, its samples drawn from a generator
    seeded by ``rng``."""
    import cma

    start = encoding.random(rng, 1)[0]
    samples = np.random.default_rng(int(rng.integers(2**63)))
    options = {
        "popsize": population,
        "randn": lambda *shape: samples.standard_normal(shape),
        "seed": math.nan,  # pycma would seed NumPy's global generator, which its samples no longer come from
        "verbose": -9,
        "CMA_diagonal": encoding.length > FULL_COVARIANCE_UP_TO,
    }
    return cma.CMAEvolutionStrategy(start, encoding.sigma, options)


def cma_es(
    encoding: Encoding,
    archive: Archive,
    evaluate: Evaluate,
    rng: np.random.Generator,
    *,
    size: tuple[int, int],
    population: int,
    max_queries: int,
    confidence: float,
) -> Iterator[int]:
    """One CMA-ES per target of ``archive``, a generation of each in turn that is still short of ``confidence``,
    yielding the round's number after each round; stops when all reach it or the next generation would pass
    ``max_queries``."""
    strategies = [cma_strategy(encoding, rng, population) for _ in archive.champions]
    generation = 0
    while True:
        generation += 1
        for index, (champion, strategy) in enumerate(zip(archive.champions, strategies, strict=True)):
            if champion.confidence >= confidence:
                continue
            if archive.queries + population > max_queries:
                return
            genomes = np.asarray(strategy.ask())
            images = encoding.images(genomes, size)
            log_probabilities = evaluate(images)
            archive.offer(genomes, images, log_probabilities, only=index)
            strategy.tell(list(genomes), list(-log_probabilities[:, champion.target]))
        yield generation
        if archive.reached(confidence):
            return
