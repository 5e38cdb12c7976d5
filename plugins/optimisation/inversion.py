"""Feature inversion: the image whose code at a layer is that of the chosen picture.

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015
(arXiv:1412.0035). Starting from noise or the mean colour, minimise over the image ``x``

    ‖Φ(x) − Φ0‖² / ‖Φ0‖²  +  λ_α · R_α(x)  +  λ_TV · R_TV(x),      Φ0 = Φ(x0),

where ``Φ`` is the code at one layer (or, with no layer, the 1000 class probabilities: the softmax of the
logits) and ``x0`` the chosen picture at the model's input size. The first term, the *code distance*, is 1 for
an image whose code is zero and 0 for a perfect reconstruction of the code. The priors, as in the paper's
section 3.3, are expressed relative to the typical range of natural images so that the default weights work at
any input size and for any code:

- ``R_α = mean over pixels of Σ_c |x − m|^α / B^α``, the α-norm (α = 6) of the mean-subtracted image ``x − m``
  (``m`` the card's mean colour), with ``B = 80/255``, the paper's typical range of a mean-subtracted pixel
  (80 in 0..255 units);
- ``R_TV = mean over pixels of Σ_c ((x[i, j+1] − x[i, j])² + (x[i+1, j] − x[i, j])²)^(β/2) / V^β``, total
  variation with β = 2, with ``V = B / 6.5``, the paper's typical size of a natural image's finite difference.

The paper sums over pixels and divides by ``H·W·B^α`` (``H·W·V^β``); the mean over pixels is the same thing.
Differences from the paper: the image is updated with Adam on its [0, 1] pixels (the paper uses momentum SGD
with a decaying step) and clipped to [0, 1] after each step, as :mod:`.class_model` does, so ``lr`` is a change
per step in [0, 1] pixel units and the image stays one a person can see; the paper's hard bound ``B+`` on the
pixels is this clipping.

``INVERSION`` inverts one code; ``INVERSION_LADDER`` inverts several, from early layers to the class
probabilities, side by side in one batch, so one sees how much of the picture each depth keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Progress, Result
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Layer, Param

from .class_model import start_image
from .common import adam_step, every_param, is_shown, lr_param, non_finite, refuse, snapshot, steps_param

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Mahendran, Vedaldi 2015, Understanding Deep Image Representations by Inverting Them (arXiv:1412.0035)"
)
PROBABILITIES = "probabilities"
"""The code that is the softmax of the logits; in ``INVERSION_LADDER``'s ``layers``, this word names it."""
ALPHA = 6.0
BETA = 2.0
RANGE = 80.0 / 255.0
"""The paper's ``B``: the typical range of a mean-subtracted pixel, here in [0, 1] pixel units."""
STEP_RANGE = RANGE / 6.5
"""The paper's ``V``: the typical size of a finite difference of a natural image."""
INITS = ("noise", "mean")
LADDER_DEPTHS = (0.05, 0.3, 0.55, 0.8)
"""Where, as fractions of the spatial layers, the ladder's automatic layers sit (before the probabilities)."""
MAX_LADDER = 8
GAP = 4
"""Pixels of white between two pictures of the ladder's mosaic."""


