"""Feature visualisation as Lucid does it: a preconditioned, transformation-robust optimisation of the image.

Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017 (doi:10.23915/distill.00007). The
images are parameterised in Fourier space with 1/f scaling, in a decorrelated colour space, through a sigmoid
(:mod:`.parameterisation`); each step they are padded, scaled, rotated and shifted at random; Adam raises an
objective built from units of the network; with several images, a diversity term pushes their styles apart.

The objective is a weighted sum of units, written as text::

    objective := ["-"] term (("+" | "-") term)*
    term      := [number "*"] unit
    unit      := "class:" INDEX               a class logit
               | "channel:" LAYER ":" INDEX   a channel's mean over positions
               | "neuron:" LAYER ":" INDEX    a channel's neuron at the centre position
               | "layer:" LAYER               the mean square of the whole layer (DeepDream's objective)
               | "direction:" LAYER ":" VEC   the mean over positions of the activation vector's dot product
                                              with VEC (comma-separated, one number per channel, or "random":
                                              seeded Gaussian), VEC scaled to unit length

for example ``channel:_blocks.9:5 + 0.5*class:285`` or ``layer:_blocks.5 - 0.2*neuron:_blocks.5:3``. A layer
name may hold dots and colons (the index is what follows the last colon); spaces around ``+``, ``-`` and ``*``
are optional. Every part is checked against the model: a bad one is refused naming ``params.objective``.

Diversity (the article's section "Diversity"): for ``batch`` > 1, ``diversity_layer``'s activations of each
image give a Gram matrix (channels x channels, averaged over positions); ``similarity`` is the mean over pairs
of images of the cosine similarity of their Gram matrices, and the optimiser maximises
``mean objective - diversity × similarity``.

Differences from Lucid: the colour matrix comes from scikit-image's sample photographs, not ImageNet
(:data:`.parameterisation.COLOUR_COVARIANCE`); the transforms are one pad, one combined random scale and
rotation, and one random crop, not Lucid's chain of jitters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, Float, Int, Layer, Param

from .common import is_shown, refuse
from .parameterisation import (
    MAX_DEGREES,
    MAX_SCALE,
    PAD,
    FourierImage,
    lucent_views,
    mosaic,
    robust_views,
)
from .style_transfer import working_size

if TYPE_CHECKING:
    from convlens.models.base import Forward, Model

REFERENCE = "Olah, Mordvintsev, Schubert 2017, Feature Visualization, Distill (doi:10.23915/distill.00007)"
FIELD = "params.objective"
UNIT_KINDS = ("class", "channel", "neuron", "layer", "direction")
NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# A "+" or "-" separates terms only where a term starts after it (a weight and "*", or a kind and ":"), so the
# minus signs inside a direction's vector and a weight's exponent stay where they are.
SEPARATOR = re.compile(rf"(?<![0-9.][eE])\s*([+-])\s*(?=(?:{NUMBER}\s*\*\s*)?[a-z]+:)")
TERM = re.compile(rf"^(?:(?P<weight>{NUMBER})\s*\*\s*)?(?P<kind>[a-z]+):(?P<body>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One weighted unit of the objective: ``weight × value`` where value comes from ``kind`` at ``layer``."""

    text: str
    weight: float
    kind: str
    layer: str | None
    index: int | None = None
    direction: torch.Tensor | None = None

    def value(self, forward: Forward) -> torch.Tensor:
        """The unit's value for each image of the batch (B), differentiable."""
        if self.kind == "class":
            return forward.logits[:, self.index].float()
        activation = forward.activations[self.layer].float()
        if self.kind == "layer":
            return activation.pow(2).flatten(1).mean(dim=1)
        if self.kind == "direction":
            direction = self.direction.view(1, -1, *([1] * (activation.ndim - 2)))
            projected = (activation * direction).sum(dim=1)
            return projected.flatten(1).mean(dim=1) if projected.ndim > 1 else projected
        channel = activation[:, self.index]
        if channel.ndim == 1:
            return channel
        if self.kind == "channel":
            return channel.flatten(1).mean(dim=1)
        centre = tuple(size // 2 for size in channel.shape[1:])
        return channel[(slice(None), *centre)]


def split_terms(text: str) -> list[tuple[float, str]]:
    """``text`` cut into (sign, term text) pairs at the ``+``/``-`` that separate terms."""
    stripped = text.strip()
    if not stripped:
        raise BadInput(FIELD, "the objective is empty")
    sign = 1.0
    if stripped[0] in "+-":
        sign = -1.0 if stripped[0] == "-" else 1.0
        stripped = stripped[1:].lstrip()
    pieces = SEPARATOR.split(stripped)
    terms = [(sign, pieces[0].strip())]
    for operator, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        terms.append((-1.0 if operator == "-" else 1.0, piece.strip()))
    return terms


def parse_index(text: str, what: str, count: int, term: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise BadInput(FIELD, f"{term!r}: expected a {what} index, got {text!r}")
    index = int(text)
    if not 0 <= index < count:
        raise BadInput(FIELD, f"{term!r}: {what} index must be in [0, {count - 1}], got {index}")
    return index


def check_layer(model: Model, name: str, term: str) -> tuple[int, ...]:
    """The layer's shape (CxHxW or C), or ``BadInput`` naming the objective when the model has no such layer."""
    for layer in model.layers():
        if layer.name == name:
            return layer.shape
    raise BadInput(FIELD, f"{term!r}: model {model.id!r} has no layer {name!r}")


def parse_direction(text: str, channels: int, generator: torch.Generator, term: str) -> torch.Tensor:
    if text.strip() == "random":
        vector = torch.randn(channels, generator=generator)
    else:
        try:
            vector = torch.tensor([float(part) for part in text.split(",")], dtype=torch.float32)
        except ValueError:
            raise BadInput(FIELD, f"{term!r}: expected comma-separated numbers or 'random'") from None
        if len(vector) != channels:
            raise BadInput(FIELD, f"{term!r}: the layer has {channels} channels, the vector {len(vector)}")
        if not torch.isfinite(vector).all():
            raise BadInput(FIELD, f"{term!r}: the vector must be finite")
    norm = vector.norm()
    if norm == 0:
        raise BadInput(FIELD, f"{term!r}: the direction vector is zero")
    return vector / norm


def parse_term(sign: float, text: str, model: Model, generator: torch.Generator) -> Term:
    match = TERM.match(text)
    if not match or match["kind"] not in UNIT_KINDS:
        raise BadInput(FIELD, f"{text!r}: expected [weight*]kind:..., kind one of {', '.join(UNIT_KINDS)}")
    weight = sign * (float(match["weight"]) if match["weight"] else 1.0)
    if not math.isfinite(weight):
        raise BadInput(FIELD, f"{text!r}: the weight must be finite")
    kind, body = match["kind"], match["body"].strip()
    unit = f"{kind}:{body}"
    if kind == "class":
        return Term(unit, weight, kind, None, parse_index(body, "class", len(model.labels), text))
    if kind == "layer":
        check_layer(model, body, text)
        return Term(unit, weight, kind, body)
    layer, colon, rest = body.rpartition(":")
    if not colon or not layer:
        raise BadInput(
            FIELD, f"{text!r}: expected {kind}:LAYER:{'VECTOR' if kind == 'direction' else 'INDEX'}"
        )
    if kind == "direction":
        # The vector holds no colon, so the last colon ends the layer name, whatever colons the name has.
        shape = check_layer(model, layer, text)
        return Term(unit, weight, kind, layer, direction=parse_direction(rest, shape[0], generator, text))
    shape = check_layer(model, layer, text)
    return Term(unit, weight, kind, layer, parse_index(rest, "channel", shape[0], text))


def parse_objective(text: str, model: Model, generator: torch.Generator | None = None) -> list[Term]:
    """The terms of an objective string (grammar in the module docstring), each checked against ``model``.

    ``generator`` seeds a ``random`` direction.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return [parse_term(sign, piece, model, generator) for sign, piece in split_terms(text)]


def gram_similarity(activation: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of images of the cosine similarity of their Gram matrices (channels x channels)."""
    batch, channels = activation.shape[:2]
    features = activation.float().reshape(batch, channels, -1)
    grams = (features @ features.transpose(1, 2) / features.shape[2]).flatten(1)
    unit = grams / grams.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cosine = unit @ unit.T
    pairs = torch.triu_indices(batch, batch, offset=1)
    return cosine[pairs[0], pairs[1]].mean()


def evaluate(
    model: Model, images: torch.Tensor, terms: list[Term], diversity_layer: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per image: the objective (B) and each term's unweighted value (TxB); and the Gram similarity (or None)."""
    layers = list(
        dict.fromkeys([t.layer for t in terms if t.layer] + ([diversity_layer] if diversity_layer else []))
    )
    need_logits = any(t.kind == "class" for t in terms)
    forward = model.forward(images, layers, logits=need_logits)
    missing = [name for name in layers if name not in forward.activations]
    if missing:
        raise BadInput(FIELD, f"layer {missing[0]!r} of model {model.id!r} gives no tensor to optimise")
    if len(terms) == 1:  # the usual objective: no stack, weights or sum (ops on every step, forward and back)
        values = terms[0].value(forward).unsqueeze(0)
        objective = values[0] if terms[0].weight == 1.0 else terms[0].weight * values[0]
    else:
        values = torch.stack([term.value(forward) for term in terms])
        weights = torch.tensor([term.weight for term in terms]).view(-1, 1)
        objective = (weights * values).sum(dim=0)
    similarity = gram_similarity(forward.activations[diversity_layer]) if diversity_layer else None
    return objective, values, similarity


def check_finite(model: Model, step: int, value: float) -> None:
    """Stop once the objective is not a finite number, naming what to change."""
    if not math.isfinite(value):
        refuse(
            "feature_vis",
            model,
            step,
            start=f"a non-finite objective ({value}) on the starting images",
            what=f"the objective is {value}",
            advice="smaller weights in the objective",
        )


def diversity_layer_of(params: dict[str, Any], model: Model) -> str | None:
    """The layer whose Gram matrices keep a batch's images apart (``None`` for one image); ``BadInput`` if it
    is not spatial."""
    if params["batch"] < 2:
        return None
    layer = params["diversity_layer"] or model.suggest_layer()
    if layer is None or len(model.layer(layer).shape) != 3:
        raise BadInput("params.diversity_layer", f"needs a spatial layer (CxHxW), got {layer!r}")
    return layer


def check_params(params: dict[str, Any], model: Model) -> None:
    """The objective's terms and the diversity layer against ``model``, when the run is requested."""
    if params["objective"]:
        parse_objective(params["objective"], model)
    diversity_layer_of(params, model)


def default_objective(ctx: RunContext) -> str:
    layer = ctx.model.suggest_layer()
    if layer:
        return f"channel:{layer}:0"
    return f"class:{ctx.model.predict(ctx.model_input(), k=1)[0]['index']}"


def run_feature_vis(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    text = params["objective"] or default_objective(ctx)
    terms = parse_objective(text, model, ctx.generator)
    batch, steps, every = params["batch"], params["steps"], params["every"]
    diversity_layer = diversity_layer_of(params, model)
    height, width = working_size(model, params["size"])
    yield Log(
        f"feature visualisation of {' + '.join(f'{t.weight:g}×{t.text}' for t in terms)}: {batch} image(s) "
        f"{height}x{width} from {params['init']}, Adam lr {params['lr']}, decay {params['decay']}, transforms "
        + (
            "off"
            if not params["transforms"]
            else "Lucent's standard set"
            if params["transform_set"] == "lucent"
            else f"pad {params['pad']} px, scale ±{params['scale']:g}, rotation ±{params['degrees']:g}°"
        )
        + (f", diversity {params['diversity']} at {diversity_layer}" if diversity_layer else "")
    )

    init = params["init"]
    picture = ctx.model_input((height, width)) if init == "image" else None
    image = FourierImage(batch, height, width, params["decay"], ctx.generator, init, picture)
    optimiser = torch.optim.Adam([image.coefficients], lr=params["lr"])
    with torch.no_grad():
        start, _, start_similarity = evaluate(model, image.pixels(), terms, diversity_layer)
    for step in range(steps + 1):
        pixels = image.pixels()
        seen = pixels
        if params["transforms"] and step < steps:
            if params["transform_set"] == "lucent":
                seen = lucent_views(pixels, ctx.generator)
            else:
                seen = robust_views(pixels, ctx.generator, params["pad"], params["scale"], params["degrees"])
        objective, values, similarity = evaluate(model, seen, terms, diversity_layer)
        total = objective.mean()
        if similarity is not None:
            total = total - params["diversity"] * similarity
        total_value = float(total.detach())
        check_finite(model, step, total_value)
        if is_shown(step, every, steps):
            # A tensor, made into pixels only if the frame is shown or written. The method never changes it:
            # each step's pixels are a new tensor, and mosaic lays several out on a new one.
            yield Frame(mosaic(pixels.detach()), step=step)
            # Without a diversity term the total is the objective's mean, and a lone unweighted term is the
            # objective: their values are known, with no more ops on every step.
            mean = total_value if similarity is None else float(objective.detach().mean())
            metrics = {"objective": mean}
            if len(terms) == 1 and terms[0].weight == 1.0:
                metrics[terms[0].text] = mean
            else:
                metrics |= {
                    term.text: float(v.detach().mean()) for term, v in zip(terms, values, strict=True)
                }
            if similarity is not None:
                metrics["similarity"] = float(similarity.detach())
                metrics["diversity"] = -params["diversity"] * metrics["similarity"]
            yield Metrics(metrics, step=step)
        if step == steps:
            break
        optimiser.zero_grad()
        (-total).backward()
        optimiser.step()
        yield Progress(step + 1, steps)

    with torch.no_grad():
        final_pixels = image.pixels()
        end, end_values, end_similarity = evaluate(model, final_pixels, terms, diversity_layer)
    finals = np.stack([to_image(final_pixels[i : i + 1]) for i in range(batch)])
    yield Result(
        images={"feature_vis": to_image(mosaic(final_pixels))}
        | {f"image_{i}": finals[i] for i in range(batch)},
        arrays={"images": finals, "image": finals[0]},
        data={
            "objective": text,
            "terms": [
                {"text": t.text, "weight": t.weight, "kind": t.kind, "layer": t.layer, "index": t.index}
                for t in terms
            ],
            "size": [height, width],
            "objective_start": start.tolist(),
            "objective_end": end.tolist(),
            "term_values_end": end_values.T.tolist(),
            "similarity_start": None if start_similarity is None else float(start_similarity),
            "similarity_end": None if end_similarity is None else float(end_similarity),
            "diversity_layer": diversity_layer,
            "steps": steps,
            "init": init,
        },
    )


PARAMS: tuple[Param, ...] = (
    Param(
        "objective",
        "string",
        None,
        nullable=True,
        help="A weighted sum of units, e.g. 'channel:_blocks.9:5 + 0.5*class:285'; kinds: class:I, "
        "channel:LAYER:I (mean), neuron:LAYER:I (centre), layer:LAYER (mean square), direction:LAYER:v1,v2,... "
        "or direction:LAYER:random. Empty: channel 0 of the suggested layer.",
    ),
    Int("steps", 256, minimum=1, maximum=2000, help="Adam steps."),
    Float(
        "lr",
        0.05,
        minimum=1e-5,
        maximum=10.0,
        title="Learning rate",
        help="Adam's step size on the spectrum.",
    ),
    Int("batch", 1, minimum=1, maximum=8, help="Images optimised together (diversity needs 2 or more)."),
    Float(
        "diversity",
        0.0,
        minimum=0.0,
        maximum=1e4,
        title="Diversity weight",
        help="Weight of the mean pairwise Gram cosine similarity subtracted from the objective (batch ≥ 2).",
    ),
    Layer("diversity_layer", help="Layer whose Gram matrices are compared; empty: the suggested layer."),
    Int(
        "size",
        None,
        nullable=True,
        minimum=16,
        maximum=512,
        title="Size",
        help="Side of the square images; empty: the model's input size.",
    ),
    Float("decay", 1.0, minimum=0.0, maximum=3.0, help="Spectrum scaling 1/f^decay; 0: plain Fourier."),
    Bool("transforms", True, help="Pad, jitter, scale and rotate at random each step."),
    Choice(
        "transform_set",
        "warp",
        ("warp", "lucent"),
        title="Transforms as",
        help="warp: one warp of a reflected border, by the pad, scale and degrees below; lucent: Lucent's "
        "standard transforms as its render_vis applies them (grey border 12 px, shift 0-7 px, scale 0.90-1.10, "
        "rotation -10 to 10 degrees, shift 0-3 px, resized back), the amounts below unused.",
    ),
    Int(
        "pad",
        PAD,
        minimum=0,
        maximum=32,
        help="Transforms: px of reflected border, and the largest random shift of the crop back (jitter).",
    ),
    Float(
        "scale",
        MAX_SCALE,
        minimum=0.0,
        maximum=0.5,
        help="Transforms: largest random scale change (0.1: ±10%).",
    ),
    Float(
        "degrees",
        MAX_DEGREES,
        minimum=0.0,
        maximum=45.0,
        help="Transforms: largest random rotation, in degrees.",
    ),
    Choice(
        "init",
        "noise",
        ("noise", "zeros", "image"),
        title="Start from",
        help="noise: small seeded noise in the spectrum (Lucid's start, nearly grey); zeros: a flat grey; "
        "image: the chosen picture (clipped to [0.01, 0.99]), every image of the batch.",
    ),
    Int(
        "every", 8, minimum=1, maximum=2000, help="A frame and metrics every this many steps (and the last)."
    ),
)

FEATURE_VIS = Method(
    name="feature_vis",
    title="Feature visualisation (Fourier, decorrelated, robust)",
    topic="What a unit wants to see",
    run=run_feature_vis,
    params=PARAMS,
    check=check_params,
    needs=frozenset({"gradients", "layers"}),
    description="Images optimised to raise a weighted sum of units (class logits, channels, neurons, layers, "
    "directions), parameterised as 1/f-scaled spectra in a decorrelated colour space and seen through random "
    "pad, scale, rotation and jitter each step, as in Lucid; several at once kept apart by a Gram diversity term.",
    reference=REFERENCE,
)
