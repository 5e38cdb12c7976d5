"""Fooling images by evolution: pictures a person sees as nothing that the model gives 99.6 % to a class.

Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions for Unrecognizable
Images", CVPR 2015 (arXiv:1412.1897), sections 2 and 3. The search sees only the model's outputs: pictures go
through ``Model.logits`` in batches (ONNX Runtime for an ONNX file), never a gradient, so it runs on any model.
Two encodings: direct (the pixels) and CPPN (:mod:`.cppn`, the regular, patterned pictures); three
algorithms: MAP-Elites over all targets at once (one champion per class, as the paper), a CMA-ES (Hansen &
Ostermeier 2001, pycma) for each target (:mod:`.evolution`), or a NES for each target on a grid of pixel logits,
from grey or over the best CPPN picture CMA-ES finds first (:mod:`.nes`), the one that passes the bar. A
target's fitness is its softmax probability, the paper's "confidence". The run stops when every target reaches
``confidence`` (the paper's bar, 99.6 %) or after ``max_queries`` pictures; it reports the confidence reached
and the queries until 99 % and until the bar.

Differences from the paper: see :mod:`.evolution` (batched generations, chosen targets, a fixed CPPN topology
with evolved weights, a direct genome upsampled from ``resolution``², CMA-ES as a second algorithm) and
:mod:`.nes` (a third, which refines). The paper evolves for 5,000 (direct) to 20,000 generations over all 1,000
ImageNet classes, on a cluster; here the budget is a number of model queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Predictions, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Int, Param, plain_int

from .classes import log_softmax, top_classes
from .evolution import Archive, Champion, Cppn, Direct, cma_es, map_elites
from .nes import Logits, nes, patterns_then_nes

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Nguyen, Yosinski, Clune 2015, Deep Neural Networks are Easily Fooled: High Confidence Predictions for "
    "Unrecognizable Images, arXiv:1412.1897"
)
PAPER_TARGETS = ("king penguin", "starfish", "baseball", "electric guitar")
"""Classes of the paper's figures, the default targets of a model that has them."""
MAX_TARGETS = 8
NEAR_SURE = 0.99
"""Queries until this confidence are reported, whatever the bar."""
FRAME_WIDTH = 1024
"""The streamed frame's panels are shrunk so that the row fits this width."""
ALGORITHMS = ("map_elites", "cma_es", "nes")
ENCODINGS = ("cppn", "direct")
FIELD = "params.targets"


def default_targets(model: Model) -> list[int]:
    """The paper's classes where the model has those labels, else its first four classes."""
    lowered = [label.lower() for label in model.labels]
    if all(lowered.count(name) == 1 for name in PAPER_TARGETS):
        return [lowered.index(name) for name in PAPER_TARGETS]
    return list(range(min(len(PAPER_TARGETS), max(1, len(model.labels)))))


def parse_targets(text: str | None, model: Model) -> list[int]:
    """The class indices of ``text``: comma-separated indices or labels (case-insensitive), distinct, at most
    :data:`MAX_TARGETS`; ``None`` is :func:`default_targets`. ``BadInput`` naming ``params.targets`` otherwise."""
    if text is None:
        return default_targets(model)
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise BadInput(FIELD, "name at least one class (indices or labels, separated by commas)")
    if len(items) > MAX_TARGETS:
        raise BadInput(FIELD, f"at most {MAX_TARGETS} classes, got {len(items)}")
    count = len(model.labels)
    lowered = [label.lower() for label in model.labels]
    targets = []
    for item in items:
        index = plain_int(item)
        if index is None and item.lstrip("-").isdigit():
            index = -1
        if index is None:
            matches = [i for i, label in enumerate(lowered) if label == item.lower()]
            if not matches:
                raise BadInput(FIELD, f"{item[:40]!r} is neither a class index nor a label of the model")
            if len(matches) > 1:
                raise BadInput(FIELD, f"{item!r} is the label of classes {matches}: give the index")
            index = matches[0]
        if not 0 <= index < count:
            raise BadInput(FIELD, f"class index must be in [0, {count - 1}], got {item[:40]}")
        if index in targets:
            raise BadInput(FIELD, f"class {index} is named twice")
        targets.append(index)
    return targets


