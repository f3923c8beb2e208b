"""A server shared by the metrics, log and limits tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard_conformance.launcher import ServerProcess


@pytest.fixture(scope="session")
def observed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An echo server (its counters start at zero) logging JSON lines and prompts, with 1 s header and
    idle timeouts."""
    models = tmp_path_factory.mktemp("observed") / "models"
    env = {
        "MODELYARD_BACKENDS": "echo",
        "MODELYARD_BUNDLED_MODELS": "smollm2:135m",
        "MODELYARD_ECHO_DELAY": "0.02",
        "MODELYARD_LOG_FORMAT": "json",
        "MODELYARD_LOG_PROMPTS": "1",
        "MODELYARD_HEADER_TIMEOUT": "1",
        "MODELYARD_IDLE_TIMEOUT": "1",
    }
    with ServerProcess(models, env) as running:
        yield running
