"""What models say about pictures of nothing: noise, stripes and checkerboards, and how sure each is.

Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled", CVPR 2015 (arXiv:1412.1897): a network
gives high confidence to images a person sees as nothing. This method shows the plain baseline of that claim,
for the run's model and, beside it, every other chosen one (``models``: by default every model the server has).
Four patterns at the run's model's input size (Gaussian noise N(0.5, 0.25²) clipped to [0, 1], uniform noise,
stripes, a checkerboard), one frame each with a panel a model and each model's top-5 under its panel; then
``draws`` Gaussian noise images through each model, forward only, a histogram of the top softmax probability
per model, the threshold that would reject ``reject`` (0.99) of its noise (the ``reject`` quantile; an image
is rejected when its top probability is at or below it), and the share of the installed sample photos that
the same threshold rejects on that model. The histograms share one x range, from 0 to the largest top
probability of any model rounded up to a readable step (an ImageNet model's top probability on noise rarely
passes 0.2, so [0, 1] would squeeze every bar into its left edge), and one count scale, so they compare side
by side; the result's ``bins`` (edges and counts per model) let a client redraw them.

Differences from the paper: the paper evolves images to fool the net; here the noise is plain, to show the
base rate of confidence on meaningless input. The stripes (horizontal) and checkerboard are black and white
with a period of an eighth of the input's height; only the two noises draw from the seed. A model whose input
size differs from the run's model's sees the four patterns resized (bilinear, antialiased, in float), and its
own noise draws at its own size, so each model's noise follows the stated law; models of one size see the same
draws. The single-model keys of the result (``threshold``, ``samples``...) are the run's model's; ``by_model``
holds every model's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from PIL import Image, ImageDraw, ImageFont

from convlens.events import Event, Frame, Log, Metrics, Predictions, Progress, Result
from convlens.images import to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Float, Int, Models

from .classes import softmax, top_classes

REFERENCE = (
    "Nguyen, Yosinski, Clune 2015, Deep Neural Networks are Easily Fooled: High Confidence Predictions for "
    "Unrecognizable Images, arXiv:1412.1897"
)
NOISE_MEAN = 0.5
NOISE_STD = 0.25
PATTERNS = ("gaussian", "uniform", "stripes", "checkerboard")
PLOT_TOP, PLOT_LEFT, PLOT_HEIGHT, PLOT_WIDTH = 18, 44, 160, 320
"""Where a histogram's bars lie in its picture, in pixels: above them the threshold's value, left of them the
counts, below them the x range's ends and the axis name."""
HISTOGRAM_SIZE = (PLOT_TOP + PLOT_HEIGHT + 32, PLOT_LEFT + PLOT_WIDTH + 8)
"""Height and width of one model's histogram picture, in pixels."""
FONT_SIZE = 12
BAR_COLOUR = (70, 90, 140)
AXIS_COLOUR = (90, 90, 90)
TEXT_COLOUR = (40, 40, 40)
THRESHOLD_COLOUR = (220, 40, 40)
ROW_WIDTH = 1024
"""A pattern's frame (one panel a model) is shrunk to fit this width."""
PANEL_SEPARATOR = " | "
"""Between the panel names of a frame's label: each panel is one model's, with its top-5 under it."""


def gaussian_noise(
    rng: np.random.Generator, count: int, size: tuple[int, int], clip: bool = True
) -> np.ndarray:
    """``count`` images (Nx3xHxW float32) of N(0.5, 0.25²) per pixel and channel, clipped to [0, 1] unless not."""
    noise = rng.normal(NOISE_MEAN, NOISE_STD, size=(count, 3, *size))
    if clip:
        noise = np.clip(noise, 0.0, 1.0)
    return noise.astype(np.float32)


