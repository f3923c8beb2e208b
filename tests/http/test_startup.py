"""What a user meets first: a server that starts without the engines and other heavy modules, loads them
when the first model is asked for, and a /api/tags that is cached yet follows every change of the store,
those made behind the server's back included. Timings are measured by tests/benchmarks/startup.py."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import LAZY_ARRAY_ITEMS, read_header
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"

# Modules `modelyard serve` must not import until a request needs them: the engines, the registry's HTTP
# client (httpx, which brings click, rich and pygments), Jinja (chat templates), and the pydantic and
# attrs plugins Litestar adds by default.
HEAVY_MODULES = ("llama_cpp", "onnxruntime_genai", "httpx", "jinja2", "pydantic", "attrs", "rich", "jsonschema")


def imported_modules(log: str) -> set[str]:
    """Top-level names of the modules in a `-X importtime` log."""
    return {match.group(1).split(".")[0] for match in re.finditer(r"^import time:.*\|\s+([\w.]+)$", log, re.MULTILINE)}


@pytest.fixture
def traced_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`modelyard serve` that logs every import (PYTHONPROFILEIMPORTTIME is `-X importtime`)."""
    env = {"PYTHONPROFILEIMPORTTIME": "1", "MODELYARD_BUNDLED_MODELS": MODEL}
    with ServerProcess(tmp_path / "models", env) as server:
        yield server


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own, whose store the test also changes directly."""
    env = {"MODELYARD_BACKENDS": "echo", "MODELYARD_BUNDLED_MODELS": MODEL}
    with ServerProcess(tmp_path / "models", env) as server:
        yield server


def test_serve_imports_no_engine_until_a_model_is_asked_for(traced_server):
    client = ollama.Client(host=traced_server.url)
    try:
        assert MODEL in [model.model for model in client.list().models]  # tags reads headers, loads no engine
        client.show(MODEL)
        started = imported_modules(traced_server.log_path.read_text(errors="replace"))
        assert {"litestar", "modelyard", "uvicorn"} <= started  # the log is an import log
        assert sorted(set(HEAVY_MODULES) & started) == []

        pieces = [
            part.response for part in client.generate(MODEL, "Say hello.", stream=True, options={"num_predict": 8})
        ]
        assert len(pieces) > 1 and "".join(pieces).strip()  # tokens streamed, one line each
        after = imported_modules(traced_server.log_path.read_text(errors="replace"))
        assert {"llama_cpp", "jinja2"} <= after  # loaded with the first model
        assert "onnxruntime_genai" not in after
    finally:
        client._client.close()


def test_chat_templates_get_bos_and_eos_from_the_vocabulary_read_on_demand(ollama_client):
    answer = ollama_client.chat(MODEL, messages=[{"role": "user", "content": "Say hi."}], options={"num_predict": 4})
    assert answer.message.content.strip()
    assert answer.done_reason == "length"


def test_header_leaves_long_arrays_in_the_file_and_reads_them_when_asked():
    metadata = read_header(smollm2_gguf()).metadata
    assert metadata.array_length("tokenizer.ggml.tokens") == 49152
    assert metadata.array_length("general.architecture") is None
    tokens = metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert [metadata.array_item("tokenizer.ggml.tokens", i) for i in (1, 49151)] == [tokens[1], tokens[49151]]
    assert len(metadata.get("tokenizer.ggml.merges")) == 48900
    assert dict(metadata.items())["tokenizer.ggml.token_type"][:2] == [3, 3]
    held = vars(metadata)["_values"].values()  # what the header keeps between requests
    assert not any(isinstance(value, list) and len(value) > LAZY_ARRAY_ITEMS for value in held)


def names(client: ollama.Client) -> dict[str, str]:
    return {model.model: model.digest for model in client.list().models}


def test_tags_follow_create_copy_delete_and_changes_behind_the_servers_back(store_server):
    client = ollama.Client(host=store_server.url)
    manifests = store_server.log_path.parent / "models" / "manifests" / "registry.ollama.ai" / "library"
    blobs = store_server.log_path.parent / "models" / "blobs"
    try:
        assert list(names(client)) == [MODEL]
        assert list(names(client)) == [MODEL]  # served from the cache

        client.copy(MODEL, "copied")
        assert set(names(client)) == {MODEL, "copied:latest"}
        client.create("made", from_=MODEL, system="You are terse.")
        assert set(names(client)) == {MODEL, "copied:latest", "made:latest"}
        client.delete("copied")
        assert set(names(client)) == {MODEL, "made:latest"}

        # Another process (another modelyard, Ollama itself) writes a manifest: a new file...
        (manifests / "outside").mkdir()
        shutil.copyfile(manifests / "smollm2" / "135m", manifests / "outside" / "latest")
        listed = names(client)
        assert listed["outside:latest"] == listed[MODEL]
        # ...rewritten in place (same inode, new content)...
        (manifests / "outside" / "latest").write_bytes((manifests / "made" / "latest").read_bytes())
        listed = names(client)
        assert listed["outside:latest"] == listed["made:latest"] != listed[MODEL]
        # ...and removed.
        (manifests / "outside" / "latest").unlink()
        assert set(names(client)) == {MODEL, "made:latest"}

        # A blob a model needs goes away: the model is no longer complete, so it is no longer listed.
        (blobs / system_blob(manifests / "made" / "latest")).unlink()
        assert set(names(client)) == {MODEL}
    finally:
        client._client.close()


def system_blob(manifest: Path) -> str:
    """The blob file of a manifest's SYSTEM layer."""
    layers = json.loads(manifest.read_bytes())["layers"]
    digest = next(layer["digest"] for layer in layers if layer["mediaType"] == "application/vnd.ollama.image.system")
    return digest.replace(":", "-")
