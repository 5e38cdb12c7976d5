"""What the model says about pictures of nothing: noise, stripes and checkerboards, and how sure it is.

Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled", CVPR 2015 (arXiv:1412.1897): a network
gives high confidence to images a person sees as nothing. This method shows the plain baseline of that claim.
Four patterns at the model's input size (Gaussian noise N(0.5, 0.25²) clipped to [0, 1], uniform noise,
stripes, a checkerboard) with the model's top-5 each; then ``draws`` Gaussian noise images through the model,
forward only, a histogram of the top softmax probability, the threshold that would reject ``reject`` (0.99)
of them (their ``reject`` quantile; an image is rejected when its top probability is at or below it), and
the share of the installed sample photos that the same threshold rejects.

Differences from the paper: the paper evolves images to fool the net; here the noise is
plain, to show the base rate of confidence on meaningless input. Only the chosen model runs (a method sees
one model), not every loaded one. The stripes (horizontal) and checkerboard are black and white with a
period of an eighth of the input's height; only the two noises draw from the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.images import to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Float, Int

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    "Nguyen, Yosinski, Clune 2015, Deep Neural Networks are Easily Fooled: High Confidence Predictions for "
    "Unrecognizable Images, arXiv:1412.1897"
)
NOISE_MEAN = 0.5
NOISE_STD = 0.25
PATTERNS = ("gaussian", "uniform", "stripes", "checkerboard")
HISTOGRAM_SIZE = (160, 320)
"""Height and width of the drawn histogram, in pixels."""


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of NxK logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(model: Model, probabilities: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one row of probabilities: index, label, probability."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"index": int(i), "label": model.label(int(i)), "probability": float(probabilities[i])} for i in order
    ]


def rejection_threshold(top_probabilities: np.ndarray, reject: float) -> float:
    """The top probability at or below which ``reject`` of the noise images lie: their ``reject`` quantile."""
    return float(np.quantile(top_probabilities, reject))


def histogram_image(counts: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """``counts`` (equal bins over [0, 1]) as bars, HxWx3 uint8; the threshold as a red line when given."""
    height, width = HISTOGRAM_SIZE
    picture = np.full((height, width, 3), 255, dtype=np.uint8)
    bins = len(counts)
    tallest = max(int(counts.max()), 1)
    edges = np.linspace(0, width, bins + 1).astype(int)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        bar = round((height - 4) * int(count) / tallest)
        if bar:
            picture[height - bar :, left : max(left + 1, right - 1)] = (70, 90, 140)
    if threshold is not None:
        x = min(int(threshold * width), width - 1)
        picture[:, max(x - 1, 0) : x + 1] = (220, 40, 40)
    return picture


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


def run_noise_predictions(ctx: RunContext) -> Iterator[Event]:
    model, params = ctx.model, ctx.params
    size = tuple(model.input_size)
    k = min(5, len(model.labels) or 5)

    shown = patterns(ctx.rng, size)
    yield Frame(patterns_mosaic(list(shown.values())), step=0, label="patterns")
    pattern_probabilities = softmax(model.logits(np.concatenate(list(shown.values()))))
    pattern_top = {name: top_k(model, row, k) for name, row in zip(shown, pattern_probabilities, strict=True)}

    draws, batch, bins = params["draws"], params["batch"], params["bins"]
    batches = -(-draws // batch)
    top = np.empty(0, dtype=np.float64)
    counts = np.zeros(bins, dtype=np.int64)
    yield Progress(0, batches)
    for index in range(batches):
        count = min(batch, draws - index * batch)
        probabilities = softmax(model.logits(gaussian_noise(ctx.rng, count, size), batch_size=batch))
        batch_top = probabilities.max(axis=1)
        top = np.concatenate([top, batch_top])
        counts += np.histogram(batch_top, bins=bins, range=(0.0, 1.0))[0]
        yield Frame(histogram_image(counts), step=index + 1, label="histogram")
        yield Metrics({"mean_top_probability": float(top.mean())}, step=index + 1)
        yield Progress(index + 1, batches)

    threshold = rejection_threshold(top, params["reject"])
    photos = sample_photos(size)
    photo_top = (
        softmax(model.logits(np.concatenate(list(photos.values())))).max(axis=1) if photos else np.empty(0)
    )
    photo_rejected = photo_top <= threshold
    histogram = histogram_image(counts, threshold)
    yield Frame(histogram, step=batches + 1, label="histogram")
    yield Result(
        images={"patterns": patterns_mosaic(list(shown.values())), "histogram": histogram},
        arrays={
            "top_probabilities": top,
            "patterns": np.concatenate(list(shown.values())).transpose(0, 2, 3, 1),
        },
        data={
            "patterns": pattern_top,
            "draws": draws,
            "bins": {"edges": np.linspace(0.0, 1.0, bins + 1).tolist(), "counts": counts.tolist()},
            "mean_top_probability": float(top.mean()),
            "reject": params["reject"],
            "threshold": threshold,
            "noise_rejected": float(np.mean(top <= threshold)),
            "samples": [
                {"id": name, "top_probability": float(p), "rejected": bool(r)}
                for name, p, r in zip(photos, photo_top, photo_rejected, strict=True)
            ],
            "samples_rejected": float(photo_rejected.mean()) if photos else None,
            "models": [model.id],
        },
    )


NOISE_PREDICTIONS = Method(
    name="noise_predictions",
    title="Noise predictions",
    topic="How easily it is fooled",
    run=run_noise_predictions,
    params=(
        Int(
            "draws",
            256,
            minimum=1,
            maximum=10000,
            title="Noise draws",
            help="Gaussian noise images to classify.",
        ),
        Int("batch", 32, minimum=1, maximum=256, title="Batch", help="Noise images per forward pass."),
        Int("bins", 20, minimum=2, maximum=100, title="Histogram bins", help="Equal bins over [0, 1]."),
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
