"""The plugin manager: loads every ``convlens`` entry point, built-ins included."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

import pluggy

from . import PROJECT_NAME, hookspecs
from .errors import NotFound
from .methods import Method
from .plugin_info import call_hookimpl, trace_hook_calls, tracing_requested, warn_incompatible

if TYPE_CHECKING:
    from .datasets import Dataset
    from .images import SampleImage

ONLY_PLUGINS_ENV = "CONVLENS_PLUGINS"
"""Comma-separated entry-point names: when set, only these plugins are loaded."""


def make_plugin_manager(only: set[str] | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if tracing_requested():
        trace_hook_calls(pm)
    if only is None:
        pm.load_setuptools_entrypoints(PROJECT_NAME)
    else:
        for name in sorted(only):
            pm.load_setuptools_entrypoints(PROJECT_NAME, name=name)
        missing = only - {name for name, _ in pm.list_name_plugin()}
        if missing:
            raise RuntimeError(f"{ONLY_PLUGINS_ENV} names plugins that are not installed: {sorted(missing)}")
    pm.check_pending()
    warn_incompatible(pm)
    return pm


def plugins_from_env() -> set[str] | None:
    value = os.environ.get(ONLY_PLUGINS_ENV, "").strip()
    return {name.strip() for name in value.split(",") if name.strip()} or None


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    return make_plugin_manager(plugins_from_env())


def sample_images(pm: pluggy.PluginManager) -> list[SampleImage]:
    """Every sample image the plugins of ``pm`` register, in registration order."""
    return [sample for batch in pm.hook.register_sample_images() for sample in batch or []]


def registered_datasets(pm: pluggy.PluginManager) -> list[Dataset]:
    """Every data set the plugins of ``pm`` register, in registration order."""
    return [dataset for batch in pm.hook.register_datasets() for dataset in batch or []]


class MethodRegistry:
    """All methods the loaded plugins declare, by name."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.methods: dict[str, Method] = {}
        self.plugin_of: dict[str, str] = {}
        for impl in pm.hook.register_methods.get_hookimpls():
            for method in call_hookimpl("register_methods", impl) or []:
                if method.name in self.methods:
                    raise RuntimeError(
                        f"method {method.name!r} is declared by plugins {self.plugin_of[method.name]!r}"
                        f" and {impl.plugin_name!r}"
                    )
                self.methods[method.name] = method
                self.plugin_of[method.name] = impl.plugin_name

    def get(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            raise NotFound(
                "method", f"unknown method {name!r}; expected one of {sorted(self.methods)}"
            ) from None

    def __iter__(self):
        return iter(self.methods.values())


@lru_cache(maxsize=1)
def get_methods() -> MethodRegistry:
    return MethodRegistry(get_plugin_manager())
