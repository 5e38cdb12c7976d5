"""The adversarial patch: a sticker trained to make the model see its target class wherever it is pasted.

Brown, Mané, Roy, Abadi & Gilmer, "Adversarial Patch", 2017 (arXiv:1712.09665), section 2: the patch ``p``
maximises ``E[log Pr(target | A(p, x, l, t))]`` over images ``x``, locations ``l`` and transformations ``t``
(expectation over transformations, Athalye et al. 2017), where ``A`` pastes the transformed patch at ``l``.
Here each step draws a batch of training images, each with its own random centre, scale (``min_scale`` to
``max_scale`` × ``size`` pixels a side) and rotation (±``rotation`` degrees); the paste is differentiable (an
affine sampling grid, bilinear, with the patch's disc or square mask sampled the same way), and Adam lowers the
cross-entropy toward ``target``, the patch clipped to [0, 1] after each step (as ART's
``AdversarialPatchPyTorch`` does). The success rate is measured as the paper's figures measure it: the share
of held-out images, each under ``draws`` seeded random placements, whose top-1 class is the target.

``apply_patch`` pastes a patch (an image the user uploaded: the trained run's ``patch.png``) on any picture at
a chosen place, scale and rotation, and shows the model's top-5 before and after.

Differences from the paper: one model, not an ensemble; the images are the installed sample pictures or a data
set's, split into training and held-out images by the seed, not ImageNet's; sizes are in pixels of the model's
input (a square of ``size`` 80 covers 13 % of a 224×224 input at scale 1, 1 % to 29 % over the default
scales; the paper gives the share of the image), and the centre is drawn so that the unrotated patch lies
inside the picture; the patch starts as seeded uniform noise; no camouflage term (the paper's variant that
keeps the patch near a chosen picture); held-out images whose own top-1 already is the target count as
successes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Predictions, Progress, Result
from convlens.images import to_image, to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Choice, ClassIndex, Dataset, Float, Int, Picture

from .classes import top_classes

if TYPE_CHECKING:
    from convlens.datasets import Dataset as ImageSet
    from convlens.models.base import Model

REFERENCE = "Brown, Mané, Roy, Abadi, Gilmer 2017, Adversarial Patch, arXiv:1712.09665"
DEFAULT_TARGET = "toaster"
"""The class the paper's patch shows; found by label, so any model that has the class gets it by default."""
SHAPES = ("circle", "square")
SHOWN = 3
"""Held-out images shown patched beside the patch in the streamed frame."""
PANEL = 160
"""Width and height in pixels of each panel of the streamed frame."""
EVALUATION_BATCH = 32


@dataclass(frozen=True)
class Placement:
    """Where a patch lies on a picture: its centre (pixels from the top-left corner), its width in pixels and its
    rotation in degrees, anticlockwise as seen. Its height is the width × the patch's height / width."""

    x: float
    y: float
    side: float
    angle: float


def placement_json(placement: Placement) -> dict[str, float]:
    return {"x": placement.x, "y": placement.y, "width": placement.side, "angle": placement.angle}


def patch_mask(height: int, width: int, shape: str) -> torch.Tensor:
    """1x1xHxW: 1 inside the patch, 0 outside; ``circle`` is the ellipse inscribed in the rectangle (a disc)."""
    if shape == "square":
        return torch.ones(1, 1, height, width)
    rows = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    cols = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    inside = rows[:, None] ** 2 + cols[None, :] ** 2 <= 0.25
    return inside.float()[None, None]


