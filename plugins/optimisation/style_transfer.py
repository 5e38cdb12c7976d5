"""Neural style transfer: the content of one picture drawn in the style of another.

Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style" (arXiv:1508.06576), 2015. The image is optimised
so that its activations at one deep layer match the content picture's (content loss) and the Gram matrices of
its activations at several layers match the style picture's (style loss). With ``F`` a layer's activations as
``C x M`` (``M = H·W`` positions), its Gram matrix is ``F Fᵀ / M`` and the layer's style loss is the paper's
``Σ (G - A)² / (4 C²)`` (the same as ``Σ (F Fᵀ - ...)² / (4 C² M²)``); the style loss is the weighted sum over
layers. Differences from the paper:

- the content loss is the *mean* squared error of the activations, not half their summed square, so
  ``content_weight`` means the same at every working size;
- a total-variation term (the mean absolute difference of vertically neighbouring pixels plus that of
  horizontally neighbouring ones) keeps the picture smooth;
- the image is optimised on its [0, 1] pixels and clipped to [0, 1] after each (outer) step, with Adam or
  L-BFGS (the paper's choice); an L-BFGS step is up to ``LBFGS_ITERATIONS`` evaluations, one frame each step.

The style picture is a second image of the server's library (a sample or an upload), chosen by the ``style``
image parameter and handed to the run as ``ctx.pictures["style"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from convlens.errors import BadInput
from convlens.events import Event, Log, Progress, Result
from convlens.images import SampleImage, skimage_samples, to_image, to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Int, Param, Picture

from .common import EVERY, diverged, is_shown, lr_param, non_finite, snapshot, steps_param

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = "Gatys, Ecker, Bethge 2015, A Neural Algorithm of Artistic Style (arXiv:1508.06576)"
STYLE_SAMPLES = {"brick": "Brick wall texture (grey)", "grass": "Grass texture (grey)"}
"""scikit-image ``data`` textures offered as style pictures: their ids and titles."""
DEFAULT_STYLE = "brick"
DEFAULT_CONTENT_LAYER = "_blocks.5"
DEFAULT_STYLE_LAYERS = ("_stem_act", "_blocks.1", "_blocks.3", "_blocks.5", "_blocks.8")
"""Defaults for EfficientNet-Lite0: a deep block for content, block outputs at five depths for style
(112, 56, 28, 14 and 14 pixels at 224), like the paper's conv1_1 ... conv5_1 of VGG."""
STYLE_DEPTHS = (0.05, 0.25, 0.45, 0.65, 0.85)
"""Where, along the spatial layers, the default style layers lie on a model without the defaults above."""
CONTENT_DEPTH = 0.45
LBFGS_ITERATIONS = 10
"""Loss evaluations L-BFGS may make in one (outer) step."""
DEFAULT_LR = {"adam": 0.02, "lbfgs": 1.0}


def style_samples() -> list[SampleImage]:
    """The textures scikit-image ships, as sample images (HxWx3 uint8, grey repeated to RGB)."""
    return skimage_samples(STYLE_SAMPLES)


def parse_style_layers(model: Model, text: str | None) -> dict[str, float]:
    """``"a:2, b"`` as ``{layer: weight}`` normalised to sum 1; ``None``/empty: the defaults for ``model``."""
    names = model.layer_names()
    if not text or not text.strip():
        chosen = DEFAULT_STYLE_LAYERS if set(DEFAULT_STYLE_LAYERS) <= set(names) else _spread(model)
        return {name: 1.0 / len(chosen) for name in chosen}
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight_text = item.strip().partition(":")
        name = name.strip()
        if not name:
            raise BadInput("params.style_layers", f"empty layer name in {text!r}")
        if name not in names:
            raise BadInput("params.style_layers", f"model {model.id!r} has no layer {name!r}")
        if len(model.layer(name).shape) != 3:
            raise BadInput(
                "params.style_layers", f"layer {name!r} has no spatial positions for a Gram matrix"
            )
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise BadInput(
                "params.style_layers", f"weight of {name!r} is not a number: {weight_text!r}"
            ) from None
        if not math.isfinite(weight) or weight < 0:
            raise BadInput("params.style_layers", f"weight of {name!r} must be finite and ≥ 0, got {weight}")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise BadInput("params.style_layers", "at least one style layer needs a positive weight")
    return {name: weight / total for name, weight in weights.items()}


