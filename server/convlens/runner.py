"""How a method is run, in one place for the job runner, the CLI and the test fixtures.

``prepare_run`` checks that the method can run on the model, validates the raw
parameters against the model and builds the :class:`RunContext`; ``iterate`` seeds
the random generators and yields the method's events. The server may stop between
two events by closing the iterator, which closes the method's generator too.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import BadInput
from .events import Frame, Log, Metrics, Points, Predictions, Progress, Result
from .methods import Method, RunContext
from .params import EVERY_MODEL
from .plugin_info import traced_run, tracing_requested

if TYPE_CHECKING:
    from .datasets import Dataset
    from .events import Event
    from .features import FeatureStore
    from .models.base import Model
    from .models.store import ModelStore

EVENT_TYPES = (Frame, Points, Predictions, Progress, Metrics, Log, Result)


def check_available(method: Method, model: Model) -> None:
    """``BadInput("model", why)`` with status 422 when ``model`` lacks what ``method`` needs."""
    reason = method.unavailable_reason(model)
    if reason:
        raise BadInput("model", f"{method.name}: {reason}", status=422)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators.

    For methods that draw from the globals; with several jobs in one process only the context's own
    ``ctx.rng`` and ``ctx.generator`` make a run reproducible.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


ImageSource = Callable[[str], np.ndarray]
"""Pixels (HxWx3 uint8) of an image id; raises :class:`BadInput` (``NotFound``) for an unknown one."""

DatasetSource = Callable[[str], "Dataset"]
"""The data set of an id; raises :class:`BadInput` (``NotFound``) for an unknown one."""


class ModelSource(Protocol):
    """The models a ``models`` parameter can name (:class:`convlens.models.store.ModelStore` is one)."""

    def ids(self) -> list[str]:
        """The ids of every model there now, as ``GET /api/models`` lists them."""
        ...

    def get(self, model_id: str) -> Model:
        """The loaded model of an id; :class:`BadInput` for an unknown id or a file that cannot be loaded."""
        ...


def prepare_run(
    method: Method,
    model: Model,
    image: np.ndarray,
    raw_params: Mapping[str, Any] | None,
    seed: int = 0,
    images: ImageSource | None = None,
    datasets: DatasetSource | None = None,
    features: FeatureStore | None = None,
    models: ModelSource | None = None,
) -> RunContext:
    """The context ``method.run`` receives: parameters validated against ``model``, ``image`` as float32 in [0, 1].

    ``images`` resolves ``image`` parameters (default: the installed plugins' sample images), ``datasets`` the
    ``dataset`` parameters (default: the installed plugins' data sets); ``features`` is the feature store their
    codes are kept in (default: the one in convlens' data folder, :func:`default_feature_store`); ``models`` the
    ``models`` parameters (default: the model files in ``Config``'s folders, :func:`stored_models_only`). Raises
    :class:`BadInput` naming the model (status 422) or ``params.<name>``. Also seeds the global
    generators; :func:`iterate` seeds them again just before the method starts, since a job may wait
    between the two.
    """
    from .images import to_float

    check_available(method, model)
    params = method.validate(raw_params, model)
    if method.check_image is not None:
        method.check_image(params, model, image)
    pictures = {name: to_float(picture) for name, picture in resolve_pictures(method, params, images).items()}
    chosen = checked_datasets(method, params, model, datasets)
    if chosen and features is None:
        features = default_feature_store()
    loaded, left_out = resolve_models(method, params, model, models)
    seed_everything(seed)
    return RunContext(
        model=model,
        image=to_float(image),
        params=params,
        seed=seed,
        pictures=pictures,
        datasets=chosen,
        features=features,
        models=loaded,
        models_left_out=left_out,
    )


def default_feature_store() -> FeatureStore:
    """The feature store in convlens' data folder (``Config().features_dir``)."""
    from .config import Config

    return feature_store(Config().features_dir)


@functools.cache
def feature_store(root: Path) -> FeatureStore:
    """The one store of this process under ``root``: its locks keep two jobs from computing the same codes."""
    from .features import FeatureStore

    return FeatureStore(root)


def resolve_pictures(
    method: Method, params: Mapping[str, Any], images: ImageSource | None = None
) -> dict[str, np.ndarray]:
    """The pixels of every ``image`` parameter that has a value; an unknown id is ``BadInput`` naming it."""
    return _resolve(method, params, "image", lambda: images or samples_only())


def samples_only() -> ImageSource:
    """The installed plugins' sample images, for runs outside a server (tests, notebooks)."""
    from .image_library import ImageLibrary
    from .plugins import get_plugin_manager, sample_images

    return ImageLibrary(sample_images(get_plugin_manager())).get


def resolve_datasets(
    method: Method, params: Mapping[str, Any], datasets: DatasetSource | None = None
) -> dict[str, Dataset]:
    """The data set of every ``dataset`` parameter that has a value; an unknown id is ``BadInput`` naming it."""
    return _resolve(method, params, "dataset", lambda: datasets or registered_datasets_only())


def checked_datasets(
    method: Method, params: Mapping[str, Any], model: Model, datasets: DatasetSource | None = None
) -> dict[str, Dataset]:
    """:func:`resolve_datasets`, then the method's ``check_datasets`` on them (a data set too small for it)."""
    chosen = resolve_datasets(method, params, datasets)
    if chosen and method.check_datasets is not None:
        method.check_datasets(dict(params), model, chosen)
    return chosen


def _resolve(
    method: Method, params: Mapping[str, Any], kind: str, source: Callable[[], Callable[[str], Any]]
):
    """What each ``kind`` parameter with a value names, by ``source()`` (made only when one has a value)."""
    wanted = {p.name: params[p.name] for p in method.params if p.kind == kind and params.get(p.name)}
    if not wanted:
        return {}
    lookup = source()
    found = {}
    for name, value in wanted.items():
        try:
            found[name] = lookup(value)
        except BadInput as error:
            raise BadInput(f"params.{name}", error.reason) from None
    return found


def registered_datasets_only() -> DatasetSource:
    """The installed plugins' data sets, for runs outside a server (tests, notebooks)."""
    from .datasets import DatasetLibrary
    from .plugins import get_plugin_manager, registered_datasets

    return DatasetLibrary(registered_datasets(get_plugin_manager())).get


def checked_model_ids(
    method: Method, params: Mapping[str, Any], run_model_id: str, models: ModelSource | None = None
) -> dict[str, list[str]]:
    """The model ids each ``models`` parameter names, in order, the run's own model placed as the parameter says
    (first, or left out); ``"*"`` is every id ``models`` lists, the first ``maximum`` of them (the store lists its
    own folders' models before the nets jobs trained, which grow with use). Nothing is loaded. An id ``models``
    does not list is :class:`BadInput` naming ``params.<name>``."""
    wanted = [p for p in method.params if p.kind == "models"]
    if not wanted:
        return {}
    source = models or stored_models_only()
    known = source.ids()
    chosen = {}
    for param in wanted:
        value = params.get(param.name) or []
        if value == EVERY_MODEL:
            value = known
        for model_id in value:
            if model_id not in known and model_id != run_model_id:
                raise BadInput(f"params.{param.name}", f"unknown model {model_id!r}; expected one of {known}")
        others = [model_id for model_id in value if model_id != run_model_id]
        if value is known and param.maximum is not None:
            others = others[: int(param.maximum) - (param.run_model == "first")]
        chosen[param.name] = [run_model_id, *others] if param.run_model == "first" else others
    return chosen


def resolve_models(
    method: Method, params: Mapping[str, Any], model: Model, models: ModelSource | None = None
) -> tuple[dict[str, list[Model]], dict[str, str]]:
    """The loaded models of every ``models`` parameter (:func:`checked_model_ids`; the run's own is ``model``
    itself), and the reason each model ``"*"`` found could not be loaded or did not fit under the parameter's
    maximum, by id: those are left out, so that one broken file in a folder does not stop every run. A named one that cannot be loaded is :class:`BadInput`
    naming ``params.<name>``."""
    chosen = checked_model_ids(method, params, model.id, models)
    if not chosen:
        return {}, {}
    source = models or stored_models_only()
    loaded: dict[str, list[Model]] = {}
    left_out: dict[str, str] = {}
    for name, ids in chosen.items():
        every = params.get(name) == EVERY_MODEL
        loaded[name] = []
        for model_id in ids:
            if model_id == model.id:
                loaded[name].append(model)
                continue
            try:
                loaded[name].append(source.get(model_id))
            except BadInput as error:
                if not every:
                    raise BadInput(f"params.{name}", f"model {model_id!r}: {error.reason}") from None
                left_out[model_id] = error.reason
    chosen_anywhere = {model_id for ids in chosen.values() for model_id in ids}
    for name, ids in chosen.items():
        if params.get(name) == EVERY_MODEL:
            for model_id in source.ids():
                if model_id not in chosen_anywhere and model_id != model.id:
                    left_out.setdefault(
                        model_id, f'"*" takes at most {len(ids)} models; name others to choose them'
                    )
    return loaded, left_out


def stored_models_only() -> ModelSource:
    """The model files in ``Config``'s folders, for runs outside a server (tests, notebooks)."""
    from .config import Config

    config = Config()
    return model_store((*config.models_dirs, config.trained_dir), config.default_models_dir)


@functools.cache
def model_store(dirs: Sequence[Path], default_dir: Path | None) -> ModelStore:
    """The one store of this process for these folders, so each model file is loaded once."""
    from .models.store import ModelStore

    return ModelStore(dirs, default_dir=default_dir)


def iterate(method: Method, ctx: RunContext) -> Iterator[Event]:
    """The events of ``method.run(ctx)``, after seeding; a non-event yielded is a ``TypeError`` naming the method."""
    check_available(method, ctx.model)
    seed_everything(ctx.seed)
    events = method.run(ctx)
    if tracing_requested():
        events = traced_run(method.name, events)
    try:
        for event in events:
            if not isinstance(event, EVENT_TYPES):
                raise TypeError(
                    f"method {method.name!r} yielded {type(event).__name__}, not a convlens event"
                )
            yield event
    finally:
        # Stopping a job closes this iterator; close the method's generator now, not at garbage collection.
        close = getattr(events, "close", None)
        if close is not None:
            close()
