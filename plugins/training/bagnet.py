"""BagNet: classify an image by a bag of local features, each q x q patch on its own.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet",
ICLR 2019 (arXiv:1904.00760), section 3 and Fig. 1-2. Every q x q patch of the image, taken at a stride, is
classified on its own into one logit per class; the logits are averaged over space and soft-maxed into the
bag's prediction. The paper's net (BagNet-q) computes all patches in one pass with receptive fields capped at
q; here the default model (any model) classifies each patch resized to its input size, batched through
``Model.logits`` (ONNX Runtime for ``.onnx`` files), so the bag asks: how much of the full net's answer lies
in local features alone? Nothing is trained: it sits among the issue's demonstrations (deck 000).

Differences from the paper: patches lie wholly inside the image (starts ``0, stride, ...`` up to ``size - q``)
rather than on a padded feature map; each patch is cut from the picture at the model's input size and resized
(bicubic, as pictures are resized everywhere in convlens); q may be any side up to the input (9, 17 and 33 are
the paper's), and q equal to the input makes one patch, the whole picture: then the bag is the model.
The heatmap at a pixel is the mean logit of the chosen class over the patches covering it.

A BagNet file (one whose card declares ``bagnet``: ``{"patch": q, "stride": s, "layer": name}``, as
:mod:`convlens_plugins.training.bagnet_net` writes) is the paper's net: its layer ``name`` is the NxKxH'xW'
logit map, position (i, j) the logits of the q x q patch at (i s, j s) alone. Then the map is read off one
forward pass of the file, q and the stride are the card's (the form's ``patch`` and ``stride`` are not used,
and a log line says so when they differ), and no patch is cut or resized; the views and the result are the
same, the map streamed once, whole.

``bagnet_correlation`` is the paper's Fig. 2 C: the bag's (space-averaged) logits against the full model's over
a few sample photos, with their Pearson correlation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.colormaps import overlay
from convlens.errors import BadInput
from convlens.events import PANEL_SEPARATOR, Event, Frame, Log, Metrics, Points, Predictions, Progress, Result
from convlens.images import resize, skimage_samples, to_float
from convlens.methods import Method, RunContext
from convlens.params import ClassIndex, Float, Int

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Brendel, Bethge 2019, Approximating CNNs with Bag-of-local-Features models works surprisingly well on "
    "ImageNet, ICLR, arXiv:1904.00760"
)
TOPIC = "Networks trained live"
PAPER_PATCHES = (9, 17, 33)
TOP = 5
EVIDENCE_PATCHES = 6
"""Most evidential patches shown per top class."""
EVIDENCE_SIDE = 48
"""Each evidence patch is drawn this many pixels wide."""
GAP = 2
FRAME_LABEL = f"bag{PANEL_SEPARATOR}full model"
"""Streamed frames: the heatmap so far beside the picture, with the bag's and the model's top-5."""
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "horse", "clock")
"""scikit-image photos the correlation runs over, in this order."""
SCATTER_SIDE = 256


def patch_starts(size: tuple[int, int], patch: int, stride: int) -> np.ndarray:
    """(y, x) of every ``patch`` x ``patch`` square wholly inside ``size``, rows first, ``stride`` apart."""
    ys = np.arange(0, size[0] - patch + 1, stride)
    xs = np.arange(0, size[1] - patch + 1, stride)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def declared_bagnet(model: Model) -> dict[str, Any] | None:
    """The card's ``bagnet`` declaration (``patch``, ``stride``, ``layer``), ``None`` for any other model."""
    return model.card.extra.get("bagnet")


def check_bagnet_file(model: Model) -> None:
    """``BadInput`` naming ``model`` when the card's BagNet patch does not fit the input or its layer is
    missing."""
    declared = declared_bagnet(model)
    height, width = model.input_size
    if declared["patch"] > min(height, width):
        raise BadInput(
            "model",
            f"{model.id}: the card's bagnet.patch {declared['patch']} exceeds its {height}x{width} input",
        )
    if declared["layer"] not in model.layer_names():
        raise BadInput(
            "model", f"{model.id}: the card's bagnet.layer {declared['layer']!r} is no layer of it"
        )


def check_bag(params: dict[str, Any], model: Model) -> None:
    """``bagnet``'s check: the card's for a BagNet file (its own q is used), else :func:`check_patch`."""
    if declared_bagnet(model) is not None:
        check_bagnet_file(model)
    else:
        check_patch(params, model)


