"""How a plugin declares an analysis method, and what its ``run`` receives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .events import Event
from .params import Param, validate

if TYPE_CHECKING:
    import torch

    from .datasets import Dataset
    from .features import FeatureStore
    from .models.base import Model

NEEDS = ("gradients", "layers", "relu_rules")
"""What a method can require of a model: autograd through it, access to hidden layers, and backward rules
through its rectifiers other than the gradient (``Model.forward(relu_rule=...)``)."""

ATTRIBUTION_MAP = "attribution-map"
"""Tag of a method whose result has ``arrays["attribution"]``: one relevance value per pixel of the model's
input (HxW float32, larger is more relevant, negative where the method finds counter-evidence) and which takes
a ``target`` class parameter. The comparison view runs every method so tagged on one image and class."""


@dataclass
class RunContext:
    """Everything a method's ``run`` may use. It never sees Flask or Socket.IO.

    ``image`` is the chosen picture, HxWx3 float32 in [0, 1] at its own size;
    ``params`` are validated, defaults filled in; ``pictures`` holds the pixels of each
    ``image`` parameter by its name (HxWx3 float32 in [0, 1]); ``datasets`` the
    :class:`convlens.datasets.Dataset` of each ``dataset`` parameter by its name; ``models`` the loaded models
    of each ``models`` parameter by its name, in order (the run's own ``model`` first or left out, as the
    parameter says), and ``models_left_out`` why each model ``"*"`` found could not be loaded, by id. Randomness comes from ``rng``
    (numpy) and ``generator`` (torch), both seeded from ``seed``: several jobs run
    at once in one process, so the global torch RNG is not reproducible per run.
    """

    model: Model
    image: np.ndarray
    params: dict[str, Any]
    seed: int = 0
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    features: FeatureStore | None = None
    """Where a data set's codes are computed once and kept (:mod:`convlens.features`); set by the runner."""
    models: dict[str, list[Model]] = field(default_factory=dict)
    models_left_out: dict[str, str] = field(default_factory=dict)
    device: str = ""
    """Where :meth:`model_input` puts the image: ``cpu`` or ``cuda:N``; empty means the process's device
    (:func:`convlens.devices.current`), else the CPU."""
    rng: np.random.Generator = field(init=False)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        import torch

        from .devices import current

        self.device = self.device or current() or "cpu"
        self.rng = np.random.default_rng(self.seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def model_input(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The image resized to the model's input size (or ``size``), 1x3xHxW in [0, 1], on :attr:`device`."""
        from .images import to_tensor

        tensor = to_tensor(self.image, size or self.model.input_size)
        return tensor if self.device == "cpu" else tensor.to(self.device)


@dataclass(frozen=True)
class Method:
    """An analysis a plugin offers.

    ``run(ctx)`` is a generator of :mod:`convlens.events`; the server may pause
    between two events, or close the generator to stop it. ``topic`` groups methods
    in the UI (e.g. "Which pixels matter"); ``needs`` lists what of :data:`NEEDS`
    the model must support; ``tags`` are promises about the result a view can rely
    on (:data:`ATTRIBUTION_MAP`).
    """

    name: str
    title: str
    topic: str
    run: Callable[[RunContext], Iterator[Event]]
    params: Sequence[Param] = ()
    needs: frozenset[str] = frozenset()
    description: str = ""
    reference: str = ""
    tags: frozenset[str] = frozenset()
    check: Callable[[dict[str, Any], Model], None] | None = None
    """Checks the validated parameters against the model beyond what each :class:`Param` checks alone (an
    objective naming layers, two parameters together), raising ``BadInput`` naming the field. Called when a run
    is requested, so a wrong value is refused then (a 400) rather than failing the job once it runs."""
    check_datasets: Callable[[dict[str, Any], Model, dict[str, Dataset]], None] | None = None
    """Checks the validated parameters against the data sets they chose (``ctx.datasets``: their size, say),
    raising ``BadInput`` naming the field; called once they are found, when the run is requested."""
    check_image: Callable[[dict[str, Any], Model, np.ndarray], None] | None = None
    """Checks the validated parameters against the run's picture (HxWx3, as uploaded: its size, say), raising
    ``BadInput`` naming the field; called when the run is requested, once the picture is found."""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown needs {sorted(unknown)}; expected {NEEDS}")

    def unavailable_reason(self, model: Model) -> str | None:
        """Why this method cannot run on ``model``, or ``None`` if it can."""
        missing = sorted(set(self.needs) - model.capabilities)
        if missing:
            return f"model {model.id!r} does not support {', '.join(missing)}"
        return None

    def validate(self, raw: Mapping[str, Any] | None, model: Model) -> dict[str, Any]:
        """The raw parameters checked against the declarations and ``model``, defaults filled in, then by
        :attr:`check`; ``BadInput`` names the first wrong field."""
        params = validate(self.params, raw, model)
        if self.check is not None:
            self.check(params, model)
        return params

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "topic": self.topic,
            "description": self.description,
            "reference": self.reference,
            "needs": sorted(self.needs),
            "tags": sorted(self.tags),
            "params": [p.to_json() for p in self.params],
        }
