"""What each installed plugin is and declares it supports (``GET /api/plugins``), and plugin tracing.

A plugin's distribution metadata says which convlens versions it works with (its ``Requires-Dist: convlens
(...)`` range) and whether it carries the recommended ``Framework :: convlens`` classifier; a module attribute
``CONVLENS_SUPPORTS = {"formats": [...]}`` says which model formats it handles. A plugin outside its declared
range is still loaded, listed with ``compatible: false`` and its reason, and warned about at start: the range
is often only cautious, and a plugin whose import really fails already stops the server with its own error.

With ``CONVLENS_TRACE_PLUGINS=1`` every hook call is logged with its plugins and duration, and every method
run with its time and event count, at INFO on the ``convlens.plugins.trace`` logger.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import PROJECT_NAME, __version__

if TYPE_CHECKING:
    from .plugins import MethodRegistry

TRACE_ENV = "CONVLENS_TRACE_PLUGINS"
"""``1``: log every hook call and method run on :data:`trace_log`."""
FRAMEWORK_CLASSIFIER = "Framework :: convlens"
SUPPORTS_ATTRIBUTE = "CONVLENS_SUPPORTS"

trace_log = logging.getLogger("convlens.plugins.trace")
log = logging.getLogger(__name__)


def tracing_requested() -> bool:
    return os.environ.get(TRACE_ENV, "").strip() not in ("", "0")


def trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """Log every hook call made through ``pm.hook`` with the plugins it ran and how long it took."""
    _make_trace_visible()
    calls = threading.local()  # per thread a stack of start times: jobs call hooks at once, and hooks nest

    def before(hook_name: str, hook_impls: list[pluggy.HookImpl], _kwargs: dict[str, Any]) -> None:
        calls.__dict__.setdefault("started", []).append(time.perf_counter())

    def after(_outcome, hook_name: str, hook_impls: list[pluggy.HookImpl], _kwargs: dict[str, Any]) -> None:
        took = time.perf_counter() - calls.started.pop()
        plugins = ", ".join(impl.plugin_name for impl in hook_impls)
        trace_log.info("hook %s ran plugins [%s] in %.2f ms", hook_name, plugins, took * 1000)

    pm.add_hookcall_monitoring(before, after)


def call_hookimpl(hook_name: str, impl: pluggy.HookImpl) -> Any:
    """``impl.function()`` for a caller that needs each plugin's answer apart, traced like a hook call."""
    if not tracing_requested():
        return impl.function()
    _make_trace_visible()
    start = time.perf_counter()
    answer = impl.function()
    took = time.perf_counter() - start
    trace_log.info("hook %s ran plugins [%s] in %.2f ms", hook_name, impl.plugin_name, took * 1000)
    return answer


def traced_run(method_name: str, events: Iterator) -> Iterator:
    """``events`` passed through, then one line: the time spent inside the method, the wall time, the count."""
    _make_trace_visible()
    wall = time.perf_counter()
    inside, count, ending = 0.0, 0, "done"
    try:
        while True:
            start = time.perf_counter()
            try:
                event = next(events)
            except StopIteration:
                return
            finally:
                inside += time.perf_counter() - start
            count += 1
            yield event
    except GeneratorExit:
        ending = "closed early"
        raise
    except BaseException as error:
        ending = f"failed ({type(error).__name__})"
        raise
    finally:
        close: Callable[[], None] | None = getattr(events, "close", None)
        if close is not None:
            close()
        trace_log.info(
            "method %s %s: %d events, %.3f s in the method, %.3f s wall",
            method_name,
            ending,
            count,
            inside,
            time.perf_counter() - wall,
        )


def _make_trace_visible() -> None:
    """INFO on the trace logger; a handler of its own where logging is not set up (``convlens serve``)."""
    trace_log.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not trace_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        trace_log.addHandler(handler)
        trace_log.propagate = False


def declared_support(plugin: object, dist: Any) -> dict[str, Any]:
    """``{formats, convlens, compatible, reason}`` of one plugin; ``dist`` its distribution or ``None``."""
    declared = getattr(plugin, SUPPORTS_ATTRIBUTE, None)
    formats = declared.get("formats") if isinstance(declared, dict) else None
    if not (isinstance(formats, list) and all(isinstance(f, str) for f in formats)):
        formats = None
    specifier = _convlens_range(dist)
    compatible = specifier is None or specifier.contains(__version__, prereleases=True)
    return {
        "formats": formats,
        "convlens": str(specifier) if specifier is not None else None,
        "compatible": compatible,
        "reason": None if compatible else f"declares convlens {specifier}; this server is {__version__}",
    }


def _convlens_range(dist: Any):
    """The ``packaging`` specifier of ``dist``'s unconditional requirement on convlens, or ``None``."""
    for line in (dist.metadata.get_all("Requires-Dist") or []) if dist is not None else []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) != PROJECT_NAME or requirement.marker is not None:
            continue  # an extra's or platform's requirement is not a support declaration
        return requirement.specifier if str(requirement.specifier) else None
    return None


def describe_plugins(pm: pluggy.PluginManager, registry: MethodRegistry) -> list[dict[str, Any]]:
    """Every plugin ``pm`` loaded, by entry-point name: its distribution, what it offers, what it supports."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    counts = {
        hook: {impl.plugin_name: len(call_hookimpl(hook, impl) or []) for impl in caller.get_hookimpls()}
        for hook, caller in (
            ("register_sample_images", pm.hook.register_sample_images),
            ("register_datasets", pm.hook.register_datasets),
        )
    }
    listing = []
    for name, plugin in sorted(pm.list_name_plugin()):
        dist = dists.get(id(plugin))
        metadata = dist.metadata if dist is not None else None
        classifiers = (metadata.get_all("Classifier") or []) if metadata is not None else []
        methods = [method for method, owner in registry.plugin_of.items() if owner == name]
        listing.append(
            {
                "name": name,
                "distribution": metadata["Name"] if metadata is not None else None,
                "version": dist.version if dist is not None else None,
                "summary": metadata["Summary"] if metadata is not None else None,
                "classifiers": classifiers,
                "framework_classifier": FRAMEWORK_CLASSIFIER in classifiers,
                "methods": methods,
                "needs": sorted({need for method in methods for need in registry.methods[method].needs}),
                "sample_images": counts["register_sample_images"].get(name, 0),
                "datasets": counts["register_datasets"].get(name, 0),
                "supports": declared_support(plugin, dist),
            }
        )
    return listing


def warn_incompatible(pm: pluggy.PluginManager) -> None:
    """A warning for each loaded plugin whose distribution declares a convlens range this version is outside."""
    for plugin, dist in pm.list_plugin_distinfo():
        support = declared_support(plugin, dist)
        if not support["compatible"]:
            log.warning("plugin %s: %s (loaded anyway)", pm.get_name(plugin), support["reason"])