def check_patch(params: dict[str, Any], model: Model) -> None:
    """``BadInput`` naming ``params.patch`` when the square does not fit in the model's input."""
    height, width = model.input_size
    if params["patch"] > min(height, width):
        raise BadInput(
            "params.patch", f"a {params['patch']}-pixel patch is larger than the {height}x{width} model input"
        )


def patch_batch(picture: np.ndarray, starts: np.ndarray, patch: int, size: tuple[int, int]) -> np.ndarray:
    """Nx3xHxW float32: each ``patch`` square of ``picture`` (HxWx3 uint8) at ``starts`` resized to ``size``."""
    batch = np.empty((len(starts), 3, *size), np.float32)
    for image, (y, x) in zip(batch, starts, strict=True):
        image[:] = resize(picture[y : y + patch, x : x + patch], size).transpose(2, 0, 1)
    return batch


def bag_logits(
    model: Model, picture: np.ndarray, patch: int, stride: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The patches' starts and logits (NxK), growing by ``batch_size`` patches a step, for ``picture`` (HxWx3
    uint8 at the model's input size)."""
    size = picture.shape[:2]
    starts = patch_starts(size, patch, stride)
    logits = None
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        computed = model.logits(patch_batch(picture, chunk, patch, size), batch_size)
        if logits is None:
            logits = np.empty((len(starts), computed.shape[1]), np.float32)
        logits[first : first + len(chunk)] = computed
        yield starts, logits[: first + len(chunk)]


def map_logits(
    model: Model, images: torch.Tensor, layer: str, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One forward pass of a BagNet file on 1x3xHxW ``images``: the patches' starts (map position times
    ``stride``), their logits (NxK, rows first) read off the logit map ``layer``, and the file's own logits."""
    with torch.inference_mode():
        forward = model.forward(images, [layer])
    grid = forward.activations[layer][0].float().cpu().numpy()
    classes = len(model.labels)
    if grid.ndim != 3 or grid.shape[0] != classes:
        raise BadInput(
            "model",
            f"{model.id}: layer {layer!r} is {list(grid.shape)}, not a logit map of {classes} classes",
        )
    ys, xs = np.arange(grid.shape[1]) * stride, np.arange(grid.shape[2]) * stride
    starts = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return starts, grid.reshape(classes, -1).T.copy(), forward.logits[0].float().cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return shifted / shifted.sum()


def top_classes(model: Model, logits: np.ndarray, k: int = TOP) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one picture's logits, best first, as ``Predictions`` lists them."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"class": int(index), "label": model.label(int(index)), "probability": float(probabilities[index])}
        for index in order
    ]


def class_map(size: tuple[int, int], starts: np.ndarray, values: np.ndarray, patch: int) -> np.ndarray:
    """HxW: the mean of ``values`` (one per patch done) over the patches covering each pixel; NaN where none."""
    total = np.zeros(size, np.float64)
    count = np.zeros(size, np.int32)
    for (y, x), value in zip(starts, values, strict=False):
        total[y : y + patch, x : x + patch] += value
        count[y : y + patch, x : x + patch] += 1
    with np.errstate(invalid="ignore"):
        return (total / count).astype(np.float32)


