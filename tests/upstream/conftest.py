"""The whole conformance suite through a router (several minutes per kind of upstream) runs only when `-m`
asks for it: `uv run pytest -m upstream_suite tests/upstream`. The default run has a representative part."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "upstream_suite" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("upstream_suite") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
