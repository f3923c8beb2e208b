"""The `openai` kind against llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`, its
`server` extra) running the bundled SmolLM2: the official `ollama` client through the router gets the answer
the server gives to the same request in OpenAI's terms."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest
from routing import pool, router
from support.external import external_server

from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import ServerProcess, free_port

ALIAS = "smollm2-135m-instruct"  # the server's name for the model
ROUTED = "oa/smollm2"
GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", ALIAS]
    # interrupt_requests false: by default any new request (the router's probes too) cuts the running stream.
    command += ["--port", str(port), "--n_ctx", "2048", "--verbose", "false", "--interrupt_requests", "false"]
    with external_server(command, tmp_path_factory.mktemp("llama-cpp-server") / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def openai_router(llama_cpp_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = pool(ROUTED, llama_cpp_server, upstream_model=ALIAS, kind="openai")
    config += pool("smollm2-*", llama_cpp_server, kind="openai")  # a pattern: the server's /v1/models
    with router(tmp_path_factory.mktemp("openai-router"), config + "[health]\ninterval = 0.5\n") as server:
        yield server


@pytest.fixture
def routed(openai_router: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=openai_router.url)
    yield client
    client._client.close()


def direct_chat(url: str, content: str) -> str:
    """The server's answer to the prompt asked directly. llama.cpp reuses the cached prefix of the last
    prompt, which can move a greedy answer by a token: each test asks once to warm the cache (both later
    requests then evaluate the same last token alone), then through the router, then directly."""
    body = {"model": ALIAS, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 16}
    answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
    return answer["choices"][0]["message"]["content"]


def test_a_chat_is_the_openai_servers_answer(llama_cpp_server, routed):
    messages = [{"role": "user", "content": "Name three colours."}]
    direct_chat(llama_cpp_server, "Name three colours.")
    answer = routed.chat(model=ROUTED, messages=messages, options=GREEDY)
    assert answer.message.content == direct_chat(llama_cpp_server, "Name three colours.") and answer.message.content
    assert answer.done_reason == "length" and answer.eval_count == 16  # this server sends no usage: chunks count
    assert answer.eval_duration and answer.prompt_eval_duration  # measured by the router


def test_a_stream_is_translated_piece_by_piece(llama_cpp_server, routed):
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    direct_chat(llama_cpp_server, "Why is the sky blue?")
    parts = list(routed.chat(model=ROUTED, messages=messages, options=GREEDY, stream=True))
    assert "".join(part.message.content for part in parts) == direct_chat(llama_cpp_server, "Why is the sky blue?")
    assert len(parts) > 3 and parts[-1].done and not any(part.done for part in parts[:-1])


def test_a_raw_generate_goes_to_completions(llama_cpp_server, routed):
    prompt = "The capital of France is"
    body = {"model": ALIAS, "prompt": prompt, "temperature": 0, "max_tokens": 16}
    httpx.post(llama_cpp_server + "/v1/completions", json=body, timeout=120)  # warm the prefix (direct_chat)
    answer = routed.generate(model=ROUTED, prompt=prompt, raw=True, options=GREEDY)
    expected = httpx.post(llama_cpp_server + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
    assert answer.response == expected and answer.response


def test_pool_models_of_an_openai_upstream_are_listed(openai_router, routed):
    deadline = time.monotonic() + 30  # the pattern pool lists the model once a probe has read /v1/models
    while f"{ALIAS}:latest" not in [model.model for model in routed.list().models] and time.monotonic() < deadline:
        time.sleep(0.1)
    names = [model.model for model in routed.list().models]
    assert f"{ROUTED}:latest" in names and f"{ALIAS}:latest" in names  # listed as Ollama spells names
    answer = routed.chat(model=ALIAS, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert answer.done and answer.eval_count == 2


def test_an_openai_upstream_can_complete_and_nothing_it_does_not_say(llama_cpp_server, openai_router, routed):
    shown = httpx.post(openai_router.url + "/api/show", json={"model": ROUTED}).json()
    assert shown["capabilities"] == ["completion"]  # OpenAI's model list says no more (no tools, no vision)
    assert (shown["remote_model"], shown["remote_host"]) == (ALIAS, llama_cpp_server)
    with pytest.raises(ollama.ResponseError) as refused:
        routed.chat(model=ROUTED, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER])
    assert (refused.value.status_code, refused.value.error) == (
        400,
        f"registry.ollama.ai/{ROUTED}:latest does not support tools",
    )
    with pytest.raises(ollama.ResponseError) as refused:
        routed.chat(model=ROUTED, messages=[{"role": "user", "content": "hi"}], think=True)
    assert (refused.value.status_code, refused.value.error) == (400, f'"{ROUTED}" does not support thinking')


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