def code(model: Model, images: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """The code of each image of the batch at its own layer (``PROBABILITIES``: the softmax), flattened."""
    spatial = sorted({layer for layer in layers if layer != PROBABILITIES})
    wants_logits = PROBABILITIES in layers
    forward = model.forward(images, spatial, logits=wants_logits)
    codes = []
    for index, layer in enumerate(layers):
        if layer == PROBABILITIES:
            codes.append(torch.softmax(forward.logits[index].float(), dim=0))
        else:
            codes.append(forward.activations[layer][index].float().flatten())
    return codes


def alpha_prior(model: Model, images: torch.Tensor) -> torch.Tensor:
    """``R_α`` of each image (N): the α-norm of the mean-subtracted image over ``B^α``, per pixel."""
    mean = torch.tensor(model.card.mean, dtype=images.dtype).view(1, 3, 1, 1)
    return ((images - mean).abs() / RANGE).pow(ALPHA).sum(dim=1).mean(dim=(1, 2))


def tv_prior(images: torch.Tensor) -> torch.Tensor:
    """``R_TV`` of each image (N): squared finite differences (β = 2) over ``V^β``, per pixel."""
    across = (images[:, :, :-1, 1:] - images[:, :, :-1, :-1]) / STEP_RANGE
    down = (images[:, :, 1:, :-1] - images[:, :, :-1, :-1]) / STEP_RANGE
    return (across.pow(2) + down.pow(2)).pow(BETA / 2).sum(dim=1).mean(dim=(1, 2))


def psnr(image: torch.Tensor, original: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of an image in [0, 1] against the original."""
    error = float((image.detach().double() - original.double()).pow(2).mean())
    return math.inf if error == 0.0 else 10.0 * math.log10(1.0 / error)


def check_finite(method: str, model: Model, step: int, parts: dict[str, float]) -> None:
    """Refuse to go on once a term is not a finite number, naming why and what to change."""
    if bad := non_finite(parts):
        refuse(
            method,
            model,
            step,
            start=f"a non-finite code on the starting image ({bad})",
            what=bad,
            advice="another start",
        )


def invert(ctx: RunContext, layers: list[str], method: str) -> Iterator[Event | dict]:
    """The inversions of the picture's codes at ``layers``, one image each, optimised together.

    Yields frames (labelled by layer when there are several), metrics and progress, then a dict with the final
    ``images`` (Nx3xHxW), ``parts`` (per-layer numbers) and the ``original``.
    """
    model, params = ctx.model, ctx.params
    steps, every = params["steps"], params["every"]
    alpha_weight, tv_weight = params["alpha_weight"], params["tv_weight"]
    original = ctx.model_input()
    with torch.no_grad():
        targets = [
            target.detach() for target in code(model, original.expand(len(layers), -1, -1, -1), layers)
        ]
    norms = [target.pow(2).sum().clamp_min(1e-12) for target in targets]

    images = start_image(ctx, params["init"]).repeat(len(layers), 1, 1, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([images], lr=params["lr"])
    for step in range(steps + 1):
        codes = code(model, images, layers)
        distances = torch.stack(
            [(c - t).pow(2).sum() / n for c, t, n in zip(codes, targets, norms, strict=True)]
        )
        alphas, tvs = alpha_prior(model, images), tv_prior(images)
        objective = distances + alpha_weight * alphas + tv_weight * tvs
        parts = [
            {
                "code_distance": float(distances[i].detach()),
                "alpha": float(alphas[i].detach()),
                "tv": float(tvs[i].detach()),
                "objective": float(objective[i].detach()),
            }
            for i in range(len(layers))
        ]
        for values in parts:
            check_finite(method, model, step, values)
        if is_shown(step, every, steps):
            if len(layers) == 1:
                yield from snapshot(images[0], parts[0], step, "inversion")
            else:
                for layer, image in zip(layers, images, strict=True):
                    yield Frame(image.detach().clone(), step=step, label=layer)
                yield Metrics(
                    {
                        f"code_distance {layer}": values["code_distance"]
                        for layer, values in zip(layers, parts, strict=True)
                    },
                    step=step,
                )
        if step == steps:
            break
        if not adam_step(optimiser, objective.sum(), images):
            check_finite(method, model, step, {"gradient": math.nan})
        yield Progress(step + 1, steps)

    final = images.detach()
    top = model.logits(final).argmax(axis=1)
    # New dicts: the last step's are the values of a Metrics event already yielded.
    parts = [
        {**values, "psnr": psnr(final[i], original[0]), "top_class": int(top[i])}
        for i, values in enumerate(parts)
    ]
    yield {"images": final, "parts": parts, "original": original}


def run_inversion(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    layer = params["layer"] or PROBABILITIES
    yield Log(f"inverting the code at {layer}, starting from {params['init']!r}")
    outcome: dict = {}
    for event in invert(ctx, [layer], "inversion"):
        if isinstance(event, dict):
            outcome = event
        else:
            yield event
    final, values = to_image(outcome["images"][0]), outcome["parts"][0]
    original_top = model.predict(outcome["original"], k=1)[0]["index"]
    yield Result(
        images={"inversion": final},
        arrays={"image": final},
        data={
            "layer": layer,
            "steps": params["steps"],
            "init": params["init"],
            **values,
            "top_label": model.label(values["top_class"]),
            "original_top_class": original_top,
        },
    )


def ladder_layers(model: Model, text: str) -> list[str]:
    """The layers named in ``text`` (comma-separated), or the automatic ladder when it is empty."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        spatial = [layer.name for layer in model.layers() if len(layer.shape) == 3]
        picked = [spatial[min(len(spatial) - 1, int(depth * len(spatial)))] for depth in LADDER_DEPTHS]
        return list(dict.fromkeys(picked)) + [PROBABILITIES]
    known = set(model.layer_names())
    for name in names:
        if name != PROBABILITIES and name not in known:
            raise BadInput("params.layers", f"model {model.id!r} has no layer {name!r}")
    if len(set(names)) != len(names):
        raise BadInput("params.layers", f"a layer is named twice in {text!r}")
    if len(names) > MAX_LADDER:
        raise BadInput("params.layers", f"at most {MAX_LADDER} layers, got {len(names)}")
    return names


def mosaic(images: Sequence[np.ndarray]) -> np.ndarray:
    """HxWx3 images side by side, left to right, with white gaps."""
    height = images[0].shape[0]
    gap = np.ones((height, GAP, 3), dtype=np.float32)
    pieces = [piece for image in images for piece in (image, gap)][:-1]
    return np.concatenate(pieces, axis=1)


def run_inversion_ladder(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    layers = ladder_layers(model, params["layers"])
    yield Log(f"inverting the codes at {', '.join(layers)}, starting from {params['init']!r}")
    outcome: dict = {}
    for event in invert(ctx, layers, "inversion_ladder"):
        if isinstance(event, dict):
            outcome = event
        else:
            yield event
    finals = [to_image(image) for image in outcome["images"]]
    original = to_image(outcome["original"])
    yield Frame(mosaic([original, *finals]), step=params["steps"], label="original | " + " | ".join(layers))
    yield Result(
        images={"ladder": mosaic([original, *finals])},
        arrays={"images": np.stack(finals)},
        data={
            "layers": layers,
            "steps": params["steps"],
            "init": params["init"],
            "by_layer": dict(zip(layers, outcome["parts"], strict=True)),
            "original_top_class": model.predict(outcome["original"], k=1)[0]["index"],
        },
    )


def shared_params() -> tuple[Param, ...]:
    return (
        steps_param(200, "Optimisation steps."),
        lr_param(0.05),
        Float(
            "alpha_weight",
            1e-3,
            minimum=0.0,
            maximum=100.0,
            title="α-norm weight",
            help="λ_α: weight of the 6-norm of the mean-subtracted image (relative to its typical range), "
            "which keeps pixels from going to extremes.",
        ),
        Float(
            "tv_weight",
            1e-2,
            minimum=0.0,
            maximum=100.0,
            title="TV weight",
            help="λ_TV: weight of the total variation (β = 2, relative to a natural image's typical finite "
            "difference), which keeps the image smooth.",
        ),
        Choice(
            "init",
            "noise",
            INITS,
            title="Start from",
            help="noise: seeded noise around the mean colour (the paper's start); mean: the dataset's mean "
            "colour, the zero of the network's input. Not the picture: it is what the code is inverted to.",
        ),
        every_param(5, "Show frames and the metrics every this many steps."),
    )


INVERSION = Method(
    name="inversion",
    title="Feature inversion",
    topic="What a unit wants to see",
    run=run_inversion,
    params=(
        Layer(
            "layer",
            help="The layer whose code of the picture is inverted; empty: the class probabilities (softmax).",
        ),
        *shared_params(),
    ),
    needs=frozenset({"gradients", "layers"}),
    description="The image whose code at a layer matches the picture's, under smoothness priors: what that "
    "layer (or the class probabilities alone) keeps of the picture.",
    reference=REFERENCE,
)

INVERSION_LADDER = Method(
    name="inversion_ladder",
    title="Feature inversion, layer by layer",
    topic="What a unit wants to see",
    run=run_inversion_ladder,
    params=(
        Param(
            "layers",
            "string",
            "",
            help="Comma-separated layers to invert, 'probabilities' for the softmax; empty: four layers from "
            "early to deep, then the probabilities.",
        ),
        *shared_params(),
    ),
    needs=frozenset({"gradients", "layers"}),
    description="Feature inversion at several depths side by side, from early layers to the class "
    "probabilities: how much of the picture each depth keeps.",
    reference=REFERENCE,
)
