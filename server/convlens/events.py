"""What a running method yields: frames, progress, metrics, log lines and its result.

A method's ``run`` is a generator of these events. The server turns each into a
Socket.IO message for the job's room; the CLI writes frames and the result to disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from .trained import TrainedModel


@dataclass
class Frame:
    """An image to show now: ``image`` is HxWx3 (or HxW) uint8 or float in [0, 1], or an image tensor.

    A tensor (1x3xHxW or 3xHxW, float in [0, 1]) is made into pixels only when the frame is shown or
    written, so a run that yields one at every step pays for the pixels of the frames a viewer gets, not of
    all of them. It must be the method's own copy (``image.detach().clone()``): one the method changes
    afterwards shows the later picture.
    """

    image: np.ndarray | torch.Tensor
    step: int | None = None
    label: str = "main"

    def __post_init__(self) -> None:
        # Checked where the plugin yields it, so a wrong frame fails the job with what was wrong, not with a
        # numpy error when the frame is made into pixels later on another thread.
        check_frame_image(self.image)

    def pixels(self) -> np.ndarray:
        """The frame as HxWx3 uint8."""
        return pixels_of(self.image)


@dataclass
class Progress:
    """``step`` of ``total`` steps are done."""

    step: int
    total: int


@dataclass
class Metrics:
    """Named numbers at a step, drawn as live charts (loss, class score, ...)."""

    values: dict[str, float]
    step: int | None = None


@dataclass
class Log:
    """A line of text for the job's log."""

    message: str
    level: str = "info"


@dataclass
class Points:
    """Where N things lie now, e.g. an embedding's points while it is optimised: ``positions`` is N x 2.

    Kept as the method's positions at the time it yields them (a float32 copy), so it may go on moving its own.
    Viewers get the newest of each ``label`` at the jobs' pace, like frames.
    """

    positions: np.ndarray
    step: int | None = None
    label: str = "main"

    def __post_init__(self) -> None:
        # Checked where the plugin yields it, so a wrong array fails the job with what was wrong.
        self.positions = points_array(self.positions)


@dataclass
class Predictions:
    """What the model says now about the pictures a frame shows: the top classes of each, by panel name.

    ``tops`` maps a panel's name (e.g. ``"original"``, ``"adversarial"``) to its most probable classes, best
    first, each ``{"class": int, "label": str, "probability": float}``. Viewers get the newest list of each panel
    at the job's pace, like frames, and show each list by the panel it names (a frame labelled
    ``"original | adversarial"`` shows two panels, each with the list named after it); an event need name only
    the panels whose lists changed (see :class:`PanelTops`). Kept as plain Python numbers copied when yielded (numpy or
    torch scalars are welcome), so the method may go on changing its own lists.
    """

    tops: dict[str, list[dict[str, Any]]]
    step: int | None = None

    def __post_init__(self) -> None:
        # Checked where the plugin yields it, so a wrong list fails the job with what was wrong, not a viewer's
        # socket with a JSON error later on another thread.
        self.tops = tops_of(self.tops)


