"""Hostile input never poisons the server: each request below gets its own 4xx/5xx in Ollama's envelope,
and a plain generate from another client (the official one) answers right after it.

The server here is a module's own (its keep_alive and loaded models are changed on purpose), with a
16 MiB body limit so that both sides of MODELYARD_MAX_BODY_SIZE can be tried cheaply.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from pydantic import BaseModel

from modelyard.runtime.scheduler import FOREVER
from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
BODY_LIMIT = 16 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("hardening") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL, "MODELYARD_MAX_BODY_SIZE": "16MiB"}
    with ServerProcess(models, env) as running:
        yield running


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def kept_forever(loaded: dict) -> bool:
    """Whether /api/ps shows Go's longest duration from now (about 292 years), as Ollama does for forever."""
    return loaded["expires_at"][:4] == str((dt.datetime.now(dt.UTC) + FOREVER).year)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def plain_generate_works(server: ServerProcess) -> None:
    """What another user of the server does next: the official client, no keep_alive, no options."""
    client = ollama.Client(host=server.url)
    try:
        answer = client.generate(model=MODEL, prompt="Say hi", options={"num_predict": 3})
    finally:
        client._client.close()
    assert answer.done
    assert answer.eval_count >= 1


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HOSTILE = {
    "keep_alive beyond Go's durations": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "keep_alive": "9999999999h"},
        400,
        'time: invalid duration "9999999999h"',
    ),
    "num_batch 0": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "options": {"num_batch": 0}},
        400,
        "num_batch must be a positive integer",
    ),
    "num_ctx -5": (
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": -5}},
        400,
        "num_ctx must be a positive integer",
    ),
    # llama.cpp segfaults with this many threads: the server process would be gone.
    "num_thread 100000": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "options": {"num_thread": 100_000}},
        400,
        "num_thread must be between 0 (every core) and 512",
    ),
    "num_gpu -7": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "options": {"num_gpu": -7}},
        400,
        "num_gpu must be -1 (as many layers as fit) or a number of layers",
    ),
    "main_gpu -1": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "options": {"main_gpu": -1}},
        400,
        "main_gpu must be a device index (0 or more)",
    ),
    "context with a token id the model lacks": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "context": [1, 2**40]},
        400,
        f"context holds a token id this model does not have: {2**40}",
    ),
    "num_predict beyond int64": (
        "/api/generate",
        {"model": MODEL, "prompt": "hi", "options": {"num_predict": 2**70}},
        400,
        'option "num_predict" is out of range',
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_is_refused_and_the_next_generate_works(server, http, name):
    path, body, status, message = HOSTILE[name]
    response = http.post(path, json=body)
    assert response.status_code == status
    assert error_of(response) == message
    plain_generate_works(server)


def test_a_huge_batch_is_capped_at_the_context_instead_of_exhausting_memory(server, http):
    body = {
        "model": MODEL,
        "prompt": "hi",
        "stream": False,
        "options": {"num_batch": 100_000_000, "num_ctx": 256, "num_predict": 2},
    }
    response = http.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    plain_generate_works(server)


def test_a_tiny_context_is_raised_to_ollamas_minimum(server, http):
    body = {"model": MODEL, "prompt": "hi", "raw": True, "stream": False, "options": {"num_ctx": 1, "num_predict": 1}}
    response = http.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["prompt_eval_count"] >= 1


ENDPOINTS_WITH_BODIES = [
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("POST", "/api/show"),
    ("POST", "/api/create"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS_WITH_BODIES)
def test_nesting_beyond_the_decoder_is_400(server, http, method, path):
    body = b'{"model": "' + MODEL.encode() + b'", "ignored": ' + nested(1000) + b"}"
    response = http.request(method, path, content=body)
    assert response.status_code == 400
    assert error_of(response) == "request body is nested too deeply"
    plain_generate_works(server)


def test_nesting_a_decoder_can_take_is_still_ignored(http):
    body = b'{"model": "' + MODEL.encode() + b'", "ignored": ' + nested(100) + b"}"
    assert http.post("/api/show", content=body).status_code == 200


def test_keep_alive_too_long_for_go_keeps_the_model_forever_and_poisons_nothing(server, http):
    body = {"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": 3e16, "options": {"num_predict": 1}}
    response = http.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    ps = http.get("/api/ps")
    assert ps.status_code == 200
    (loaded,) = [m for m in ps.json()["models"] if m["name"] == MODEL]
    assert kept_forever(loaded), loaded
    plain_generate_works(server)
    # As in Ollama, a request without keep_alive keeps the loaded model's duration...
    (loaded,) = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert kept_forever(loaded), loaded
    # ...until one that gives keep_alive replaces it.
    body = {"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": "5m", "options": {"num_predict": 1}}
    assert http.post("/api/generate", json=body).status_code == 200
    (loaded,) = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert not kept_forever(loaded), loaded


def test_a_body_beyond_frameworks_old_10_mb_default_is_read(http):
    # Several photos in one chat run past 10 MB of base64; Ollama reads any size.
    body = {"model": MODEL, "ignored": "x" * (12 * 1000**2)}
    response = http.post("/api/show", json=body)
    assert response.status_code == 200


def test_a_body_over_the_limit_is_413_in_ollamas_envelope(server, http):
    response = http.post("/api/show", json={"model": MODEL, "ignored": "x" * (BODY_LIMIT + 1)})
    assert response.status_code == 413
    assert error_of(response) == f"request body is larger than {BODY_LIMIT} bytes (MODELYARD_MAX_BODY_SIZE)"
    plain_generate_works(server)


def test_blob_uploads_have_no_body_limit(http):
    data = b"\0" * (BODY_LIMIT + 1024**2)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert http.head(f"/api/blobs/{digest}").status_code == 200


# --- loading errors --------------------------------------------------------------------------------


def test_a_model_that_cannot_load_names_its_file_and_llama_cpps_reason(server, http, tmp_path: Path):
    source = smollm2_gguf()
    assert source is not None
    truncated = source.read_bytes()[: source.stat().st_size // 2]  # metadata whole, tensor data cut
    digest = "sha256:" + hashlib.sha256(truncated).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=truncated).status_code == 201
    created = http.post("/api/create", json={"model": "broken", "files": {"model.gguf": digest}, "stream": False})
    assert created.status_code == 200, created.text

    response = http.post("/api/generate", json={"model": "broken", "prompt": "hi"})
    assert response.status_code == 500
    message = error_of(response)
    blob_name = digest.replace(":", "-")
    assert re.match(rf"llama\.cpp could not load \S+/blobs/{blob_name} \(broken:latest\): ", message), message
    assert "not within the file bounds" in message  # what llama.cpp itself said
    plain_generate_works(server)


# --- structured output keeps the schema's order --------------------------------------------------


class Joke(BaseModel):
    setup: str
    punchline: str


FIRST_KEY_SETUP = re.compile(r'^\s*\{\s*"setup"\s*:')


class PunchlineFirst(BaseModel):
    punchline: str
    setup: str


# Sorted keys would also put setup first for Joke; PunchlineFirst shows the grammar follows the schema.
@pytest.mark.parametrize(("schema", "first_key"), [(Joke, "setup"), (PunchlineFirst, "punchline")])
def test_schema_property_order_with_the_official_client(server, schema, first_key):
    client = ollama.Client(host=server.url)
    try:
        answer = client.generate(
            model=MODEL,
            prompt="Tell me a joke about cats.",
            format=schema.model_json_schema(),
            options={"temperature": 0, "num_predict": 12},
        )
    finally:
        client._client.close()
    assert re.match(rf'^\s*\{{\s*"{first_key}"\s*:', answer.response), answer.response


def test_langchain_structured_output_gets_setup_first(server):
    from langchain_ollama import ChatOllama

    # LangChain's standard structured-output test: a 135M model at temperature 0 repeats itself inside
    # "setup", so num_predict cuts the object; what matters is which key the grammar let come first.
    chat = ChatOllama(model=MODEL, base_url=server.url, num_predict=24, temperature=0)
    try:
        result = chat.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke about cats.")
    finally:
        chat._client._client.close()  # its httpx clients stay open otherwise
        asyncio.run(chat._async_client._client.aclose())
    raw = result["raw"].content
    assert FIRST_KEY_SETUP.match(raw), raw
