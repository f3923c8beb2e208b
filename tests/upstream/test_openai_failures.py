"""A real OpenAI-compatible upstream (llama-cpp-python's own server, running the bundled SmolLM2) that dies or
freezes in the middle of a stream through the router: the client's stream ends with one error line naming
the upstream, and after a kill the next request is refused with an error naming it. The echo upstreams of
test_failover.py cover the same for the `ollama` kind."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from routing import pool, router
from support.external import External, external_server

from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import ServerProcess, free_port

ROUTED = "oa/smollm2"
ALIAS = "smollm2-135m-instruct"  # the server's name for the model
TIMEOUT = 3  # the pool's seconds of silence before a stream is given up (or before its first byte)
LONG = {
    "model": ROUTED,
    "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    "options": {"temperature": 0, "num_predict": 400},
}


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[External]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--port", str(free_port())]
    command += ["--model_alias", ALIAS, "--n_ctx", "2048", "--verbose", "false", "--interrupt_requests", "false"]
    with external_server(command, tmp_path / "llama-cpp-server.log") as server:
        # Its first answer loads and warms the model: the routed one must start within TIMEOUT.
        warm_up = {"model": ALIAS, "messages": LONG["messages"], "max_tokens": 1}
        httpx.post(server.url + "/v1/chat/completions", json=warm_up, timeout=120).raise_for_status()
        yield server


@pytest.fixture
def routed(upstream: External, tmp_path: Path) -> Iterator[ServerProcess]:
    with router(
        tmp_path / "router", pool(ROUTED, upstream.url, timeout=TIMEOUT, upstream_model=ALIAS, kind="openai")
    ) as server:
        yield server


def stream_and_signal(router_url: str, upstream: External, signal_to_send: signal.Signals) -> list[dict[str, object]]:
    """Every NDJSON line of a long streamed chat through the router; `signal_to_send` goes to the upstream's
    process once the first line is here."""
    lines: list[dict[str, object]] = []
    with httpx.stream("POST", router_url + "/api/chat", json=LONG, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 1:
                upstream.process.send_signal(signal_to_send)
    return lines


def test_an_openai_upstream_killed_mid_stream_ends_it_with_an_error_line(upstream, routed):
    lines = stream_and_signal(routed.url, upstream, signal.SIGKILL)
    assert len(lines) >= 2 and lines[0]["message"]["content"]  # type: ignore[index]
    error = str(lines[-1]["error"])
    broke_off = f"upstream {upstream.url} broke off the answer: "
    assert error.startswith(broke_off) or error == f"upstream {upstream.url} ended the answer without its final chunk"
    assert not any("error" in line or line.get("done") for line in lines[:-1])

    # The next request is refused, naming the dead upstream (well within the pool's timeout).
    answer = httpx.post(routed.url + "/api/chat", json={**LONG, "stream": False}, timeout=TIMEOUT)
    assert answer.status_code == 503, answer.text
    assert upstream.url in answer.json()["error"]


def test_an_openai_upstream_that_freezes_mid_stream_hits_the_timeout(upstream, routed):
    try:
        lines = stream_and_signal(routed.url, upstream, signal.SIGSTOP)
    finally:
        upstream.process.send_signal(signal.SIGCONT)  # so that it can be stopped
    assert len(lines) >= 2 and lines[0]["message"]["content"]  # type: ignore[index]
    assert lines[-1] == {"error": f"upstream {upstream.url} stopped answering: nothing for {TIMEOUT} s"}
    assert not any("error" in line or line.get("done") for line in lines[:-1])
