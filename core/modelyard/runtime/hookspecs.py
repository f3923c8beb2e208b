"""Hook specifications. Hooks only register things; per-request work lives on backend objects."""

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