def _spread(model: Model) -> list[str]:
    spatial = [layer.name for layer in model.layers() if len(layer.shape) == 3]
    if not spatial:
        raise BadInput("model", f"model {model.id!r} has no spatial layers for style transfer", status=422)
    return list(dict.fromkeys(spatial[min(len(spatial) - 1, int(d * len(spatial)))] for d in STYLE_DEPTHS))


def content_layer(model: Model, name: str | None) -> str:
    """The content layer: ``name`` (already validated), else the default for EfficientNet-Lite0 or mid-depth."""
    if name:
        return name
    if DEFAULT_CONTENT_LAYER in model.layer_names():
        return DEFAULT_CONTENT_LAYER
    spatial = [layer.name for layer in model.layers() if len(layer.shape) == 3]
    if not spatial:
        raise BadInput("model", f"model {model.id!r} has no spatial layers for style transfer", status=422)
    return spatial[int(CONTENT_DEPTH * len(spatial))]


def working_size(model: Model, size: int | None) -> tuple[int, int]:
    if size is None:
        return model.input_size
    if not model.card.extra.get("dynamic_size", False) and (size, size) != tuple(model.input_size):
        raise BadInput("params.size", f"model {model.id!r} only takes {model.input_size}; leave size empty")
    return (size, size)


def gram(activation: torch.Tensor) -> torch.Tensor:
    """``F Fᵀ / M`` of a 1xCxHxW activation, CxC."""
    features = activation[0].flatten(1).float()
    return features @ features.T / features.shape[1]


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixels."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (
        image[..., :, 1:] - image[..., :, :-1]
    ).abs().mean()


class StyleLoss:
    """The weighted content, style and TV loss of an image against fixed content and style targets."""

    def __init__(
        self,
        model: Model,
        content: torch.Tensor,
        style: torch.Tensor,
        content_at: str,
        style_weights: dict[str, float],
        weights: tuple[float, float, float],
    ) -> None:
        self.model = model
        self.content_at = content_at
        self.style_weights = style_weights
        self.layers = list(dict.fromkeys([content_at, *style_weights]))
        self.content_weight, self.style_weight, self.tv_weight = weights
        with torch.no_grad():
            self.content_target = model.forward(content, [content_at], logits=False).activations[content_at]
            styled = model.forward(style, list(style_weights), logits=False).activations
            self.gram_targets = {name: gram(styled[name]) for name in style_weights}

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        activations = self.model.forward(image, self.layers, logits=False).activations
        content = (activations[self.content_at].float() - self.content_target.float()).pow(2).mean()
        style = sum(
            weight
            * (gram(activations[name]) - self.gram_targets[name]).pow(2).sum()
            / (4 * self.gram_targets[name].shape[0] ** 2)
            for name, weight in self.style_weights.items()
        )
        tv = total_variation(image)
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        parts = {
            "content": float(content.detach()),
            "style": float(style.detach()),
            "tv": float(tv.detach()),
            "total": float(total.detach()),
        }
        return total, parts


def check_finite(step: int, parts: dict[str, float]) -> None:
    """Stop with an error naming ``params.lr`` once a loss is not a finite number."""
    if bad := non_finite(parts):
        field = "params.lr" if step > 0 else "model"
        raise diverged("style_transfer", step, bad, "smaller weights", field)


def start_image(ctx: RunContext, content: torch.Tensor, init: str) -> torch.Tensor:
    if init == "content":
        return content.clone()
    return torch.rand(content.shape, generator=ctx.generator)


