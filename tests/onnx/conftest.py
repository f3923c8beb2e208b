"""Fixtures for the ONNX Runtime GenAI backend: a server that runs only the onnx backend, with the
committed tiny model and the converted SmolLM2 (the folders come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.models import create_from_folder, upload_folder  # noqa: F401 (the tests of this folder import them from here)

from modelyard_conformance.launcher import ServerProcess

TINY = "tiny-smollm2:latest"
REAL = "smollm2:135m"  # the name the llama.cpp tests use, so that they run unchanged on the ONNX model
ONNX_ENV = {"MODELYARD_BACKENDS": "onnx", "MODELYARD_BUNDLED_MODELS": "none"}


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Iterator[ServerProcess]:
    """`modelyard serve` with only the onnx backend, and the tiny model created from its folder."""
    root = tmp_path_factory.mktemp("onnx")
    (root / "tmp").mkdir()
    with ServerProcess(root / "models", {**ONNX_ENV, "TMPDIR": str(root / "tmp")}) as server:
        created = create_from_folder(server.url, TINY, tiny_folder)
        assert created.status_code == 200, created.text
        yield server


@pytest.fixture(scope="session")
def real_model(onnx_server: ServerProcess, real_folder: Path) -> str:
    """The real SmolLM2 on the onnx server, as `smollm2:135m`."""
    created = create_from_folder(onnx_server.url, REAL, real_folder)
    assert created.status_code == 200, created.text
    return REAL


@pytest.fixture
def onnx_http(onnx_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=onnx_server.url, timeout=120) as client:
        yield client