@dataclass
class Result:
    """The method's final output: named images, raw arrays (saved as ``.npy``) and JSON-serialisable data.

    A method may yield one before its end too, as a checkpoint: the last one yielded is the run's result, so a job
    stopped after one ends ``done`` with it (Deep Image Prior's best picture so far), not ``stopped`` with none.

    ``models``: networks the method trained, by name, saved with the result as model files every method can run
    on (:mod:`convlens.trained`); ``result.json``'s ``models`` lists their ids.
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, TrainedModel] = field(default_factory=dict)


Event = Frame | Points | Predictions | Progress | Metrics | Log | Result


def check_frame_image(image: object) -> None:
    """``TypeError`` or ``ValueError`` saying what is wrong unless ``image`` is what a :class:`Frame` shows: an
    HxW, HxWx3 or HxWx4 array, uint8 or float (or bool), or a float 1x3xHxW or 3xHxW tensor."""
    if hasattr(image, "detach") and hasattr(image, "is_floating_point"):
        shape = tuple(image.shape)
        if not image.is_floating_point():
            raise TypeError(f"a Frame's tensor must be float in [0, 1], got {image.dtype}")
        if not ((len(shape) == 3 and shape[0] == 3) or (len(shape) == 4 and shape[:2] == (1, 3))):
            raise ValueError(f"a Frame's tensor must be 1x3xHxW or 3xHxW, got shape {list(shape)}")
        if 0 in shape:
            raise ValueError(f"a Frame's image is empty: shape {list(shape)}")
        return
    if isinstance(image, str | bytes) or image is None:
        raise TypeError(f"a Frame's image must be an array or an image tensor, got {type(image).__name__}")
    array = image if isinstance(image, np.ndarray) else np.asarray(image)
    if array.dtype != np.uint8 and array.dtype.kind not in "fb":
        raise TypeError(
            f"a Frame's image must be uint8 (0-255) or float in [0, 1], got dtype {array.dtype}"
            f" (from {type(image).__name__})"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"a Frame's image must be HxW, HxWx3 or HxWx4, got shape {list(array.shape)}")
    if array.size == 0:
        raise ValueError(f"a Frame's image is empty: shape {list(array.shape)}")


def points_array(positions: object) -> np.ndarray:
    """``positions`` as a C-order little-endian float32 N x 2 copy; ``TypeError`` or ``ValueError`` saying what is
    wrong unless it is a non-empty N x 2 array of finite real numbers (an array, a list, or a CPU tensor)."""
    if isinstance(positions, str | bytes | dict) or positions is None:
        raise TypeError(f"a Points' positions must be an N x 2 array, got {type(positions).__name__}")
    if hasattr(positions, "detach"):
        positions = positions.detach().cpu().numpy()
    array = np.asarray(positions)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"a Points' positions must be real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"a Points' positions must be N x 2 with N >= 1, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"a Points' positions must be finite; {int((~np.isfinite(array)).sum())} are not")
    return np.array(array, dtype="<f4", order="C")


def tops_of(tops: object) -> dict[str, list[dict[str, Any]]]:
    """``tops`` of a :class:`Predictions` as plain JSON-ready copies; ``TypeError`` or ``ValueError`` saying what is
    wrong unless it maps panel names (strings) to lists of ``{"class", "label", "probability"}`` with an integer
    class, a string label and a probability in [0, 1]."""
    if not isinstance(tops, dict):
        raise TypeError(f"a Predictions' tops must map panel names to lists, got {type(tops).__name__}")
    plain: dict[str, list[dict[str, Any]]] = {}
    for panel, entries in tops.items():
        if not isinstance(panel, str):
            raise TypeError(f"a Predictions' panel names must be strings, got {panel!r}")
        if not isinstance(entries, list | tuple):
            raise TypeError(f"tops[{panel!r}] must be a list of classes, got {type(entries).__name__}")
        plain[panel] = [_top_entry(panel, rank, entry) for rank, entry in enumerate(entries)]
    return plain


PANEL_SEPARATOR = " | "
"""Between the panel names of a frame's label: one labelled ``"original | adversarial"`` shows two pictures of
equal width side by side, each with the top classes a :class:`Predictions` names after it."""


def panel_names(label: str) -> list[str]:
    """The names of the panels a frame labelled ``label`` shows (the label itself for a frame of one picture)."""
    return [name.strip() for name in label.split(PANEL_SEPARATOR)]


class PanelTops:
    """The newest top classes of each panel over a run's :class:`Predictions`: a later event's panels replace the
    lists of the same names, the other panels keep theirs (a method that shows its panels one frame at a time
    names only that frame's). Panels stay in the order they first appeared; each keeps the step it was named at.
    """

    def __init__(self) -> None:
        self._panels: dict[str, tuple[int | None, list[dict[str, Any]]]] = {}
        self.step: int | None = None
        """The step of the newest event added."""

    def __bool__(self) -> bool:
        return bool(self._panels)

    def add(self, predictions: Predictions) -> None:
        for panel, top in predictions.tops.items():
            self._panels[panel] = (predictions.step, top)
        self.step = predictions.step

    def events(self, panels: Iterable[str] | None = None) -> list[Predictions]:
        """The newest lists of ``panels`` (all by default; names without a list are left out) as events, one per
        step, in the order the panels first appeared."""
        kept = dict(self._panels)  # a copy: another thread may add meanwhile
        wanted = set(kept if panels is None else panels)
        by_step: dict[int | None, dict[str, list[dict[str, Any]]]] = {}
        for name, (step, top) in kept.items():
            if name in wanted:
                by_step.setdefault(step, {})[name] = top
        return [Predictions(tops, step=step) for step, tops in by_step.items()]

    def tops(self) -> dict[str, list[dict[str, Any]]]:
        """Every panel's newest list, by name."""
        return {name: top for name, (_, top) in dict(self._panels).items()}


def panel_predictions(tops: PanelTops) -> dict[str, Any] | None:
    """What ``result.json`` keeps of a run's :class:`Predictions`: ``{"step", "tops"}`` with the newest event's
    step and every panel's newest list, or ``None`` if it yielded none."""
    return {"step": tops.step, "tops": tops.tops()} if tops else None


def _top_entry(panel: str, rank: int, entry: object) -> dict[str, Any]:
    where = f"tops[{panel!r}][{rank}]"
    if not isinstance(entry, dict) or not {"class", "label", "probability"} <= entry.keys():
        raise ValueError(
            f"{where} must be {{'class': int, 'label': str, 'probability': float}}, got {entry!r}"
        )
    index, label, probability = entry["class"], entry["label"], entry["probability"]
    if isinstance(index, bool) or not hasattr(index, "__index__"):
        raise TypeError(f"{where}['class'] must be an integer, got {index!r}")
    if not isinstance(label, str):
        raise TypeError(f"{where}['label'] must be a string, got {label!r}")
    try:
        probability = float(probability)
    except (TypeError, ValueError):
        raise TypeError(f"{where}['probability'] must be a number, got {probability!r}") from None
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{where}['probability'] must be in [0, 1], got {probability!r}")
    return {"class": int(index.__index__()), "label": label, "probability": probability}


def pixels_of(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 of a frame's image: an array through :func:`to_uint8`, a tensor through ``images.to_pixels``."""
    if hasattr(image, "detach"):
        from .images import to_pixels

        return to_pixels(image)
    return to_uint8(image)


def held(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """What a consumer may keep of a frame's image past the method's next step.

    A tensor as it is (a frame's tensor is the method's own copy); an array as uint8 pixels, copied when
    they are the method's own array, which it may draw its next frame into.
    """
    if hasattr(image, "detach"):
        return image
    pixels = to_uint8(image)
    if np.may_share_memory(pixels, image):
        pixels = pixels.copy()
    return pixels


def to_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from a uint8 array or a float array in [0, 1] (HxW becomes grey RGB)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])
