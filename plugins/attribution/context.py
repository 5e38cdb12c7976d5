"""Context: the picture's subject pasted onto other backgrounds, and how much the class rests on the background.

After the lectures' cow on a beach: a classifier that learned "cow" from cows on grass may call a cow on sand
something else (Beery, Van Horn & Perona, "Recognition in Terra Incognita", ECCV 2018, arXiv:1807.04975). The
subject is cut out of the picture, by default with :mod:`.grabcut` (Simonyan et al.'s saliency-seeded GrabCut,
run as that method runs), or with OpenCV's GrabCut from the user's rectangle (Rother, Kolmogorov & Blake 2004,
``GC_INIT_WITH_RECT``, five iterations). Its mask, feathered by a Gaussian of ``feather`` pixels, pastes the
subject at the same place onto each background: scikit-image's grass, brick and gravel textures, plain colours,
another photo, or the picture itself blurred. The model's top 5 is shown for each, and the original class's
probability and rank (1 is the top) on each.

The background alone is then occluded (Zeiler & Fergus 2014, :mod:`.occlusion`'s windows, fill and map): the
window's fill replaces only pixels outside the subject's mask, so the subject is never hidden, and the map is
kept only over the background. ``data["background_fraction"]`` is the share of the whole occlusion effect
found in the background: the background-only map's positive drops summed over the background, over the
ordinary occlusion map's positive drops summed over the whole picture (both runs use the same windows).

Everything is at the model's input size; a rectangle is given in the picture's own pixels and scaled to it. The
background-only occlusion keeps the subject by its hard mask (not the feathered one), and still runs the windows
that lie wholly on the subject: they hide nothing and give 0, and :func:`.occlusion.occlusion`'s loop stays whole.
The ``blurred`` background is the whole picture blurred, so the subject's colours bleed into it near its edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from convlens.colormaps import overlay
from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Predictions, Progress, Result, to_uint8
from convlens.images import resize
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Int, Param, Picture

from .grabcut import GRABCUT, run_grabcut
from .occlusion import (
    FILLS,
    WindowSide,
    attribution_map,
    check_geometry,
    fill_values,
    occlusion,
    progress_frame,
    window_starts,
)
from .occlusion import REFERENCE as OCCLUSION_REFERENCE
from .occlusion import softmax as softmax_rows
from .saliency import OVERLAY, TARGET

if TYPE_CHECKING:
    from convlens.models.base import Model

REFERENCE = (
    f"Beery, Van Horn, Perona 2018, Recognition in Terra Incognita, ECCV, arXiv:1807.04975; {OCCLUSION_REFERENCE}; "
    "Rother, Kolmogorov, Blake 2004, GrabCut, SIGGRAPH"
)
TEXTURES = ("grass", "brick", "gravel")
"""scikit-image's grey 512x512 texture photos (``skimage.data``), repeated to RGB."""
COLOURS = {
    "grey": (0.5, 0.5, 0.5),
    "white": (1.0, 1.0, 1.0),
    "green": (0.25, 0.55, 0.2),
    "blue": (0.25, 0.45, 0.85),
}
PHOTO, BLURRED = "photo", "blurred"
BACKGROUNDS = (*TEXTURES, *COLOURS, PHOTO, BLURRED)
DEFAULT_BACKGROUNDS = "grass,brick,gravel,grey,green,blue,photo,blurred"
BLUR_SIGMA = 8.0
"""The ``blurred`` background: the picture under a Gaussian of this many input pixels (shapes gone, colours kept)."""
RECT_ITERATIONS = 5
TOP = 5
ORIGINAL = "original"


