"""Plugin discovery: backends come from the `modelyard` entry-point group, in-repo ones included."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping
from typing import Any

import msgspec
import pluggy

from modelyard.errors import BadRequest, InternalError
from modelyard.runtime import hookspecs
from modelyard.runtime.contract import Backend, ModelView

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "modelyard"


def build_plugin_manager(extra_plugins: tuple[object, ...] = (), trace: bool = False) -> pluggy.PluginManager:
    """One manager per app: entry-point plugins, then `extra_plugins` (tests, embedding apps)."""
    manager = pluggy.PluginManager("modelyard")
    manager.add_hookspecs(hookspecs)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken plugin must not take the server down
            log.warning("plugin %s could not be loaded: %s", entry_point.name, exc)
            continue
        if manager.get_plugin(entry_point.name) is None:
            manager.register(plugin, name=entry_point.name)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.check_pending()
    if trace:
        manager.trace.root.setwriter(lambda message: log.info("hook: %s", message.rstrip()))
        manager.enable_tracing()
    return manager


def settings_from_env(settings_type: type[msgspec.Struct], prefix: str, env: Mapping[str, str]) -> Any:
    """A backend's settings from `<prefix><FIELD>` variables, converted to the fields' types.

    A variable with the prefix that names no field is a typo that would silently change nothing: it stops
    the server, naming the variable and the fields there are.
    """
    fields = {f"{prefix}{field.upper()}" for field in settings_type.__struct_fields__}
    unknown = sorted(name for name in env if name.startswith(prefix) and name not in fields)
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"unknown setting {', '.join(unknown)} (the settings of this backend: {known})")
    values = {
        field: env[f"{prefix}{field.upper()}"]
        for field in settings_type.__struct_fields__
        if f"{prefix}{field.upper()}" in env
    }
    return msgspec.convert(values, settings_type, strict=False)


class Backends:
    """The backends of one server, in registration order (the first that serves a model runs it)."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends

    @classmethod
    def discover(
        cls,
        manager: pluggy.PluginManager,
        enabled: tuple[str, ...] | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> Backends:
        classes: list[type[Backend]] = []
        manager.hook.register_backends(register=classes.append)
        for backend_class in list(classes):
            if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
                # Written for another contract: named in MODELYARD_BACKENDS it stops the server, else it is left out.
                problem = f"{backend_class!r} is not a backend: backends subclass modelyard.plugin.Backend (v2)"
                if enabled is not None and getattr(backend_class, "name", None) in enabled:
                    raise ValueError(problem)
                log.warning("%s; left out", problem)
                classes.remove(backend_class)
        # Real engines before fallbacks: the first backend that serves a model runs it.
        classes.sort(key=lambda backend_class: backend_class.priority)
        if enabled is not None:
            by_name = {backend_class.name: backend_class for backend_class in classes}
            unknown = [name for name in enabled if name not in by_name]
            if unknown:
                raise ValueError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
            classes = [by_name[name] for name in enabled]
        backends = []
        for backend_class in classes:
            prefix = f"MODELYARD_{backend_class.name.upper()}_"
            backends.append(backend_class(settings_from_env(backend_class.Settings, prefix, env)))
        return cls(backends)

    def for_model(self, model: ModelView) -> Backend:
        for backend in self.backends:
            if backend.serves(model):
                return backend
        if model.remote is not None:  # Ollama's answer for a remote model it will not forward to
            raise BadRequest("this server cannot run this remote model")
        raise InternalError(f"no backend can run model '{model.name}' (format {model.format})")

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
