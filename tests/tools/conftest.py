"""The 20-try tool_choice loop runs only when asked: `uv run pytest tests/tools -m tool_loop -s`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "tool_loop" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("tool_loop") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