def heatmap(image: np.ndarray, values: np.ndarray, opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (HxW, NaN where no patch is done yet) scaled to [0, 1] over its range and laid over ``image``
    (HxWx3 float); pixels without a patch are the image in grey. The overlay and the scaled map."""
    known = np.isfinite(values)
    low, high = (float(values[known].min()), float(values[known].max())) if known.any() else (0.0, 0.0)
    scaled = np.where(known, (values - low) / (high - low) if high > low else 0.0, 0.0).astype(np.float32)
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    return np.where(known[:, :, None], overlay(image, scaled, opacity), grey), scaled


def evidence(
    model: Model, picture: np.ndarray, starts: np.ndarray, logits: np.ndarray, classes: list[int], patch: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A grid of the most evidential patches (highest logit) of each class, one row a class, and where they lie."""
    count = min(EVIDENCE_PATCHES, len(starts))
    cell = EVIDENCE_SIDE + GAP
    grid = np.ones((len(classes) * cell - GAP, count * cell - GAP, 3), np.float32)
    rows = []
    for row, index in enumerate(classes):
        best = np.argsort(-logits[:, index], kind="stable")[:count]
        for column, patch_index in enumerate(best):
            y, x = starts[patch_index]
            crop = resize(picture[y : y + patch, x : x + patch], (EVIDENCE_SIDE, EVIDENCE_SIDE))
            grid[row * cell : row * cell + EVIDENCE_SIDE, column * cell : column * cell + EVIDENCE_SIDE] = (
                crop
            )
        rows.append(
            {
                "class": index,
                "label": model.label(index),
                "patches": [
                    {"y": int(starts[i][0]), "x": int(starts[i][1]), "logit": float(logits[i, index])}
                    for i in best
                ],
            }
        )
    return grid, rows


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson's correlation of two equally long arrays (0 when either is constant)."""
    a, b = np.asarray(first, np.float64).ravel(), np.asarray(second, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def run_bagnet(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    check_bag(params, ctx.model)
    declared = declared_bagnet(ctx.model)
    images = ctx.model_input()
    image = np.ascontiguousarray(images[0].numpy().transpose(1, 2, 0))
    picture = np.rint(image * 255.0).astype(np.uint8)
    size = picture.shape[:2]
    if declared is not None:
        patch, stride = declared["patch"], declared["stride"]
        for name in ("patch", "stride"):
            if params[name] != declared[name]:
                yield Log(
                    f"{name} {params[name]} not used: {ctx.model.id}'s card fixes it at {declared[name]}"
                )
        starts, logits, model_logits = map_logits(ctx.model, images, declared["layer"], stride)
        passes: Iterator[tuple[np.ndarray, np.ndarray]] = iter([(starts, logits)])
    else:
        patch, stride = params["patch"], params["stride"]
        starts, logits = patch_starts(size, patch, stride), np.empty((0, 0), np.float32)
        model_logits = ctx.model.logits(image.transpose(2, 0, 1)[None])[0]
        passes = bag_logits(ctx.model, picture, patch, stride, params["batch_size"])
    model_top = top_classes(ctx.model, model_logits)
    total = len(starts)
    for step, (starts, logits) in enumerate(passes):
        mean = logits.mean(axis=0)
        chosen = params["class"] if params["class"] is not None else int(mean.argmax())
        values = class_map(size, starts[: len(logits)], logits[:, chosen], patch)
        shown, _ = heatmap(image, values, params["overlay"])
        yield Frame(np.concatenate([shown, image], axis=1), step=step, label=FRAME_LABEL)
        bag_top = top_classes(ctx.model, mean)
        yield Predictions({"bag": bag_top, "full model": model_top}, step=step)
        yield Metrics(
            {
                "logit correlation with the full model": pearson(mean, model_logits),
                "bag top-1 probability": bag_top[0]["probability"],
            },
            step=step,
        )
        yield Progress(len(logits), total)
    mean = logits.mean(axis=0)
    bag_top = top_classes(ctx.model, mean)
    chosen = params["class"] if params["class"] is not None else bag_top[0]["class"]
    values = class_map(size, starts, logits[:, chosen], patch)
    shown, scaled = heatmap(image, values, params["overlay"])
    grid, rows = evidence(ctx.model, picture, starts, logits, [entry["class"] for entry in bag_top], patch)
    yield Frame(grid, step=total, label="evidence")
    ys, xs = np.unique(starts[:, 0]), np.unique(starts[:, 1])
    yield Result(
        images={"heatmap": shown, "map": scaled, "evidence": grid},
        arrays={
            "patch_logits": logits.reshape(len(ys), len(xs), -1),
            "class_map": values,
            "bag_logits": mean.astype(np.float32),
            "model_logits": model_logits,
        },
        data={
            "patch": patch,
            "stride": stride,
            "one_pass": declared is not None,
            "patches": total,
            "grid": [len(ys), len(xs)],
            "class": chosen,
            "label": ctx.model.label(chosen),
            "bag_top5": bag_top,
            "model_top5": model_top,
            "same_top1": bag_top[0]["class"] == model_top[0]["class"],
            "logit_correlation": pearson(mean, model_logits),
            "evidence": rows,
        },
    )


def scatter(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """A SCATTER_SIDE-pixel square plot of (x, y), each group's points a shade darker than the last."""
    plot = np.ones((SCATTER_SIDE, SCATTER_SIDE, 3), np.float32)
    margin = 4

    def pixel(values: np.ndarray) -> np.ndarray:
        low, high = float(values.min()), float(values.max())
        span = high - low if high > low else 1.0
        return np.rint(margin + (values - low) / span * (SCATTER_SIDE - 1 - 2 * margin)).astype(np.intp)

    columns, rows = pixel(x), SCATTER_SIDE - 1 - pixel(y)
    shades = np.linspace(0.2, 0.7, max(1, int(groups.max()) + 1))
    plot[rows, columns] = np.stack([shades[groups], shades[groups] * 0.5, 1 - shades[groups]], axis=1)
    return plot


def run_bagnet_correlation(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    patch, stride = params["patch"], params["stride"]
    check_patch(params, ctx.model)
    size = ctx.model.input_size
    photos = skimage_samples({name: name for name in PHOTOS[: params["photos"]]})
    per_photo_patches = len(patch_starts(size, patch, stride))
    model_rows, bag_rows, per_photo = [], [], []
    for step, photo in enumerate(photos):
        image = resize(to_float(photo.load()), size)
        picture = np.rint(image * 255.0).astype(np.uint8)
        model_logits = ctx.model.logits(image.transpose(2, 0, 1)[None])[0]
        logits = np.empty((0, 0), np.float32)
        for _, logits in bag_logits(ctx.model, picture, patch, stride, params["batch_size"]):
            # One event a batch: the job may pause or stop between them.
            yield Progress(step * per_photo_patches + len(logits), len(photos) * per_photo_patches)
        bag = logits.mean(axis=0)
        model_rows.append(model_logits)
        bag_rows.append(bag)
        per_photo.append({"photo": photo.id, "pearson": pearson(bag, model_logits)})
        x, y = np.concatenate(model_rows), np.concatenate(bag_rows)
        groups = np.repeat(np.arange(len(model_rows)), len(model_logits))
        yield Frame(scatter(x, y, groups), step=step, label="bag logit vs full model logit")
        yield Points(np.stack([x, y], axis=1), step=step, label="logits")
        yield Metrics(
            {"pearson r (all photos)": pearson(x, y), "pearson r (this photo)": per_photo[-1]["pearson"]},
            step=step,
        )
    x, y = np.concatenate(model_rows), np.concatenate(bag_rows)
    yield Result(
        images={"scatter": scatter(x, y, np.repeat(np.arange(len(model_rows)), len(model_rows[0])))},
        arrays={"model_logits": np.stack(model_rows), "bag_logits": np.stack(bag_rows)},
        data={"pearson": pearson(x, y), "photos": per_photo, "patch": patch, "stride": stride},
    )


PATCH = Int(
    "patch",
    33,
    minimum=1,
    title="Patch side q (pixels)",
    help="Side of each square classified on its own: 9, 17 and 33 are the paper's; the input size is the whole "
    "picture.",
)
BATCH_SIZE = Int(
    "batch_size",
    32,
    minimum=1,
    maximum=256,
    title="Batch size",
    help="Patches per forward pass (and per frame).",
)

BAGNET = Method(
    name="bagnet",
    title="BagNet: a bag of local features",
    topic=TOPIC,
    run=run_bagnet,
    params=(
        PATCH,
        Int("stride", 8, minimum=1, title="Stride (pixels)", help="Step between patches."),
        ClassIndex(
            "class", title="Class", help="The class whose evidence is mapped; empty: the bag's top one."
        ),
        BATCH_SIZE,
        Float(
            "overlay", 0.7, minimum=0.0, maximum=1.0, title="Overlay opacity", help="0 shows only the image."
        ),
    ),
    check=check_bag,
    description="Classify every q x q patch of the picture on its own, average the logits over space and "
    "soft-max them: the bag's top-5 beside the full model's, the chosen class's evidence as a heatmap and the "
    "most evidential patches of each top class. On a BagNet file (its card declares bagnet) every patch's "
    "logits come from one forward pass, at the card's q and stride.",
    reference=REFERENCE,
)

BAGNET_CORRELATION = Method(
    name="bagnet_correlation",
    title="BagNet: bag vs full model over photos",
    topic=TOPIC,
    run=run_bagnet_correlation,
    params=(
        PATCH,
        Int("stride", 16, minimum=1, title="Stride (pixels)", help="Step between patches."),
        Int(
            "photos",
            4,
            minimum=1,
            maximum=len(PHOTOS),
            title="Photos",
            help="How many of scikit-image's photos the bag and the model classify.",
        ),
        BATCH_SIZE,
    ),
    check=check_patch,
    description="The paper's Fig. 2 C: the bag's space-averaged logits against the full model's over a few "
    "sample photos, plotted, with their Pearson correlation.",
    reference=REFERENCE,
)
