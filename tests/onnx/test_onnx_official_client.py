"""The official `ollama` client test set of the llama.cpp backend (tests/http/test_generate_chat.py), run
unchanged on the real SmolLM2 converted to ONNX.

Its tests are loaded from that file and collected here, where the fixtures they ask for (`http`,
`ollama_client`, `llama_server`) are the onnx server's; the model is created there as `smollm2:135m`, the
name the tests use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from modelyard_conformance.launcher import ServerProcess

_SOURCE = Path(__file__).parents[1] / "http" / "test_generate_chat.py"
_spec = importlib.util.spec_from_file_location("llamacpp_generate_chat", _SOURCE)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

globals().update({name: value for name, value in vars(_module).items() if name.startswith("test_")})
client = _module.client  # the module's own fixture, over ollama_client


@pytest.fixture
def llama_server(onnx_server: ServerProcess, real_model: str) -> ServerProcess:
    """The server tests/conftest.py's `http` and `ollama_client` fixtures talk to: here, the onnx one."""
    return onnx_server
