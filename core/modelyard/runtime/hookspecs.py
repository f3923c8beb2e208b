"""Hook specifications. Hooks only register things; per-request work lives on backend and format objects."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("modelyard")
hookimpl = pluggy.HookimplMarker("modelyard")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register backend classes: `register(MyBackend)`.

    A backend class has a `name`, a `Settings` msgspec Struct and the methods of
    `modelyard.runtime.contract.Backend`. The core creates one instance per server, with settings read from
    `MODELYARD_<NAME>_<FIELD>` environment variables.
    """


@hookspec
def register_formats(register: Callable[[type], None]) -> None:
    """Register model formats of the store: `register(MyFormat)`.

    A format class subclasses `modelyard.plugin.ModelFormat` and has a `name` (the config blob's
    `model_format`). The core creates one instance per server. /api/create asks the formats, by `priority`,
    whether they `detect` the uploaded files and lets the first `create` the layers and config; a stored
    model asks the format its config names for its details, model_info, chat template, metadata and files.
    GGUF and remote models are built in; the onnx plugin registers ONNX Runtime GenAI folders.
    """
