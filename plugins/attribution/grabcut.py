"""Object segmentation from a saliency map with GrabCut: the pixels the class score depends on, grown into a region.

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image Classification Models
and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034), section 3.1. The saliency map (:mod:`.saliency`)
seeds the colour models of a graph-cut segmentation (Boykov & Jolly 2001; GrabCut, Rother, Kolmogorov &
Blake 2004): the foreground model is estimated from the pixels whose saliency is above its 95 % quantile,
the background model from those below its 30 % quantile; the object is the largest connected component of
the foreground. Here OpenCV's ``cv2.grabCut`` does the segmentation: its Gaussian mixture colour models are
learned from the seed pixels alone, the first cut uses them frozen (the paper's single cut), and each
further iteration re-learns them from the current segmentation (GrabCut's refinement).

Differences from the paper: the seeds are taken from the map blurred with a Gaussian (``smoothing`` pixels;
0 is the paper's raw map), because one backward pass through a modern network gives a map speckled at the
pixel scale, whose seeds scatter like confetti; the seeds are also hard constraints (OpenCV's ``GC_FGD`` and
``GC_BGD``: they keep their label), where the paper only estimates the colour models from them. So at least
the background quantile's share of the picture is background: lower it for an object that fills the frame.
The segmentation is of the image resized to the model's input size, not of the paper's crop; components are
4-connected.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result, to_uint8
from convlens.images import to_image
from convlens.methods import Method, RunContext
from convlens.params import Bool, Float, Int

from .saliency import OVERLAY, TARGET, saliency_map
from .saliency import REFERENCE as SALIENCY_REFERENCE

REFERENCE = (
    f"{SALIENCY_REFERENCE}, section 3.1; Rother, Kolmogorov, Blake 2004, GrabCut: Interactive Foreground "
    "Extraction using Iterated Graph Cuts, SIGGRAPH"
)

FOREGROUND_SEED, BACKGROUND_SEED = 1, 2
"""Values of ``arrays["seeds"]``; 0 is a pixel left for GrabCut to decide."""
SEED_COLOURS = {FOREGROUND_SEED: (1.0, 0.65, 0.04), BACKGROUND_SEED: (0.2, 0.45, 1.0)}
OUTLINE_COLOUR = (1.0, 1.0, 0.64)
FOREGROUND_HELP = "Pixels whose saliency is above this quantile are foreground seeds."
BACKGROUND_HELP = (
    "Pixels whose saliency is below this quantile are background seeds; it must be below the foreground "
    "quantile. Lower it for an object that fills the picture."
)
SMOOTHING_HELP = "Standard deviation of the Gaussian blur of the saliency map before seeding; 0: the raw map."
ITERATIONS_HELP = "1: one cut with the seeds' colour models, as in the paper; more re-learn them each time."
LARGEST_HELP = "Keep only the largest connected region of the foreground, as in the paper."


def seed_labels(
    saliency: np.ndarray, foreground: float, background: float
) -> tuple[np.ndarray, float, float]:
    """HxW uint8: 1 where ``saliency`` >= its ``foreground`` quantile, 2 where <= its ``background`` one; both values."""
    high, low = (float(q) for q in np.quantile(saliency, [foreground, background]))
    if high <= low:
        raise BadInput(
            "image", f"the saliency map is flat between its quantiles ({low:.3g}): nothing to seed"
        )
    seeds = np.zeros(saliency.shape, np.uint8)
    seeds[saliency >= high] = FOREGROUND_SEED
    seeds[saliency <= low] = BACKGROUND_SEED
    return seeds, high, low


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected region of a 0/1 uint8 ``mask``, and how many regions there were."""
    count, regions, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if count <= 1:
        return mask, 0
    return (regions == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8), count - 1


def tint(picture: np.ndarray, where: np.ndarray, colour: tuple[float, ...], opacity: float) -> np.ndarray:
    """``picture`` (HxWx3 float32) with ``colour`` blended in at ``opacity`` where ``where`` is true."""
    shown = picture.copy()
    shown[where] = (1.0 - opacity) * shown[where] + opacity * np.array(colour, np.float32)
    return shown


