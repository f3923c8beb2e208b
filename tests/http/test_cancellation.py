"""A client that goes away stops generation at once and frees the model (stream and non-stream)."""

from __future__ import annotations

import json
import socket
import time

import httpx

MODEL = "smollm2:135m"
LONG = {"num_predict": 3000, "temperature": 1.0, "num_ctx": 4096}


def per_token_ns(llama_server) -> float:
    body = {"model": MODEL, "prompt": "Tell me a story.", "stream": False, "options": {"num_predict": 20}}
    final = httpx.post(llama_server.url + "/api/generate", json=body, timeout=120).json()
    return final["eval_duration"] / final["eval_count"]


def next_request_wait_ns(llama_server) -> int:
    """total_duration of a one-token request: it includes any wait for the model to be free."""
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1, **{"num_ctx": 4096}}}
    return httpx.post(llama_server.url + "/api/generate", json=body, timeout=300).json()["total_duration"]


def test_dropping_a_stream_frees_the_model(llama_server):
    token_ns = per_token_ns(llama_server)
    body = {"model": MODEL, "prompt": "Tell me a very long story about dragons.", "options": LONG}
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", llama_server.url + "/api/generate", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
    # The abandoned request would have needed about 3000 tokens more; the next one is served long before.
    assert next_request_wait_ns(llama_server) < 0.25 * 3000 * token_ns


def test_dropping_a_non_streamed_request_frees_the_model(llama_server):
    token_ns = per_token_ns(llama_server)
    payload = json.dumps(
        {"model": MODEL, "prompt": "Tell me a very long story about dragons.", "stream": False, "options": LONG}
    ).encode()
    host, port = llama_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        time.sleep(1.0)  # generation is under way
    assert next_request_wait_ns(llama_server) < 0.25 * 3000 * token_ns