def panel_names(model: Model, targets: list[int]) -> list[str]:
    """Each target's label (with its index where two targets share a label): the frame's panel names."""
    labels = [model.label(target) for target in targets]
    return [
        f"{label} ({target})" if labels.count(label) > 1 else label
        for label, target in zip(labels, targets, strict=True)
    ]


def panels_row(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Nx3xHxW pictures side by side as 1x3xhx(N·w), each shrunk (area) to the same integer width ``w`` so that
    the row is at most :data:`FRAME_WIDTH` wide."""
    pictures = torch.as_tensor(images, dtype=torch.float32)
    count, _, height, width = pictures.shape
    shown = min(width, max(1, FRAME_WIDTH // count))
    if shown != width:
        pictures = F.interpolate(pictures, size=(max(1, round(height * shown / width)), shown), mode="area")
    return torch.cat(pictures.unbind(0), dim=2)[None].clone()


def check_logits(model: Model, logits: np.ndarray, when: str) -> None:
    """Stop the run when the model's outputs are not finite: its weights or the file are broken."""
    if not np.isfinite(logits).all():
        raise BadInput(
            "model",
            f"model {model.id!r} gives non-finite logits for a picture in [0, 1] ({when}); "
            "its weights or its file are broken",
            status=422,
        )


def check_params(params: dict[str, Any], model: Model) -> None:
    parse_targets(params["targets"], model)
    if (params["encoding"] == "direct" or params["algorithm"] == "nes") and params["resolution"] > min(
        model.input_size
    ):
        raise BadInput(
            "params.resolution",
            f"at most the model's input side, {min(model.input_size)}, got {params['resolution']}",
        )
    if params["algorithm"] != "map_elites" and params["max_queries"] < params["population"]:
        raise BadInput(
            "params.max_queries", f"a generation takes {params['population']} queries (the population)"
        )
    if params["algorithm"] == "nes" and params["population"] % 2:
        raise BadInput("params.population", "NES samples in antithetic pairs: give an even population")


def stream(
    model: Model, names: list[str], champions: list[Champion], step: int, extra: dict[str, float]
) -> Iterator[Event]:
    """The champions' pictures as one frame, their top classes and their confidences at ``step``."""
    yield Frame(panels_row(np.stack([c.image for c in champions])), step=step, label=" | ".join(names))
    yield Predictions(
        {name: top_classes(model, c.log_probabilities) for name, c in zip(names, champions, strict=True)},
        step=step,
    )
    yield Metrics(
        {**{f"p({name})": c.confidence for name, c in zip(names, champions, strict=True)}, **extra}, step=step
    )


def result(
    model: Model,
    names: list[str],
    champions: list[Champion],
    data: dict[str, Any],
    counts: list[dict[str, Any]],
) -> Result:
    """The champions' pictures (a row and one each), arrays and data: ``data``, and for each target its class,
    label, confidence, top classes and ``counts`` (queries or steps until the bars)."""
    pictures = np.stack([c.image for c in champions]).transpose(0, 2, 3, 1)
    return Result(
        images={"fooling": panels_row(np.stack([c.image for c in champions]))[0].permute(1, 2, 0).numpy()}
        | {f"class_{c.target}": picture for c, picture in zip(champions, pictures, strict=True)},
        arrays={
            "images": np.ascontiguousarray(pictures, dtype=np.float32),
            "targets": np.array([c.target for c in champions], dtype=np.int64),
        },
        data={
            **data,
            "targets": [
                {
                    "class": c.target,
                    "label": name,
                    "confidence": c.confidence,
                    **count,
                    "top5": top_classes(model, c.log_probabilities),
                }
                for name, c, count in zip(names, champions, counts, strict=True)
            ],
        },
    )


def run_evolution(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    targets = parse_targets(params["targets"], model)
    names = panel_names(model, targets)
    bar, max_queries, population = params["confidence"], params["max_queries"], params["population"]
    size = tuple(model.input_size)
    bars = (NEAR_SURE, bar)
    archive = Archive(targets, bars)

    def evaluate(images: np.ndarray) -> np.ndarray:
        logits = model.logits(images, batch_size=population)
        check_logits(model, logits, f"after {archive.queries} queries")
        return log_softmax(logits)

    encoding = Direct(params["resolution"]) if params["encoding"] == "direct" else Cppn()
    common = {"size": size, "population": population, "max_queries": max_queries, "confidence": bar}
    if params["algorithm"] == "map_elites":
        search = map_elites(encoding, archive, evaluate, ctx.rng, rate=params["mutation_rate"], **common)
    elif params["algorithm"] == "cma_es":
        search = cma_es(encoding, archive, evaluate, ctx.rng, **common)
    elif params["encoding"] == "direct":
        search = nes([Logits(params["resolution"]) for _ in targets], archive, evaluate, ctx.rng, **common)
    else:
        search = patterns_then_nes(
            archive,
            evaluate,
            ctx.rng,
            resolution=params["resolution"],
            pattern_queries=params["pattern_queries"],
            **common,
        )
    announced: set[tuple[int, float]] = set()
    generations = 0
    for generation in search:
        generations = generation
        yield from stream(model, names, archive.champions, generation, {"queries": archive.queries})
        for name, champion in zip(names, archive.champions, strict=True):
            for level, queries in champion.queries_to.items():
                if queries is not None and (champion.target, level) not in announced:
                    announced.add((champion.target, level))
                    yield Log(f"{name}: {level:.1%} after {queries} queries")
        yield Progress(archive.queries, max_queries)
    yield result(
        model,
        names,
        archive.champions,
        {
            "algorithm": params["algorithm"],
            "encoding": params["encoding"],
            "confidence": bar,
            "reached": archive.reached(bar),
            "queries": archive.queries,
            "generations": generations,
        },
        [
            {"queries_to_99": c.queries_to[NEAR_SURE], "queries_to_confidence": c.queries_to[bar]}
            for c in archive.champions
        ],
    )


TARGETS = Param(
    "targets",
    "string",
    None,
    nullable=True,
    title="Target classes",
    help=f"Comma-separated class indices or labels, at most {MAX_TARGETS}; empty: the paper's king penguin, "
    "starfish, baseball and electric guitar (else the first four classes).",
)
CONFIDENCE = Float(
    "confidence",
    0.996,
    minimum=0.01,
    maximum=1.0,
    title="Confidence to reach",
    help="Stop once every target's picture has this softmax probability (the paper's 99.6 %).",
)

FOOLING_EVOLUTION = Method(
    name="fooling_evolution",
    title="Fooling images by evolution",
    topic="How easily it is fooled",
    run=run_evolution,
    params=(
        TARGETS,
        Choice(
            "algorithm",
            "nes",
            ALGORITHMS,
            title="Algorithm",
            help="map_elites: one champion per target, each child a mutated champion; cma_es: one CMA-ES per "
            "target; nes: one natural evolution strategy per target on a grid of pixel logits (cppn: over the "
            "best CPPN picture CMA-ES finds first), the one that reaches 99.6 %.",
        ),
        Choice(
            "encoding",
            "cppn",
            ENCODINGS,
            title="Encoding",
            help="cppn: the weights of a pattern-producing network (regular pictures); direct: the pixels.",
        ),
        Int("population", 32, minimum=2, maximum=256, help="Pictures per generation (one forward batch)."),
        Int(
            "max_queries",
            24_000,
            minimum=1,
            maximum=100_000,
            title="Most queries",
            help="The most pictures the model is shown (nes passed 99.6 % within 5,810 a target on the default "
            "model, bench/README.md).",
        ),
        CONFIDENCE,
        Float(
            "mutation_rate",
            0.1,
            minimum=1e-4,
            maximum=1.0,
            title="Mutation rate",
            help="map_elites: chance that each number of a child's genome mutates (halved every 1,000 "
            "generations).",
        ),
        Int(
            "resolution",
            16,
            minimum=2,
            maximum=512,
            help="direct and nes: side of the genome's RGB grid, upsampled to the model's input (16: NES "
            "needed fewer queries than with 32 on the default model, bench/README.md).",
        ),
        Int(
            "pattern_queries",
            2000,
            minimum=0,
            maximum=100_000,
            title="CPPN queries before NES",
            help="nes with cppn: queries a target that CMA-ES spends on the CPPN before NES refines its picture.",
        ),
    ),
    check=check_params,
    description="Pictures a person sees as nothing that the model gives 99.6 % to each target class, found "
    "with forward passes only (Nguyen et al. 2015): MAP-Elites or CMA-ES over CPPN-drawn patterns or pixels. "
    "Streams the best picture per class, its top-5 and the queries made.",
    reference=REFERENCE,
)
