"""Fixtures for the ONNX Runtime GenAI backend: a server that runs only the onnx backend, with the
committed tiny model and the converted SmolLM2 (the folders come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelyard.launcher import ServerProcess
from modelyard.store import sha256_file

TINY = "tiny-smollm2:latest"
REAL = "smollm2:135m"  # the name the llama.cpp tests use, so that they run unchanged on the ONNX model
ONNX_ENV = {"MODELYARD_BACKENDS": "onnx", "MODELYARD_BUNDLED_MODELS": "none"}


def upload_folder(url: str, folder: Path) -> dict[str, str]:
    """Every file of the folder as a blob; relative path -> digest."""
    files = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest = "sha256:" + sha256_file(path)
            if client.head(f"/api/blobs/{digest}").status_code != 200:
                with open(path, "rb") as file:
                    assert client.post(f"/api/blobs/{digest}", content=file).status_code == 201
            files[path.relative_to(folder).as_posix()] = digest
    return files


def create_from_folder(url: str, name: str, folder: Path, **fields: object) -> httpx.Response:
    body = {"model": name, "files": upload_folder(url, folder), "stream": False, **fields}
    return httpx.post(url + "/api/create", json=body, timeout=120)


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
