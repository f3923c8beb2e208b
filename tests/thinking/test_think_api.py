"""`think` through every API, on the echo backend: the model's words come back as they were sent, so a user
message that holds thinking tags shows exactly how the core separates thinking from the answer.

The model's Go template names the `<think>` tags (that gives it the thinking capability, as in Ollama) and
reads `.Think`; it does not open the tag itself, so the echoed `<think>` starts the thinking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from support.models import SMOLLM2

from modelyard_conformance.launcher import ServerProcess

THINKER = "thinker:echo"
TEMPLATE = (
    "{{ if .Think }}Think first, between <think> and </think>.{{ end }}"
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
SAID = "<think> the user greets me </think> Hello there"
MESSAGES = [{"role": "user", "content": SAID}]


@pytest.fixture(scope="module")
def server(echo_server: ServerProcess) -> ServerProcess:
    body = {"model": THINKER, "from": SMOLLM2, "template": TEMPLATE, "stream": False}
    response = httpx.post(echo_server.url + "/api/create", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return echo_server


@pytest.fixture
def client(server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url)
    yield client
    client._client.close()


def test_show_reports_the_thinking_capability(client: ollama.Client) -> None:
    assert "thinking" in (client.show(THINKER).capabilities or [])
    assert "thinking" not in (client.show(SMOLLM2).capabilities or [])


@pytest.mark.parametrize("think", [True, "low", "medium", "high", "max", None])
def test_chat_separates_thinking(client: ollama.Client, think: bool | str | None) -> None:
    """Every level turns thinking on, and so does leaving `think` out on a model that can think (Ollama 0.13+)."""
    answer = httpx.post(
        str(client._client.base_url) + "/api/chat",
        json={"model": THINKER, "messages": MESSAGES, "stream": False, "think": think},
        timeout=120,
    ).json()
    assert answer["message"]["thinking"] == "the user greets me"
    assert answer["message"]["content"] == "Hello there"


def test_chat_stream_sends_thinking_then_content(client: ollama.Client) -> None:
    chunks = list(client.chat(model=THINKER, messages=MESSAGES, think=True, stream=True))
    thinking = "".join(chunk.message.thinking or "" for chunk in chunks)
    content = "".join(chunk.message.content for chunk in chunks)
    assert (thinking, content) == ("the user greets me", "Hello there")
    kinds = [("thinking" if chunk.message.thinking else "content") for chunk in chunks if not chunk.done]
    assert kinds == sorted(kinds, key=lambda kind: kind == "content")  # all thinking before any content
    assert kinds.count("thinking") > 1  # streamed piece by piece, not held to the end


def test_generate_has_a_thinking_field(client: ollama.Client) -> None:
    answer = client.generate(model=THINKER, prompt=SAID, think=True)
    assert (answer.thinking, answer.response) == ("the user greets me", "Hello there")
    chunks = list(client.generate(model=THINKER, prompt=SAID, think="high", stream=True))
    assert "".join(chunk.thinking or "" for chunk in chunks) == "the user greets me"
    assert "".join(chunk.response for chunk in chunks) == "Hello there"


def test_think_false_leaves_the_text_alone(client: ollama.Client) -> None:
    answer = client.chat(model=THINKER, messages=MESSAGES, think=False)
    assert answer.message.content == SAID
    assert not answer.message.thinking


def test_think_on_a_model_without_the_capability_is_ollamas_400(server: ServerProcess) -> None:
    body = {"model": SMOLLM2, "messages": MESSAGES, "think": True}
    response = httpx.post(server.url + "/api/chat", json=body, timeout=120)
    assert response.status_code == 400
    assert response.json() == {"error": f'"{SMOLLM2}" does not support thinking'}
    body["think"] = False  # accepted: nothing to turn off
    assert httpx.post(server.url + "/api/chat", json={**body, "stream": False}, timeout=120).status_code == 200


def test_an_unknown_level_is_ollamas_400(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/api/generate", json={"model": THINKER, "prompt": "hi", "think": "extreme"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'
    )


@pytest.fixture
def openai_client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_openai_chat_has_reasoning(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(model=THINKER, messages=MESSAGES, reasoning_effort="high")
    message = completion.choices[0].message
    assert (message.model_extra or {}).get("reasoning") == "the user greets me"
    assert message.content == "Hello there"
    stream = openai_client.chat.completions.create(model=THINKER, messages=MESSAGES, stream=True)
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    assert "".join((delta.model_extra or {}).get("reasoning") or "" for delta in deltas) == "the user greets me"
    assert "".join(delta.content or "" for delta in deltas) == "Hello there"


@pytest.mark.parametrize(
    ("fields", "thinks"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, True),
        ({"reasoning": {"effort": "none"}}, False),
        ({"reasoning": {"effort": "low"}}, True),
    ],
)
def test_openai_reasoning_effort_switches_thinking(server: ServerProcess, fields: dict, thinks: bool) -> None:
    body = {"model": THINKER, "messages": MESSAGES, **fields}
    message = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
    if thinks:
        assert (message.get("reasoning"), message["content"]) == ("the user greets me", "Hello there")
    else:
        assert "reasoning" not in message and message["content"] == SAID


def test_openai_reasoning_effort_unknown_is_a_400(server: ServerProcess) -> None:
    body = {"model": THINKER, "messages": MESSAGES, "reasoning": {"effort": "enormous"}}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "invalid reasoning value: 'enormous'"


def test_openai_responses_have_a_reasoning_item(server: ServerProcess) -> None:
    body = {"model": THINKER, "input": SAID, "reasoning": {"effort": "medium"}}
    answer = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    kinds = [item["type"] for item in answer["output"]]
    assert kinds == ["reasoning", "message"]
    assert answer["output"][0]["summary"] == [{"type": "summary_text", "text": "the user greets me"}]
    assert answer["output"][1]["content"][0]["text"] == "Hello there"
    with httpx.stream("POST", server.url + "/v1/responses", json={**body, "stream": True}, timeout=120) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [event for event in events if event["type"] == "response.reasoning_summary_text.delta"]
    assert "".join(event["delta"] for event in deltas) == "the user greets me"
    assert {event["output_index"] for event in deltas} == {0}
    texts = [event for event in events if event["type"] == "response.output_text.delta"]
    assert "".join(event["delta"] for event in texts) == "Hello there"
    assert {event["output_index"] for event in texts} == {1}
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["reasoning", "message"]


def test_anthropic_messages_have_thinking_blocks(server: ServerProcess) -> None:
    body = {
        "model": THINKER,
        "max_tokens": 64,
        "messages": MESSAGES,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    answer = httpx.post(server.url + "/v1/messages", json=body, timeout=120).json()
    assert [block["type"] for block in answer["content"]] == ["thinking", "text"]
    assert answer["content"][0]["thinking"] == "the user greets me"
    assert answer["content"][1]["text"] == "Hello there"
    disabled = httpx.post(server.url + "/v1/messages", json={**body, "thinking": {"type": "disabled"}}, timeout=120)
    assert [block["type"] for block in disabled.json()["content"]] == ["text"]
    # Ollama relaxes thinking to the model's default on a model that cannot think, rather than a 400.
    plain = httpx.post(server.url + "/v1/messages", json={**body, "model": SMOLLM2}, timeout=120)
    assert plain.status_code == 200
    assert [block["type"] for block in plain.json()["content"]] == ["text"]
