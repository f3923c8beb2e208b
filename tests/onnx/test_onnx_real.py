"""The real SmolLM2 (converted to ONNX int4 once, cached): sensible text where it matters (`format`), and
a client that goes away frees the model within a token or two (as tests/http/test_cancellation.py does
for llama.cpp)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

LONG = {"num_predict": 3000, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 3}


@pytest.fixture
def url(onnx_server, real_model) -> str:
    return onnx_server.url


def ask(url: str, path: str, body: dict) -> dict:
    response = httpx.post(url + path, json={"stream": False, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_format_json_parses_streamed_and_not(url, real_model):
    body = {
        "model": real_model,
        "prompt": "Describe the sky as JSON with keys color and reason.",
        "format": "json",
        "options": {"temperature": 0, "num_predict": 120},
    }
    answer = ask(url, "/api/generate", body)
    assert isinstance(json.loads(answer["response"]), dict)
    assert answer["done_reason"] == "stop"
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as response:
        text = "".join(json.loads(line)["response"] for line in response.iter_lines() if line)
    assert text == answer["response"]


def test_format_schema_validates(url, real_model):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    messages = [{"role": "user", "content": "Name a big city and its population, as JSON."}]
    answer = ask(
        url,
        "/api/chat",
        {"model": real_model, "messages": messages, "format": schema, "options": {"temperature": 0, "num_predict": 80}},
    )
    jsonschema.validate(json.loads(answer["message"]["content"]), schema)


def test_greedy_answers_make_sense(url, real_model):
    answer = ask(
        url,
        "/api/generate",
        {
            "model": real_model,
            "prompt": "What is the capital of France? Answer in one word.",
            "options": {"temperature": 0, "num_predict": 10},
        },
    )
    assert "Paris" in answer["response"]


def per_token_ns(url: str, model: str) -> float:
    final = ask(
        url,
        "/api/generate",
        {"model": model, "prompt": "Tell me a story.", "options": {"num_predict": 20, "temperature": 0}},
    )
    return final["eval_duration"] / final["eval_count"]


def next_request_wait_ns(url: str, model: str) -> int:
    """total_duration of a one-token request: it includes any wait for the model to be free."""
    return ask(url, "/api/generate", {"model": model, "prompt": "hi", "options": {"num_predict": 1}})["total_duration"]


def test_dropping_a_stream_frees_the_model(url, real_model):
    token_ns = per_token_ns(url, real_model)
    body = {"model": real_model, "prompt": "Tell me a very long story about dragons.", "options": LONG}
    with httpx.Client(timeout=120) as client, client.stream("POST", url + "/api/generate", json=body) as response:
        lines = response.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
    assert next_request_wait_ns(url, real_model) < 0.25 * 3000 * token_ns


def test_dropping_a_non_streamed_request_frees_the_model(url, real_model):
    token_ns = per_token_ns(url, real_model)
    payload = json.dumps(
        {"model": real_model, "prompt": "Tell me a very long story about dragons.", "stream": False, "options": LONG}
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        time.sleep(1.0)  # generation is under way
    assert next_request_wait_ns(url, real_model) < 0.25 * 3000 * token_ns


def test_the_server_answers_while_a_long_prompt_is_evaluated(url, real_model):
    """The binding keeps the GIL during an engine call; the prompt goes in chunks, so other requests wait
    one chunk at most, not the whole prompt."""
    import threading

    result = {}

    def long_prompt() -> None:
        body = {"model": real_model, "prompt": "word " * 600, "options": {"num_predict": 1}}
        result.update(ask(url, "/api/generate", body))

    ask(url, "/api/generate", {"model": real_model, "prompt": "hi", "options": {"num_predict": 1}})  # loaded
    worker = threading.Thread(target=long_prompt)
    worker.start()
    time.sleep(0.3)
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        assert client.get(url + "/api/version").status_code == 200
        answered = time.perf_counter() - started
    worker.join()
    assert result["prompt_eval_count"] > 600
    assert answered < 0.5 * result["prompt_eval_duration"] / 1e9


def test_a_trailing_assistant_message_is_continued(url, real_model):
    """As on llama.cpp: the last assistant turn stays open and the answer goes on from "4,"."""
    counting = [
        {"role": "user", "content": "Count from 1 to 10, separated by commas."},
        {"role": "assistant", "content": "1, 2, 3, 4,"},
    ]
    options = {"temperature": 0, "num_predict": 16}
    answer = ask(url, "/api/chat", {"model": real_model, "messages": counting, "options": options})
    text = answer["message"]["content"]
    assert "5" in text
    assert not text.lstrip().startswith("1,")
    # Continued means no new turn was opened: the prompt is shorter than the same chat answered anew.
    anew = ask(
        url,
        "/api/chat",
        {
            "model": real_model,
            "messages": [*counting, {"role": "user", "content": "Go on."}],
            "options": {"num_predict": 1},
        },
    )
    assert answer["prompt_eval_count"] < anew["prompt_eval_count"]