def run_style_transfer(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    style_weights = parse_style_layers(model, params["style_layers"])
    content_at = content_layer(model, params["content_layer"])
    size = working_size(model, params["size"])
    style_pixels = ctx.pictures["style"]
    optimiser_name, steps, every = params["optimiser"], params["steps"], params["every"]
    lr = params["lr"] if params["lr"] is not None else DEFAULT_LR[optimiser_name]
    yield Log(
        f"style of {params['style']!r} at {', '.join(style_weights)}; content at {content_at}; "
        f"{size[0]}x{size[1]}, {optimiser_name} lr {lr}"
    )

    content = ctx.model_input(size)
    loss = StyleLoss(
        model,
        content,
        to_tensor(style_pixels, size),
        content_at,
        style_weights,
        (params["content_weight"], params["style_weight"], params["tv_weight"]),
    )
    image = start_image(ctx, content, params["init"]).requires_grad_(True)
    if optimiser_name == "adam":
        optimiser = torch.optim.Adam([image], lr=lr)
    else:
        optimiser = torch.optim.LBFGS(
            [image], lr=lr, max_iter=LBFGS_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
        )

    evaluated: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        if evaluated:  # the loss at the current image, already computed and differentiated below
            return evaluated.pop()
        optimiser.zero_grad(set_to_none=True)
        total, _ = loss(image)
        total.backward()
        return total

    for step in range(steps + 1):
        total, parts = loss(image)
        check_finite(step, parts)
        if is_shown(step, every, steps):
            yield from snapshot(image, parts, step, "style transfer")
        if step == steps:
            break
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        evaluated.append(total.detach())
        optimiser.step(closure)
        evaluated.clear()
        # A step to a non-finite image is caught by the next step's loss, which is computed even after the last.
        with torch.no_grad():
            image.clamp_(0.0, 1.0)
        yield Progress(step + 1, steps)

    final = to_image(image)
    yield Result(
        images={"style_transfer": final},
        arrays={"image": final},
        data={
            "style": params["style"],
            "content_layer": content_at,
            "style_layers": style_weights,
            "optimiser": optimiser_name,
            "lr": lr,
            "size": list(size),
            "steps": steps,
            **parts,
        },
    )


STYLE_TRANSFER = Method(
    name="style_transfer",
    title="Neural style transfer",
    topic="What a unit wants to see",
    run=run_style_transfer,
    params=(
        Picture(
            "style",
            DEFAULT_STYLE,
            title="Style image",
            help="The style picture: a sample (brick, grass, ...) or an upload.",
        ),
        Param(
            "content_layer",
            "layer",
            None,
            nullable=True,
            help=f"Layer whose activations keep the content; empty: {DEFAULT_CONTENT_LAYER} on EfficientNet-Lite0, "
            "else a layer at mid-depth.",
        ),
        Param(
            "style_layers",
            "string",
            None,
            nullable=True,
            help="Comma-separated layers for the Gram matrices, each optionally layer:weight; empty: "
            f"{','.join(DEFAULT_STYLE_LAYERS)} on EfficientNet-Lite0, else five layers spread over the depth.",
        ),
        Float("style_weight", 100.0, minimum=0.0, maximum=1e9, help="Weight of the style (Gram) loss."),
        Float("content_weight", 1.0, minimum=0.0, maximum=1e9, help="Weight of the content loss."),
        Float(
            "tv_weight",
            0.1,
            minimum=0.0,
            maximum=1e6,
            title="TV weight",
            help="Weight of the total variation.",
        ),
        Choice(
            "init",
            "content",
            ("content", "noise"),
            title="Start from",
            help="The content picture or seeded noise.",
        ),
        Choice(
            "optimiser",
            "adam",
            ("adam", "lbfgs"),
            help="Adam, or L-BFGS (the paper's; one frame per outer step).",
        ),
        steps_param(100, "Optimisation steps (L-BFGS: outer steps)."),
        lr_param(
            None, "Empty: 0.02 for Adam (in [0, 1] pixel units), 1 for L-BFGS.", minimum=1e-5, maximum=10.0
        ),
        EVERY,
        Int(
            "size",
            None,
            nullable=True,
            minimum=32,
            maximum=1024,
            title="Working size",
            help="Side of the square picture optimised; empty: the model's input size.",
        ),
    ),
    needs=frozenset({"gradients", "layers"}),
    description="Optimises a picture to keep the content picture's deep activations and take on the Gram "
    "matrices (the style) of another image's activations at several layers.",
    reference=REFERENCE,
)
