"""Natural evolution strategies on a grid of pixel logits: the search that takes fooling pictures past 99.6 %.

Wierstra et al., "Natural Evolution Strategies", JMLR 15, 2014, with antithetic samples and centred-rank fitness
shaping as Salimans et al. 2017 (arXiv:1703.03864, section 2) use them, and as Ilyas et al. 2018
(arXiv:1804.08598, section 2.2) use NES for query-limited black-box attacks: the gradient of a target's
log-probability is estimated from ``population`` samples around a mean, forward passes only, and moves the mean
by Adam (Kingma & Ba 2015).

Differences from Ilyas et al.: they perturb a natural image's pixels within an ε ball and step along the sign of
the estimate; here the genome is a :class:`Logits` grid, offsets to the pre-sigmoid values of a base picture's
pixels (grey, or the best CPPN picture CMA-ES found first, :func:`patterns_then_nes`), upsampled to the input,
unbounded, so a picture never clips, and the step is Adam's. On the default model CMA-ES on a CPPN levels off
near 98 %, while this passes 99.6 % within a few thousand queries (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from .evolution import Archive, Cppn, Evaluate, cma_es

ADAM_BETAS = (0.9, 0.999)
"""Adam's decay rates of NES's first and second moments (Kingma & Ba's defaults)."""
BASE_MARGIN = 0.02
"""A base picture's pixels are kept in [margin, 1 - margin] (logits within ±3.9)."""


@dataclass(frozen=True, eq=False)
class Logits:
    """A genome of ``resolution``² RGB offsets to the pixels' pre-sigmoid values, upsampled (bilinear) to the
    model's input: picture = sigmoid(logit(``base``) + offsets), so that no offset is clipped away. ``base``
    (3xHxW in [0, 1]) is grey when ``None``; its pixels are kept within :data:`BASE_MARGIN` of 0 and 1, or a
    saturated one would need offsets of tens to move."""

    resolution: int
    base: np.ndarray | None = None
    sigma: float = 0.5
    """NES's sampling spread, in logits."""
    rate: float = 0.2
    """NES's Adam step, in logits."""

    @property
    def length(self) -> int:
        return 3 * self.resolution**2

    def images(self, genomes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        grid = np.asarray(genomes, dtype=np.float32).reshape(-1, 3, self.resolution, self.resolution)
        offsets = F.interpolate(
            torch.from_numpy(grid), size=tuple(size), mode="bilinear", align_corners=False
        )
        if self.base is not None:
            base = torch.from_numpy(np.asarray(self.base, dtype=np.float32)).clamp(
                BASE_MARGIN, 1 - BASE_MARGIN
            )
            offsets = offsets + torch.logit(base)
        return torch.sigmoid(offsets).numpy()


@dataclass
class NesSearch:
    """One target's natural evolution strategy: the mean ``grid`` of pre-sigmoid offsets and Adam's moments."""

    grid: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray
    steps: int = 0

    @classmethod
    def start(cls, length: int) -> NesSearch:
        return cls(np.zeros(length), np.zeros(length), np.zeros(length))

    def samples(
        self, rng: np.random.Generator, population: int, sigma: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``population`` genomes around the mean in antithetic pairs, and their unit noises."""
        half = rng.standard_normal((population // 2, self.grid.size))
        noises = np.concatenate([half, -half])
        return self.grid + sigma * noises, noises

    def step(self, noises: np.ndarray, scores: np.ndarray, sigma: float, rate: float) -> None:
        """Move the mean by Adam along the search gradient of the scores' centred ranks."""
        ranks = np.empty(len(scores))
        ranks[np.argsort(scores, kind="stable")] = np.arange(len(scores))
        utilities = ranks / (len(scores) - 1) - 0.5
        gradient = utilities @ noises / (len(scores) * sigma)
        self.steps += 1
        self.first_moment = ADAM_BETAS[0] * self.first_moment + (1 - ADAM_BETAS[0]) * gradient
        self.second_moment = ADAM_BETAS[1] * self.second_moment + (1 - ADAM_BETAS[1]) * gradient**2
        mean = self.first_moment / (1 - ADAM_BETAS[0] ** self.steps)
        spread = np.sqrt(self.second_moment / (1 - ADAM_BETAS[1] ** self.steps))
        self.grid = self.grid + rate * mean / (spread + 1e-8)


def nes(
    encodings: list[Logits],
    archive: Archive,
    evaluate: Evaluate,
    rng: np.random.Generator,
    *,
    size: tuple[int, int],
    population: int,
    max_queries: int,
    confidence: float,
) -> Iterator[int]:
    """One NES per target of ``archive``, on the grid of its encoding in ``encodings`` from that encoding's base
    picture, a generation of each in turn that is still short of ``confidence``, yielding the round's number
    after each round; stops as :func:`cma_es`. ``population`` is even: antithetic pairs."""
    searches = [NesSearch.start(encoding.length) for encoding in encodings]
    generation = 0
    while True:
        generation += 1
        for index, (champion, search, encoding) in enumerate(
            zip(archive.champions, searches, encodings, strict=True)
        ):
            if champion.confidence >= confidence:
                continue
            if archive.queries + population > max_queries:
                return
            genomes, noises = search.samples(rng, population, encoding.sigma)
            images = encoding.images(genomes, size)
            log_probabilities = evaluate(images)
            archive.offer(genomes, images, log_probabilities, only=index)
            search.step(noises, log_probabilities[:, champion.target], encoding.sigma, encoding.rate)
        yield generation
        if archive.reached(confidence):
            return


def patterns_then_nes(
    archive: Archive,
    evaluate: Evaluate,
    rng: np.random.Generator,
    *,
    size: tuple[int, int],
    population: int,
    max_queries: int,
    confidence: float,
    resolution: int,
    pattern_queries: int,
) -> Iterator[int]:
    """:func:`cma_es` on CPPN weights for ``pattern_queries`` queries a target, then :func:`nes` on a
    ``resolution``² grid over each target's best CPPN picture, numbering the generations on; stops as
    :func:`cma_es`."""
    common = {"size": size, "population": population, "confidence": confidence}
    first = min(max_queries, pattern_queries * len(archive.champions))
    generation = 0
    for generation in cma_es(Cppn(), archive, evaluate, rng, max_queries=first, **common):
        yield generation
    if archive.reached(confidence):
        return
    encodings = [Logits(resolution, base=champion.image) for champion in archive.champions]
    for round_ in nes(encodings, archive, evaluate, rng, max_queries=max_queries, **common):
        yield generation + round_