def sampling_matrix(placement: Placement, image_size: tuple[int, int], patch_size: tuple[int, int]) -> list:
    """The 2x3 matrix ``F.affine_grid`` takes: picture coordinates to patch coordinates, both in [-1, 1]
    (``align_corners=False``), for ``placement``."""
    height, width = image_size
    aspect = patch_size[0] / patch_size[1]
    shown_w, shown_h = placement.side, placement.side * aspect
    cos, sin = math.cos(math.radians(placement.angle)), math.sin(math.radians(placement.angle))
    # A picture point relative to the centre, turned back by the angle (anticlockwise on a y-down grid is
    # (x, y) -> (x cos + y sin, -x sin + y cos)), in halves of the shown patch.
    dx, dy = width / 2 - placement.x, height / 2 - placement.y
    return [
        [cos * width / shown_w, -sin * height / shown_w, 2 * (cos * dx - sin * dy) / shown_w],
        [sin * width / shown_h, cos * height / shown_h, 2 * (sin * dx + cos * dy) / shown_h],
    ]


def paste(
    images: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, placements: Sequence[Placement]
) -> torch.Tensor:
    """Nx3xHxW ``images`` with the 1x3xPxQ ``patch`` (1x1xPxQ ``mask``) pasted at each image's placement.

    Differentiable in ``patch``: the patch and its mask are resampled bilinearly onto each picture, and the
    picture shows through where the resampled mask is below 1 (the edges).
    """
    count, _, height, width = images.shape
    theta = torch.tensor(
        [sampling_matrix(p, (height, width), tuple(patch.shape[2:])) for p in placements], dtype=images.dtype
    )
    grid = F.affine_grid(theta, [count, 4, height, width], align_corners=False)
    layers = torch.cat([patch * mask, mask], dim=1).expand(count, -1, -1, -1)
    sampled = F.grid_sample(layers, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cover = sampled[:, 3:]
    return images * (1 - cover) + sampled[:, :3]


def random_placements(
    count: int,
    image_size: tuple[int, int],
    size: int,
    scales: tuple[float, float],
    rotation: float,
    generator: torch.Generator,
) -> list[Placement]:
    """``count`` placements: scale uniform in ``scales`` × ``size``, angle uniform in ±``rotation``, the centre
    uniform where the unrotated patch lies inside the picture."""
    draws = torch.rand(count, 4, generator=generator, dtype=torch.float64).tolist()
    height, width = image_size
    found = []
    for scale, across, down, turn in draws:
        side = size * (scales[0] + (scales[1] - scales[0]) * scale)
        found.append(
            Placement(
                x=side / 2 + across * (width - side),
                y=side / 2 + down * (height - side),
                side=side,
                angle=rotation * (2 * turn - 1),
            )
        )
    return found


def shown_patch(patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The patch as a sticker: white outside its mask."""
    return patch * mask + (1 - mask)


def panel(image: torch.Tensor) -> torch.Tensor:
    """A 1x3xHxW picture resized to a ``PANEL``-pixel square (area when shrinking, nearest when enlarging)."""
    mode = "area" if image.shape[2] >= PANEL else "nearest-exact"
    return F.interpolate(image, size=(PANEL, PANEL), mode=mode)


def success_rate(logits: torch.Tensor, target: int) -> float:
    """The share of rows of ``logits`` whose top class is ``target``."""
    return float((logits.argmax(dim=1) == target).double().mean())


def evaluate(
    model: Model,
    images: torch.Tensor,
    patch: torch.Tensor,
    mask: torch.Tensor,
    placements: list[list[Placement]],
) -> torch.Tensor:
    """The logits of each held-out image under each of its placements, image-major (forward only)."""
    draws = len(placements[0])
    patched = [
        paste(images[index : index + 1].expand(draws, -1, -1, -1), patch, mask, placements[index])
        for index in range(images.shape[0])
    ]
    return torch.as_tensor(model.logits(torch.cat(patched), batch_size=EVALUATION_BATCH))


def default_target(model: Model) -> int | None:
    """The index of the class labelled ``toaster``, or ``None`` when the model has none."""
    labels = [label.strip().lower() for label in model.labels]
    return labels.index(DEFAULT_TARGET) if DEFAULT_TARGET in labels else None


def sample_pictures() -> list[tuple[str, np.ndarray]]:
    """The installed plugins' sample pictures: (id, HxWx3 uint8)."""
    from convlens.plugins import get_plugin_manager, sample_images

    return [(sample.id, np.asarray(sample.load())) for sample in sample_images(get_plugin_manager())]


def sample_count() -> int:
    from convlens.plugins import get_plugin_manager, sample_images

    return len(sample_images(get_plugin_manager()))


def training_pictures(ctx: RunContext) -> tuple[list[str], torch.Tensor]:
    """The names and Nx3xHxW tensors (model input size) of the images the patch is trained and tested on:
    the samples, or up to ``images`` of the data set (a seeded subset when it has more)."""
    size = tuple(ctx.model.input_size)
    dataset: ImageSet | None = ctx.datasets.get("dataset")
    if dataset is None:
        named = sample_pictures()
    else:
        count = len(dataset)
        chosen = range(count)
        if count > ctx.params["images"]:
            chosen = sorted(ctx.rng.choice(count, ctx.params["images"], replace=False).tolist())
        items = dataset.items()
        named = [(items[index].key, dataset.load(index)) for index in chosen]
    return [name for name, _ in named], torch.cat([to_tensor(pixels, size) for _, pixels in named])


def check_patch(params: dict[str, Any], model: Model) -> None:
    side = min(model.input_size)
    if params["size"] > side:
        raise BadInput(
            "params.size", f"a {params['size']}-pixel patch is larger than the model's {side}-pixel input"
        )
    if params["min_scale"] > params["max_scale"]:
        raise BadInput(
            "params.min_scale",
            f"must be at most max_scale ({params['max_scale']}), got {params['min_scale']}",
        )
    if params["size"] * params["max_scale"] > side:
        raise BadInput(
            "params.max_scale",
            f"{params['size']} px × {params['max_scale']} is larger than the model's {side}-pixel input; "
            f"at most {side / params['size']:.3g}",
        )
    if params["target"] is None and default_target(model) is None:
        raise BadInput(
            "params.target", f"model {model.id!r} has no class {DEFAULT_TARGET!r}; choose a target"
        )
    if params["dataset"] is None and params["held_out"] >= sample_count():
        raise BadInput(
            "params.held_out",
            f"there are {sample_count()} sample pictures; hold out at most {sample_count() - 1}",
        )


def check_images(params: dict[str, Any], model: Model, datasets: dict[str, ImageSet]) -> None:
    count = min(len(datasets["dataset"]), params["images"])
    if params["held_out"] >= count:
        raise BadInput(
            "params.held_out", f"{count} images are used; hold out at most {count - 1} to train on the rest"
        )


def run_patch(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    target = params["target"] if params["target"] is not None else default_target(model)
    size, steps, every = params["size"], params["steps"], params["every"]
    scales, rotation = (params["min_scale"], params["max_scale"]), params["rotation"]
    input_size = tuple(model.input_size)

    names, pictures = training_pictures(ctx)
    order = ctx.rng.permutation(len(names)).tolist()
    held, trained = order[: params["held_out"]], order[params["held_out"] :]
    held_out, training = pictures[held], pictures[trained]
    yield Log(
        f"training on {len(trained)} images, {len(held)} held out "
        f"({', '.join(names[index] for index in held)}); target {model.label(target)} ({target})"
    )

    mask = patch_mask(size, size, params["shape"])
    patch = torch.rand(1, 3, size, size, generator=ctx.generator).requires_grad_(True)
    optimiser = torch.optim.Adam([patch], lr=params["lr"])
    trials = [
        random_placements(params["draws"], input_size, size, scales, rotation, ctx.generator) for _ in held
    ]
    shown = min(SHOWN, len(held))
    label = " | ".join(["patch"] + [f"patched {index + 1}" for index in range(shown)])
    targets = torch.full((params["batch"],), target, dtype=torch.long)

    def report(step: int) -> Iterator[Event]:
        """The frame, the shown pictures' top-5 and the held-out metrics now; returns the held-out success
        rate and mean target probability."""
        with torch.no_grad():
            current = patch.detach().clone()
            logits = evaluate(model, held_out, current, mask, trials)
            probabilities = logits.double().softmax(dim=1)
            draws = params["draws"]
            first = [
                paste(held_out[index : index + 1], current, mask, trials[index][:1]) for index in range(shown)
            ]
            yield Frame(
                torch.cat([panel(shown_patch(current, mask))] + [panel(image) for image in first], dim=3),
                step=step,
                label=label,
            )
        yield Predictions(
            {
                f"patched {index + 1}": top_classes(model, logits[index * draws : index * draws + 1])
                for index in range(shown)
            },
            step=step,
        )
        held_out_rates = (success_rate(logits, target), float(probabilities[:, target].mean()))
        yield Metrics(
            {"held-out success rate": held_out_rates[0], "held-out target probability": held_out_rates[1]},
            step=step,
        )
        return held_out_rates

    start_rate, start_probability = yield from report(0)
    rate, probability = start_rate, start_probability
    for step in range(1, steps + 1):
        picks = torch.randint(len(trained), (params["batch"],), generator=ctx.generator)
        placements = random_placements(params["batch"], input_size, size, scales, rotation, ctx.generator)
        logits = model.forward(paste(training[picks], patch, mask, placements)).logits
        loss = F.cross_entropy(logits, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise BadInput("params.lr", f"the loss is {value} at step {step}: try a smaller lr")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            patch.clamp_(0, 1)
        yield Metrics(
            {
                "loss": value,
                "target probability": float(logits.detach().double().softmax(dim=1)[:, target].mean()),
            },
            step=step,
        )
        if step % every == 0 or step == steps:
            rate, probability = yield from report(step)
        yield Progress(step, steps)

    final = patch.detach()
    yield Log(f"held-out success rate {rate:.0%} (the starting noise patch: {start_rate:.0%})")
    sticker = to_image(shown_patch(final, mask))
    yield Result(
        images={"patch": sticker},
        arrays={
            "patch": np.ascontiguousarray(final[0].permute(1, 2, 0).numpy(), dtype=np.float32),
            "mask": mask[0, 0].numpy(),
        },
        data={
            "target": target,
            "target_label": model.label(target),
            "success_rate": rate,
            "start_success_rate": start_rate,
            "held_out_target_probability": probability,
            "held_out": [names[index] for index in held],
            "training": [names[index] for index in trained],
            "placements": [[placement_json(p) for p in placements] for placements in trials],
            "size": size,
            "shape": params["shape"],
            "steps": steps,
            "batch": params["batch"],
        },
    )


def run_apply(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    image = ctx.model_input()
    height, width = image.shape[2:]
    picture = to_tensor(ctx.pictures["patch"])
    mask = patch_mask(picture.shape[2], picture.shape[3], params["shape"])
    placement = Placement(
        x=params["x"] * width,
        y=params["y"] * height,
        side=params["size"] * params["scale"],
        angle=params["rotation"],
    )
    with torch.no_grad():
        patched = paste(image, picture, mask, [placement]).clamp(0, 1)
        before, after = model.forward(torch.cat([image, patched])).logits.split(1)
    top_before, top_after = top_classes(model, before), top_classes(model, after)
    yield Frame(torch.cat([panel(image), panel(patched)], dim=3), step=0, label="original | patched")
    yield Predictions({"original": top_before, "patched": top_after}, step=0)
    yield Progress(1, 1)
    yield Result(
        images={"patched": to_image(patched)},
        arrays={"patched": to_image(patched)},
        data={
            "top5_before": top_before,
            "top5_after": top_after,
            "placement": {
                "x": placement.x,
                "y": placement.y,
                "width": placement.side,
                "angle": placement.angle,
            },
        },
    )


def check_apply(params: dict[str, Any], model: Model) -> None:
    side = min(model.input_size)
    if params["size"] * params["scale"] > side:
        raise BadInput(
            "params.scale",
            f"{params['size']} px × {params['scale']} is larger than the model's {side}-pixel input",
        )


SHAPE = Choice(
    "shape",
    "circle",
    SHAPES,
    title="Shape",
    help="circle: a round sticker (the disc inside the square); square.",
)

ADVERSARIAL_PATCH = Method(
    name="adversarial_patch",
    title="Adversarial patch",
    topic="How easily it is fooled",
    run=run_patch,
    params=(
        ClassIndex(
            "target", title="Target class", help=f"Empty: '{DEFAULT_TARGET}' (when the model has it)."
        ),
        Int(
            "size",
            80,
            minimum=4,
            maximum=1024,
            title="Patch size (px)",
            help="The patch's side at scale 1, "
            "in pixels of the model's input (80 on 224: 13 % of the picture's area).",
        ),
        Float("min_scale", 0.3, minimum=0.05, maximum=4.0, title="Smallest scale", help="× size."),
        Float("max_scale", 1.5, minimum=0.05, maximum=4.0, title="Largest scale", help="× size."),
        Float(
            "rotation",
            22.5,
            minimum=0.0,
            maximum=180.0,
            title="Rotation (±°)",
            help="Each paste turns the patch by a random angle up to this many degrees either way.",
        ),
        SHAPE,
        Int("steps", 200, minimum=1, maximum=10000, title="Steps"),
        Int(
            "batch",
            8,
            minimum=1,
            maximum=64,
            title="Batch",
            help="Random pastes (image, place, scale, rotation) per step.",
        ),
        Float("lr", 0.1, minimum=1e-5, maximum=1.0, title="Learning rate", help="Adam's, on [0, 1] pixels."),
        Dataset(
            "dataset",
            None,
            nullable=True,
            title="Images",
            help="Empty: the sample pictures; else a data set's images.",
        ),
        Int(
            "images",
            64,
            minimum=2,
            maximum=1024,
            title="Images used",
            help="From a data set: at most this many (a seeded subset).",
        ),
        Int(
            "held_out",
            4,
            minimum=1,
            maximum=1023,
            title="Held out",
            help="Images kept out of training to measure the success rate.",
        ),
        Int(
            "draws",
            4,
            minimum=1,
            maximum=64,
            title="Placements per held-out image",
            help="Seeded random placements each held-out image is tested under.",
        ),
        Int(
            "every",
            10,
            minimum=1,
            maximum=10000,
            title="Test every",
            help="Steps between held-out tests (and frames).",
        ),
    ),
    needs=frozenset({"gradients"}),
    check=check_patch,
    check_datasets=check_images,
    description="A patch trained by expectation over transformations (random place, scale and rotation) on a "
    "set of images so that, pasted anywhere, the model sees the target class (Brown et al. 2017); its success "
    "rate on held-out images.",
    reference=REFERENCE,
)

APPLY_PATCH = Method(
    name="apply_patch",
    title="Apply a patch",
    topic="How easily it is fooled",
    run=run_apply,
    params=(
        Picture(
            "patch",
            title="Patch",
            help="The trained patch of an adversarial_patch run: job:<its id>:patch (its 'Apply this patch'), "
            "or an upload.",
        ),
        Int(
            "size",
            80,
            minimum=1,
            maximum=4096,
            title="Patch size (px)",
            help="Its width at scale 1, in pixels of the model's input.",
        ),
        Float("scale", 1.0, minimum=0.05, maximum=16.0, title="Scale", help="× size."),
        Float("x", 0.5, minimum=0.0, maximum=1.0, title="Centre x", help="0: left edge, 1: right edge."),
        Float("y", 0.5, minimum=0.0, maximum=1.0, title="Centre y", help="0: top edge, 1: bottom edge."),
        Float("rotation", 0.0, minimum=-180.0, maximum=180.0, title="Rotation (°)", help="Anticlockwise."),
        SHAPE,
    ),
    check=check_apply,
    description="Paste a patch on the picture at a place, scale and rotation, and see the top-5 before and "
    "after (Brown et al. 2017).",
    reference=REFERENCE,
)
