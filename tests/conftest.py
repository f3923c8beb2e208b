"""Fixtures: real servers in subprocesses on free ports, with their own model stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from modelyard.launcher import ServerProcess

SMOLLM2 = "smollm2:135m"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`modelyard serve` with only the llama.cpp backend and the bundled SmolLM2."""
    models = tmp_path_factory.mktemp("llama") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2}
    with ServerProcess(models, env) as server:
        yield server


@pytest.fixture(scope="session")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`modelyard serve` with only the echo backend (for core behaviour that needs no real engine)."""
    models = tmp_path_factory.mktemp("echo") / "models"
    env = {"MODELYARD_BACKENDS": "echo", "MODELYARD_BUNDLED_MODELS": SMOLLM2, "MODELYARD_ECHO_DELAY": "0.05"}
    with ServerProcess(models, env) as server:
        yield server


@pytest.fixture
def http(llama_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.url, timeout=120) as client:
        yield client


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def ollama_client(llama_server: ServerProcess) -> Iterator[ollama.Client]:
    """The official client, pointed at the llama.cpp server."""
    client = ollama.Client(host=llama_server.url)
    yield client
    client._client.close()  # it keeps its httpx client open otherwise
