"""Anthropic's Messages API (/v1/messages) with plain httpx, as a user of that format would send it, on the
real SmolLM2 (llama.cpp)."""

from __future__ import annotations

import json

import httpx
import pytest

MODEL = "smollm2:135m"
HEADERS = {"x-api-key": "anything", "anthropic-version": "2023-06-01"}
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def anthropic(llama_server) -> httpx.Client:
    with httpx.Client(base_url=llama_server.url, headers=HEADERS, timeout=120) as client:
        yield client


def named_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_message_with_system_and_max_tokens(anthropic):
    body = {"model": MODEL, "max_tokens": 3, "system": "You answer briefly.", "messages": QUESTION}
    response = anthropic.post("/v1/messages", json=body)
    assert response.status_code == 200
    message = response.json()
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["model"] == MODEL
    [block] = message["content"]
    assert block["type"] == "text" and block["text"]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 3 and message["usage"]["input_tokens"] > 0


def test_streaming_events_in_order(anthropic):
    body = {"model": MODEL, "max_tokens": 5, "messages": QUESTION, "stream": True}
    with anthropic.stream("POST", "/v1/messages", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = named_events(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert "".join(deltas)
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "max_tokens" and final["usage"]["output_tokens"] == 5


def test_stop_sequences_cut_the_answer(anthropic):
    def ask(**extra) -> dict:
        body = {"model": MODEL, "max_tokens": 10, "messages": QUESTION, "temperature": 0, **extra}
        return anthropic.post("/v1/messages", json=body).json()

    uncut = ask()
    full = uncut["content"][0]["text"]
    assert (uncut["stop_reason"], uncut["stop_sequence"]) == ("max_tokens", None)
    word = full.split()[3]
    cut = ask(stop_sequences=["never-emitted-123", word])
    assert cut["content"][0]["text"] == full[: full.index(word)]
    assert cut["stop_reason"] == "stop_sequence" and cut["stop_sequence"] == word
    body = {"model": MODEL, "max_tokens": 10, "messages": QUESTION, "temperature": 0, "stream": True}
    with anthropic.stream("POST", "/v1/messages", json={**body, "stop_sequences": [word]}) as response:
        ending = named_events(response)[-2][1]
    assert ending["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": word}


def test_content_blocks_are_read(anthropic):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]
    response = anthropic.post("/v1/messages", json={"model": MODEL, "max_tokens": 3, "messages": messages})
    assert response.status_code == 200
    assert response.json()["usage"]["input_tokens"] > 5


def test_errors_use_anthropics_envelope(anthropic):
    missing = anthropic.post("/v1/messages", json={"model": "no-such-model", "max_tokens": 5, "messages": QUESTION})
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'no-such-model' not found"},
    }
    bad_json = anthropic.post("/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["type"] == "error" and bad_json.json()["error"]["type"] == "invalid_request_error"
    no_max = anthropic.post("/v1/messages", json={"model": MODEL, "messages": QUESTION})
    assert no_max.status_code == 400
    assert "max_tokens" in no_max.json()["error"]["message"]
    unsupported = [{"role": "user", "content": [{"type": "document", "source": {}}]}]
    block = anthropic.post("/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": unsupported})
    assert block.status_code == 400
    assert "document" in block.json()["error"]["message"]