def patterns(rng: np.random.Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each of :data:`PATTERNS` as a 1x3xHxW float32 image in [0, 1]; the two noises from ``rng``."""
    height, width = size
    period = max(2, height // 8)
    rows = (np.arange(height) // (period // 2 or 1))[:, None]
    cols = (np.arange(width) // (period // 2 or 1))[None, :]
    stripes = np.broadcast_to(rows % 2, (height, width))
    checkerboard = (rows + cols) % 2
    return {
        "gaussian": gaussian_noise(rng, 1, size),
        "uniform": rng.random((1, 3, height, width)).astype(np.float32),
        "stripes": np.broadcast_to(stripes, (1, 3, height, width)).astype(np.float32),
        "checkerboard": np.broadcast_to(checkerboard, (1, 3, height, width)).astype(np.float32),
    }


def rejection_threshold(top_probabilities: np.ndarray, reject: float) -> float:
    """The top probability at or below which ``reject`` of the noise images lie: their ``reject`` quantile."""
    return float(np.quantile(top_probabilities, reject))


def histogram_limit(largest: float) -> float:
    """The right end of the histograms' x range: the smallest multiple of half a power of ten at or above the
    ``largest`` top probability (0.127 → 0.15, 0.0031 → 0.0035, 0.93 → 0.95), at most 1, so every draw lies in
    the range, it fills at least two thirds of the width and its end reads in two digits."""
    if largest <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(largest)) / 2
    decimals = max(0, -math.floor(math.log10(step)))
    limit = round(math.ceil(round(largest / step, 9)) * step, decimals)
    if limit < largest:
        limit = round(limit + step, decimals)
    return min(limit, 1.0)


def histogram_counts(top_probabilities: np.ndarray, bins: int, limit: float) -> np.ndarray:
    """How many top probabilities fall in each of ``bins`` equal bins over [0, ``limit``]."""
    return np.histogram(top_probabilities, bins=bins, range=(0.0, limit))[0]


def plot_column(value: float, limit: float) -> int:
    """The pixel column of ``value`` on a histogram whose x range is [0, ``limit``]."""
    return PLOT_LEFT + min(int(value / limit * PLOT_WIDTH), PLOT_WIDTH - 1)


def histogram_image(
    counts: np.ndarray, limit: float, threshold: float | None = None, tallest: int | None = None
) -> np.ndarray:
    """``counts`` (equal bins over [0, ``limit``]) as bars, HxWx3 uint8, with axes, the two ends of the x range
    and the ``tallest`` count (by default this histogram's) written at their ends; the threshold as a red line
    with its value above it when given."""
    picture = np.full((*HISTOGRAM_SIZE, 3), 255, dtype=np.uint8)
    top, bottom, right = PLOT_TOP, PLOT_TOP + PLOT_HEIGHT, PLOT_LEFT + PLOT_WIDTH
    tallest = max(int(counts.max()) if tallest is None else tallest, 1)
    edges = PLOT_LEFT + np.linspace(0, PLOT_WIDTH, len(counts) + 1).astype(int)
    for count, left, end in zip(counts, edges[:-1], edges[1:], strict=True):
        bar = round(PLOT_HEIGHT * int(count) / tallest)
        if bar:
            picture[bottom - bar : bottom, left : max(left + 1, end - 1)] = BAR_COLOUR
    picture[top:bottom, PLOT_LEFT - 1] = AXIS_COLOUR
    picture[bottom, PLOT_LEFT - 1 : right] = AXIS_COLOUR
    picture[bottom : bottom + 4, [PLOT_LEFT, right - 1]] = AXIS_COLOUR
    if threshold is not None:
        x = plot_column(threshold, limit)
        picture[top:bottom, max(x - 1, PLOT_LEFT) : x + 1] = THRESHOLD_COLOUR
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)

    def write(text: str, x: float, y: int, align: str = "left", fill: tuple[int, int, int] = TEXT_COLOUR):
        width = draw.textlength(text, font=font)
        shift = {"left": 0, "centre": width / 2, "right": width}[align]
        draw.text((round(x - shift), y), text, font=font, fill=fill)

    write("0", PLOT_LEFT, bottom + 4)
    write(tick_label(limit), right, bottom + 4, "right")
    write("top probability", PLOT_LEFT + PLOT_WIDTH / 2, bottom + 16, "centre")
    write(str(tallest), PLOT_LEFT - 4, top - 3, "right")
    write("0", PLOT_LEFT - 4, bottom - 12, "right")
    write("draws", 2, 0)
    if threshold is not None:
        text = f"{threshold:.3g}"
        fits = x + 3 + draw.textlength(text, font=font) <= right
        write(text, x + 3 if fits else x - 3, 0, "left" if fits else "right", THRESHOLD_COLOUR)
    return np.asarray(canvas)


def tick_label(value: float) -> str:
    """A tick's value as it reads: ``0.15``, ``0.0035``, ``1``."""
    return f"{value:g}"


def patterns_mosaic(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """1x3xHxW images in a 2-column grid, white gaps, HxWx3 float32; at most 512 px a side (strided)."""
    tiles = [image[0].transpose(1, 2, 0) for image in images]
    height, width = tiles[0].shape[:2]
    rows = (len(tiles) + 1) // 2
    canvas = np.ones((rows * height + (rows - 1) * gap, 2 * width + gap, 3), dtype=np.float32)
    for index, tile in enumerate(tiles):
        top, left = (index // 2) * (height + gap), (index % 2) * (width + gap)
        canvas[top : top + height, left : left + width] = tile
    stride = -(-max(canvas.shape[:2]) // 512)
    return canvas[::stride, ::stride]


def sample_photos(size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The installed plugins' sample photos, each resized to ``size`` as a 1x3xHxW float32 tensor's array."""
    from convlens.plugins import get_plugin_manager, sample_images

    return {
        sample.id: to_tensor(sample.load(), size).numpy() for sample in sample_images(get_plugin_manager())
    }


def panel_row(image: np.ndarray, count: int, width: int = ROW_WIDTH) -> np.ndarray:
    """``count`` copies of the 1x3xHxW ``image`` side by side as HxWx3 float32, each tile shrunk (area) to at
    most ``width / count`` pixels wide: the equal panels of a frame labelled ``"a | b | ..."``."""
    tile = torch.from_numpy(np.ascontiguousarray(image)).float()
    height, side = tile.shape[2:]
    tile_width = min(side, max(1, width // count))
    if tile_width < side:
        tile = F.interpolate(tile, size=(max(1, round(height * tile_width / side)), tile_width), mode="area")
    row = torch.cat([tile] * count, dim=3)
    return row[0].permute(1, 2, 0).numpy()


def seen_by(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nx3xHxW ``images`` as a model of input ``size`` sees them: as they are at that size, else resized
    (bilinear, antialiased, in float)."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    resized = F.interpolate(
        torch.from_numpy(images), size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp(0, 1).numpy()


def run_noise_predictions(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    models = ctx.models.get("models") or [ctx.model]
    for model_id, reason in ctx.models_left_out.items():
        yield Log(f"{model_id} left out: it cannot be loaded ({reason})", level="warning")
    size = tuple(ctx.model.input_size)
    ids = [model.id for model in models]

    shown = patterns(ctx.rng, size)
    pattern_top: list[dict[str, list[dict[str, Any]]]] = [{} for _ in models]
    tops: dict[str, list[dict[str, Any]]] = {}
    for step, (name, image) in enumerate(shown.items()):
        panels = [f"{name} · {model_id}" for model_id in ids]
        for index, model in enumerate(models):
            tops[panels[index]] = top_classes(model, model.logits(seen_by(image, model.input_size)))
            pattern_top[index][name] = [
                {"index": e["class"], "label": e["label"], "probability": e["probability"]}
                for e in tops[panels[index]]
            ]
        yield Frame(panel_row(image, len(models)), step=step, label=PANEL_SEPARATOR.join(panels))
        yield Predictions(dict(tops), step=step)

    draws, batch, bins = params["draws"], params["batch"], params["bins"]
    batches = -(-draws // batch)
    # Noise of the stated law at each model's own input size; models of one size see the same draws.
    sizes = list(dict.fromkeys(tuple(model.input_size) for model in models))
    top = [np.empty(0, dtype=np.float64) for _ in models]
    histogram_label = PANEL_SEPARATOR.join(f"histogram · {model_id}" for model_id in ids)
    yield Progress(0, batches)
    for index in range(batches):
        count = min(batch, draws - index * batch)
        noise = {shape: gaussian_noise(ctx.rng, count, shape) for shape in sizes}
        for which, model in enumerate(models):
            logits = model.logits(noise[tuple(model.input_size)], batch_size=batch)
            top[which] = np.concatenate([top[which], softmax(logits).max(axis=1)])
        yield Frame(histograms_row(top, bins), step=index + 1, label=histogram_label)
        yield Metrics(
            {
                "mean_top_probability": float(top[0].mean()),
                **{f"mean top probability · {i}": float(t.mean()) for i, t in zip(ids, top, strict=True)},
            },
            step=index + 1,
        )
        yield Progress(index + 1, batches)

    limit = histogram_limit(max(float(t.max()) for t in top))
    edges = np.linspace(0.0, limit, bins + 1).tolist()
    by_model = []
    for which, model in enumerate(models):
        threshold = rejection_threshold(top[which], params["reject"])
        photos = sample_photos(tuple(model.input_size))
        photo_top = (
            softmax(model.logits(np.concatenate(list(photos.values())))).max(axis=1)
            if photos
            else np.empty(0)
        )
        photo_rejected = photo_top <= threshold
        by_model.append(
            {
                "model": model.id,
                "input_size": list(model.input_size),
                "patterns": pattern_top[which],
                "bins": {"edges": edges, "counts": histogram_counts(top[which], bins, limit).tolist()},
                "mean_top_probability": float(top[which].mean()),
                "threshold": threshold,
                "noise_rejected": float(np.mean(top[which] <= threshold)),
                "samples": [
                    {"id": name, "top_probability": float(p), "rejected": bool(r)}
                    for name, p, r in zip(photos, photo_top, photo_rejected, strict=True)
                ],
                "samples_rejected": float(photo_rejected.mean()) if photos else None,
            }
        )
        yield Log(
            f"{model.id}: threshold {threshold:.4f} rejects {by_model[-1]['noise_rejected']:.1%} of the noise "
            f"and {by_model[-1]['samples_rejected'] or 0:.1%} of the sample photos"
        )
    thresholds = [entry["threshold"] for entry in by_model]
    histograms = histograms_row(top, bins, thresholds)
    yield Frame(histograms, step=batches + 1, label=histogram_label)
    own = by_model[0]
    yield Result(
        images={
            "patterns": patterns_mosaic(list(shown.values())),
            "histogram": histogram_image(np.array(own["bins"]["counts"]), limit, own["threshold"]),
            "histograms": histograms,
        },
        arrays={
            "top_probabilities": top[0],
            "top_probabilities_by_model": np.stack(top),
            "patterns": np.concatenate(list(shown.values())).transpose(0, 2, 3, 1),
        },
        data={
            **{key: own[key] for key in ("patterns", "bins", "mean_top_probability", "threshold")},
            "draws": draws,
            "reject": params["reject"],
            **{key: own[key] for key in ("noise_rejected", "samples", "samples_rejected")},
            "models": ids,
            "by_model": by_model,
            "left_out": dict(ctx.models_left_out),
        },
    )


def histograms_row(top: list[np.ndarray], bins: int, thresholds: list[float] | None = None) -> np.ndarray:
    """Each model's histogram of its ``top`` probabilities side by side, HxWx3 uint8, on one x range (up to
    :func:`histogram_limit` of the largest of them all) and one count scale, with its threshold when given."""
    limit = histogram_limit(max(float(t.max()) for t in top))
    counts = [histogram_counts(t, bins, limit) for t in top]
    tallest = max(int(c.max()) for c in counts)
    pictures = [
        histogram_image(row, limit, None if thresholds is None else thresholds[index], tallest)
        for index, row in enumerate(counts)
    ]
    return np.concatenate(pictures, axis=1)


NOISE_PREDICTIONS = Method(
    name="noise_predictions",
    title="Noise predictions",
    topic="How easily it is fooled",
    run=run_noise_predictions,
    params=(
        Models(
            "models",
            run_model="first",
            title="Models",
            help='The models to compare, after the run\'s own: "*" every model the server has (the default), '
            "or those chosen.",
        ),
        Int(
            "draws",
            256,
            minimum=1,
            maximum=10000,
            title="Noise draws",
            help="Gaussian noise images to classify.",
        ),
        Int("batch", 32, minimum=1, maximum=256, title="Batch", help="Noise images per forward pass."),
        Int(
            "bins",
            20,
            minimum=2,
            maximum=100,
            title="Histogram bins",
            help="Equal bins from 0 to the largest top probability, rounded up.",
        ),
        Float(
            "reject",
            0.99,
            minimum=0.5,
            maximum=1.0,
            title="Noise to reject",
            help="Share of noise images the confidence threshold must reject.",
        ),
    ),
    description="Gaussian N(0.5, 0.25²) and uniform noise, stripes and a checkerboard with the model's top-5 "
    "each; the top probability over many noise draws as a histogram, the threshold that would reject 99 % of "
    "them and the share of the sample photos it would reject too. Forward passes only.",
    reference=REFERENCE,
)