def parse_rectangle(text: str | None) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` as four integers (``None`` for an empty text); ``BadInput`` naming ``params.rectangle``."""
    if text is None or not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(part.isascii() and part.isdigit() and len(part) <= 6 for part in parts):
        raise BadInput("params.rectangle", f"expected x,y,width,height in pixels, got {text!r:.80}")
    x, y, width, height = (int(part) for part in parts)
    if width < 1 or height < 1:
        raise BadInput("params.rectangle", f"the rectangle is empty ({width}x{height} pixels)")
    return x, y, width, height


def parse_backgrounds(text: str) -> list[str]:
    """The comma-separated background names, each known and given once; ``BadInput`` naming ``params.backgrounds``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise BadInput("params.backgrounds", f"name at least one of {list(BACKGROUNDS)}")
    for name in names:
        if name not in BACKGROUNDS:
            raise BadInput(
                "params.backgrounds", f"unknown background {name!r:.40}; expected {list(BACKGROUNDS)}"
            )
    if len(set(names)) < len(names):
        raise BadInput("params.backgrounds", "a background is named twice")
    return names


def check_params(params: dict[str, Any], model: Model) -> None:
    parse_rectangle(params["rectangle"])
    parse_backgrounds(params["backgrounds"])
    check_geometry(model.input_size, params["window"], params["stride"])


def check_rectangle(params: dict[str, Any], model: Model, image: np.ndarray) -> None:
    """A rectangle that leaves the run's picture or covers all of it is refused when the run is requested."""
    rectangle = parse_rectangle(params["rectangle"])
    if rectangle is not None:
        input_rectangle(rectangle, image.shape[:2], model.input_size)


def input_rectangle(
    rectangle: tuple[int, int, int, int], picture: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The rectangle in the picture's (H, W) pixels scaled to the model input's ``size``; ``BadInput`` when it
    leaves the picture or covers all of it (GrabCut learns the background from outside the rectangle)."""
    x, y, width, height = rectangle
    if x + width > picture[1] or y + height > picture[0]:
        raise BadInput(
            "params.rectangle",
            f"{x},{y},{width},{height} goes outside the {picture[1]}x{picture[0]}-pixel picture",
        )
    sy, sx = size[0] / picture[0], size[1] / picture[1]
    left, top = min(round(x * sx), size[1] - 1), min(round(y * sy), size[0] - 1)
    right = min(max(left + 1, round((x + width) * sx)), size[1])
    bottom = min(max(top + 1, round((y + height) * sy)), size[0])
    if left == 0 and top == 0 and right >= size[1] and bottom >= size[0]:
        raise BadInput(
            "params.rectangle", "the rectangle covers the whole picture: no background to learn from"
        )
    return left, top, right - left, bottom - top


def rectangle_mask(pixels: np.ndarray, rectangle: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """HxW uint8, 1 on the subject: OpenCV's GrabCut of HxWx3 uint8 ``pixels`` from ``rectangle`` (x, y, w, h)."""
    labels = np.zeros(pixels.shape[:2], np.uint8)
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(seed)  # the colour models' k-means draws from OpenCV's per-thread generator
    cv2.grabCut(
        pixels, labels, rectangle, background_model, foreground_model, RECT_ITERATIONS, cv2.GC_INIT_WITH_RECT
    )
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def saliency_cutout(ctx: RunContext) -> Iterator[Frame | np.ndarray]:
    """The grabcut method's own run on the picture (its defaults, this run's class): its frames, then its mask."""
    params = GRABCUT.validate({"target": ctx.params["target"], "overlay": ctx.params["overlay"]}, ctx.model)
    inner = RunContext(model=ctx.model, image=ctx.image, params=params, seed=ctx.seed)
    for event in run_grabcut(inner):
        if isinstance(event, Frame):
            yield event
        elif isinstance(event, Result):
            yield event.arrays["mask"]


def feathered(mask: np.ndarray, feather: float) -> np.ndarray:
    """The 0/1 mask as float32 alpha, blurred by a Gaussian of ``feather`` pixels (edges mirrored) for a soft edge."""
    alpha = mask.astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), feather) if feather > 0 else alpha


def grey_to_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]


def background(name: str, picture: np.ndarray, photo: np.ndarray | None) -> np.ndarray:
    """The background ``name`` at the HxWx3 float32 ``picture``'s size."""
    size = picture.shape[:2]
    if name in TEXTURES:
        from skimage import data

        return resize(grey_to_rgb(getattr(data, name)()), size)
    if name in COLOURS:
        return np.broadcast_to(np.asarray(COLOURS[name], np.float32), picture.shape).copy()
    if name == PHOTO:
        return resize(photo, size)
    if name == BLURRED:
        return cv2.GaussianBlur(picture, (0, 0), BLUR_SIGMA)
    raise ValueError(f"unknown background {name!r}")


def composite(picture: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """The subject (``alpha``'s weight of ``picture``) over ``backdrop``, HxWx3 float32."""
    weight = alpha[:, :, None]
    return (weight * picture + (1.0 - weight) * backdrop).astype(np.float32)


def top_classes(model: Model, probabilities: np.ndarray, k: int = TOP) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"class": int(i), "label": model.label(int(i)), "probability": float(probabilities[i])} for i in order
    ]


def probabilities_of(model: Model, picture: np.ndarray) -> np.ndarray:
    """Softmax probabilities (K, float64) of one HxWx3 picture at the model's input size."""
    return softmax_rows(model.logits(picture.transpose(2, 0, 1)[None], batch_size=1))[0]


def rank_of(probabilities: np.ndarray, target: int) -> int:
    """1 for the top class: how many classes are at least as probable as ``target``, ties counted ahead."""
    return int((probabilities > probabilities[target]).sum()) + 1


def strip(pictures: list[np.ndarray], count: int) -> np.ndarray:
    """``pictures`` side by side, ``count`` wide, mid grey where none yet."""
    empty = np.full_like(pictures[0], 0.5)
    return np.concatenate(pictures + [empty] * (count - len(pictures)), axis=1)


def positions(size: tuple[int, int], window: int, stride: int) -> int:
    """How many windows one occlusion of a picture of ``size`` slides."""
    return len(window_starts(size[0], window, stride)) * len(window_starts(size[1], window, stride))


def background_only_fill(pixels: np.ndarray, subject: np.ndarray, fill: str, window: int) -> np.ndarray:
    """3xHxW: what a window shows in the background-only occlusion, ``fill`` outside the subject, the picture on it."""
    values = np.broadcast_to(fill_values(pixels, fill, window), pixels.shape)
    return np.where(subject[None] > 0, pixels, values).astype(np.float32)


def run_occlusions(
    ctx: RunContext, pixels: np.ndarray, subject: np.ndarray, target: int, done: int
) -> Iterator[Event | tuple[np.ndarray, dict]]:
    """The ordinary occlusion, then the background-only one: frames and progress (after ``done`` steps of the
    run), then each one's final map and state."""
    params, picture = ctx.params, pixels.transpose(1, 2, 0)
    fills = {
        "occlusion": params["fill"],
        "background occlusion": background_only_fill(pixels, subject, params["fill"], params["window"]),
    }
    total = done + 2 * positions(pixels.shape[1:], params["window"], params["stride"])
    for label, fill in fills.items():
        state: dict = {}
        for step, state in enumerate(
            occlusion(ctx.model, pixels, target, params["window"], params["stride"], fill)
        ):
            yield Frame(progress_frame(picture, state, params["overlay"]), step, label)
            yield Progress(done + state["positions_done"], total)
        done += state["positions"]
        yield attribution_map(state)[0], state


def run_context(ctx: RunContext) -> Iterator[Event]:
    params, model = ctx.params, ctx.model
    names = parse_backgrounds(params["backgrounds"])
    rectangle = parse_rectangle(params["rectangle"])
    picture = resize(ctx.image, model.input_size)
    if rectangle is None:
        for item in saliency_cutout(ctx):
            if isinstance(item, Frame):
                yield item
            else:
                mask = item.astype(np.uint8)
        field = "image"
    else:
        scaled = input_rectangle(rectangle, ctx.image.shape[:2], model.input_size)
        mask = rectangle_mask(to_uint8(picture), scaled, ctx.seed)
        field = "params.rectangle"
    if not mask.any() or mask.all():
        covered = "nothing" if not mask.any() else "the whole picture"
        raise BadInput(field, f"the subject's mask covers {covered}: no subject to move onto a background")
    alpha = feathered(mask, params["feather"])

    original = probabilities_of(model, picture)
    target = int(original.argmax()) if params["target"] is None else params["target"]
    shown = [picture]
    label = " | ".join([ORIGINAL, *names])
    yield Frame(strip(shown, len(names) + 1), step=0, label=label)
    yield Predictions({ORIGINAL: top_classes(model, original)}, step=0)
    composites, rows = [], []
    for step, name in enumerate(names, start=1):
        pasted = composite(picture, alpha, background(name, picture, ctx.pictures.get("photo")))
        probabilities = probabilities_of(model, pasted)
        top = top_classes(model, probabilities)
        composites.append(pasted)
        shown.append(pasted)
        yield Frame(strip(shown, len(names) + 1), step=step, label=label)
        yield Predictions({name: top}, step=step)
        # A log line sends at once: each composite reaches the viewers, not only the newest when the occlusion
        # frames follow (the job's outbox keeps one frame).
        yield Log(
            f"on {name}: {model.label(target)} {probabilities[target]:.1%}, top class {top[0]['label']}"
        )
        yield Progress(step, len(names) + 2 * positions(model.input_size, params["window"], params["stride"]))
        rows.append(
            {
                "background": name,
                "top5": top,
                "probability": float(probabilities[target]),
                "rank": rank_of(probabilities, target),
                "top1": top[0]["class"],
                "top1_label": top[0]["label"],
            }
        )

    pixels = np.ascontiguousarray(picture.transpose(2, 0, 1))
    maps = []
    for item in run_occlusions(ctx, pixels, mask, target, len(names)):
        if isinstance(item, tuple):
            maps.append(item)
        else:
            yield item
    (whole, state), (background_alone, _) = maps
    background_map = np.where(mask > 0, 0.0, background_alone).astype(np.float32)
    total = float(np.clip(whole, 0.0, None).sum())
    in_background = float(np.clip(background_map, 0.0, None).sum())
    scale = max(float(whole.max()), 1e-12)  # both maps on the ordinary one's scale, so they compare

    yield Result(
        images={
            "composites": strip(shown, len(shown)),
            "mask": mask.astype(np.float32),
            "background_occlusion": overlay(
                picture, np.clip(background_map / scale, 0.0, 1.0), params["overlay"]
            ),
            "occlusion": overlay(picture, np.clip(whole / scale, 0.0, 1.0), params["overlay"]),
        },
        arrays={
            "mask": mask,
            "alpha": alpha,
            "composites": np.stack(composites),
            "background_occlusion": background_map,
            "occlusion": whole,
        },
        data={
            "target": target,
            "label": model.label(target),
            "cutout": "saliency_grabcut" if rectangle is None else "rectangle",
            "subject_fraction": float(mask.mean()),
            "original": {
                "top5": top_classes(model, original),
                "probability": float(original[target]),
                "rank": rank_of(original, target),
            },
            "backgrounds": rows,
            "background_fraction": in_background / total if total > 0 else 0.0,
            "occlusion_effect": total,
            "background_occlusion_effect": in_background,
            "base_probability": state["base_probability"],
            "positions": state["positions"],
            "engine": state["engine"],
        },
    )


CONTEXT = Method(
    name="context",
    title="Context: the subject on other backgrounds",
    topic="Which pixels matter",
    run=run_context,
    params=(
        TARGET,
        Param(
            "backgrounds",
            "string",
            DEFAULT_BACKGROUNDS,
            title="Backgrounds",
            help=f"Comma-separated, from {', '.join(BACKGROUNDS)} (photo: the photo below; blurred: the "
            "picture itself blurred).",
        ),
        Picture("photo", "rocket", title="Other photo", help="The photo the 'photo' background is."),
        Param(
            "rectangle",
            "string",
            "",
            title="Subject rectangle",
            help="x,y,width,height in the picture's pixels: GrabCut from this rectangle; empty: the subject "
            "is segmented from the saliency map (GrabCut seeded by saliency).",
        ),
        Float("feather", 2.0, minimum=0.0, maximum=16.0, title="Feather (px)", help="Soft edge of the mask."),
        WindowSide(
            "window", "int", 32, minimum=1, title="Occlusion window (px)", help="Side of the hiding square."
        ),
        Int(
            "stride",
            32,
            minimum=1,
            title="Occlusion stride (px)",
            help="Step between positions; at most the window.",
        ),
        Choice(
            "fill", "grey", FILLS, title="Occlusion fill", help="What the square shows on the background."
        ),
        OVERLAY,
    ),
    needs=frozenset({"gradients"}),
    check=check_params,
    check_image=check_rectangle,
    description="Cut the subject out of the picture (saliency-seeded GrabCut, or GrabCut from a rectangle), paste "
    "it onto other backgrounds and show the top 5 on each; then occlude the background alone and report how "
    "much of the occlusion effect lies in the background.",
    reference=REFERENCE,
)