def draw_segmentation(picture: np.ndarray, mask: np.ndarray, opacity: float) -> np.ndarray:
    """The background of ``picture`` dimmed by ``opacity`` and the mask's outline drawn at that opacity."""
    outline = np.zeros(mask.shape, np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outline, contours, -1, 1)
    return tint(tint(picture, mask == 0, (0.0, 0.0, 0.0), opacity), outline > 0, OUTLINE_COLOUR, opacity)


def run_grabcut(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    if params["background_quantile"] >= params["foreground_quantile"]:
        message = f"must be below the foreground quantile {params['foreground_quantile']}"
        raise BadInput("params.background_quantile", f"{message}, got {params['background_quantile']}")
    image = ctx.model_input()
    saliency, target, score = saliency_map(ctx.model, image, params["target"])
    sigma = params["smoothing"]
    seeded_by = cv2.GaussianBlur(saliency, (0, 0), sigma) if sigma > 0 else saliency
    seeds, high, low = seed_labels(seeded_by, params["foreground_quantile"], params["background_quantile"])
    picture = to_image(image)
    seeds_shown = picture
    for value, colour in SEED_COLOURS.items():
        seeds_shown = tint(seeds_shown, seeds == value, colour, params["overlay"])
    yield Frame(seeds_shown, step=0, label="seeds")

    # GrabCut's models are colour statistics, the same whatever the channel order: RGB is passed as it is.
    pixels = to_uint8(picture)
    foreground, background = pixels[seeds == FOREGROUND_SEED], pixels[seeds == BACKGROUND_SEED]
    strip = np.concatenate([foreground, background])[None]
    strip_mask = np.repeat(np.uint8([cv2.GC_FGD, cv2.GC_BGD]), [len(foreground), len(background)])[None]
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(ctx.seed)  # the colour models' k-means draws from OpenCV's per-thread generator
    # Zero iterations on a strip of the seed pixels only: the colour models from the seeds, as in the paper.
    cv2.grabCut(strip, strip_mask, None, background_model, foreground_model, 0, cv2.GC_INIT_WITH_MASK)
    labels = np.where(seeds == FOREGROUND_SEED, cv2.GC_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[seeds == BACKGROUND_SEED] = cv2.GC_BGD
    total = params["iterations"]
    for step in range(1, total + 1):
        mode = cv2.GC_EVAL_FREEZE_MODEL if step == 1 else cv2.GC_EVAL
        cv2.grabCut(pixels, labels, None, background_model, foreground_model, 1, mode)
        grabcut_mask = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        largest, components = largest_component(grabcut_mask)
        mask = largest if params["largest_component"] else grabcut_mask
        segmentation = draw_segmentation(picture, mask, params["overlay"])
        yield Frame(segmentation, step=step, label="segmentation")
        yield Progress(step, total)

    yield Result(
        images={"segmentation": segmentation, "mask": mask.astype(np.float32), "seeds": seeds_shown},
        arrays={"mask": mask, "saliency": saliency, "seeds": seeds},
        data={
            "target": target,
            "label": ctx.model.label(target),
            "score": score,
            "foreground_fraction": float(mask.mean()),
            "grabcut_foreground_fraction": float(grabcut_mask.mean()),
            "components": components,
            "foreground_threshold": high,
            "background_threshold": low,
        },
    )


GRABCUT = Method(
    name="grabcut_segmentation",
    title="Segmentation from saliency (GrabCut)",
    topic="Which pixels matter",
    run=run_grabcut,
    params=(
        TARGET,
        Float("foreground_quantile", 0.95, minimum=0.01, maximum=0.99, help=FOREGROUND_HELP),
        Float("background_quantile", 0.3, minimum=0.01, maximum=0.99, help=BACKGROUND_HELP),
        Float("smoothing", 6.0, minimum=0.0, maximum=32.0, title="Seed smoothing (px)", help=SMOOTHING_HELP),
        Int("iterations", 5, minimum=1, maximum=20, title="GrabCut iterations", help=ITERATIONS_HELP),
        Bool("largest_component", True, title="Largest region only", help=LARGEST_HELP),
        OVERLAY,
    ),
    needs=frozenset({"gradients"}),
    description="The saliency map's brightest pixels seed the foreground colour model and its darkest the "
    "background one; GrabCut segments the picture with them, and the largest foreground region is the object.",
    reference=REFERENCE,
)
