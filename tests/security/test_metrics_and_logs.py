"""GET /metrics read as Prometheus reads it (prometheus-client's own parser) after real requests, and the
request log as an operator reads it: one line per request, text or JSON, with the request id."""

from __future__ import annotations

import json
import threading
import time

import httpx
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
ECHO = {"model": MODEL, "backend": "echo"}


@pytest.fixture
def server(observed_server: ServerProcess) -> ServerProcess:
    return observed_server


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by name and labels."""
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_with_requests_and_carry_model_and_backend(server):
    before = scrape(server.url)
    with ollama.Client(host=server.url) as client:
        streamed = list(client.generate(MODEL, "one two three four", stream=True))
        answer = client.chat(MODEL, messages=[{"role": "user", "content": "five six"}])
        with pytest.raises(ollama.ResponseError):
            client.generate("missing-model", "hi")
    after = scrape(server.url)

    done = streamed[-1]
    prompt_tokens = done.prompt_eval_count + answer.prompt_eval_count
    generated = done.eval_count + answer.eval_count

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("modelyard:prompt_tokens_total", **ECHO) == prompt_tokens
    assert moved("modelyard:generation_tokens_total", **ECHO) == generated
    assert moved("modelyard:request_success_total", finished_reason="stop", **ECHO) == 2
    for histogram in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
    ):
        assert moved(f"modelyard:{histogram}_count", **ECHO) == 2, histogram
    assert moved("modelyard:request_generation_tokens_sum", **ECHO) == generated
    # A stream of n tokens has n - 1 gaps between them (echo sends one word a chunk).
    assert moved("modelyard:inter_token_latency_seconds_count", **ECHO) == (len(streamed) - 2) + (answer.eval_count - 1)
    assert moved("modelyard:e2e_request_latency_seconds_sum", **ECHO) == pytest.approx(
        (done.total_duration + answer.total_duration) / 1e9
    )
    assert moved("modelyard:http_requests_total", route="/api/generate", method="POST", status="200") == 1
    assert moved("modelyard:http_requests_total", route="/api/generate", method="POST", status="404") == 1
    assert moved("modelyard:http_requests_total", route="/api/chat", method="POST", status="200") == 1

    assert value(after, "modelyard:models_loaded", backend="echo") == 1
    assert ("modelyard:model_memory_bytes", frozenset(ECHO.items())) in after
    assert value(after, "modelyard:num_requests_running", **ECHO) == 0
    assert value(after, "modelyard:model_load_time_seconds_count", **ECHO) >= 1


def poll(condition, timeout: float = 30.0) -> None:
    """Wait for a state of the server (not a timed assertion: the deadline only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the state"
        time.sleep(0.02)


def test_running_and_waiting_requests_and_a_client_that_leaves(server):
    long_prompt = " ".join(["word"] * 2000)  # echo takes 0.02 s a word: longer than the test
    lines: list[bytes] = []
    seen_waiting = threading.Event()

    def stream_then_leave() -> None:
        with httpx.stream("POST", server.url + "/api/generate", json={"model": MODEL, "prompt": long_prompt}) as r:
            for line in r.iter_lines():
                lines.append(line)
                if seen_waiting.is_set():
                    return  # the client goes away mid-stream, once the other request was seen waiting

    before = scrape(server.url)
    first = threading.Thread(target=stream_then_leave)
    first.start()
    poll(lambda: len(lines) >= 2)
    second = threading.Thread(
        target=httpx.post,
        args=(server.url + "/api/generate",),
        kwargs={"json": {"model": MODEL, "prompt": "short", "stream": False}, "timeout": 60},
    )
    second.start()  # echo serves one request at a time: this one waits
    try:
        poll(lambda: value(scrape(server.url), "modelyard:num_requests_waiting", **ECHO) == 1)
        assert value(scrape(server.url), "modelyard:num_requests_running", **ECHO) == 1
    finally:
        seen_waiting.set()
        first.join()
        second.join()
    poll(lambda: value(scrape(server.url), "modelyard:num_requests_waiting", **ECHO) == 0)
    after = scrape(server.url)
    aborted = value(after, "modelyard:request_success_total", finished_reason="abort", **ECHO)
    assert aborted - value(before, "modelyard:request_success_total", finished_reason="abort", **ECHO) == 1
    assert len(lines) < 2000  # it did leave early
    queued = value(after, "modelyard:request_queue_time_seconds_sum", **ECHO)
    assert queued - value(before, "modelyard:request_queue_time_seconds_sum", **ECHO) > 0  # it did wait


def log_lines(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]


def test_one_json_log_line_per_request_with_its_request_id(server):
    sent = httpx.post(
        server.url + "/api/generate",
        json={"model": MODEL, "prompt": "log me please", "stream": False},
        headers={"X-Request-Id": "trace-42"},
    )
    assert sent.headers["x-request-id"] == "trace-42"
    made = httpx.get(server.url + "/api/tags", headers={"X-Request-Id": b"bad id with spaces\xe9"})
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32 and made_id != "bad id with spaces"  # a new one in its place

    def line_of(request_id: str) -> dict:
        poll(lambda: any(line.get("request_id") == request_id for line in log_lines(server)))
        return next(line for line in log_lines(server) if line.get("request_id") == request_id)

    line = line_of("trace-42")
    answer = sent.json()
    assert line["logger"] == "modelyard.requests"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/generate", 200)
    assert (line["model"], line["backend"], line["reason"]) == (MODEL, "echo", "stop")
    assert (line["prompt_tokens"], line["eval_tokens"]) == (answer["prompt_eval_count"], answer["eval_count"])
    assert line["total_duration"] == pytest.approx(answer["total_duration"] / 1e9, abs=1e-6)
    assert line["prompt"] == "log me please"  # MODELYARD_LOG_PROMPTS is set for this server
    assert line_of(made_id)["path"] == "/api/tags"
    assert all(set(line) >= {"time", "level", "logger"} for line in log_lines(server))  # every line is JSON


def test_a_llama_cpp_generation_is_measured_with_its_own_counts(llama_server):
    before = scrape(llama_server.url)
    with ollama.Client(host=llama_server.url) as client:
        answer = client.generate(MODEL, "Why is the sky blue?", options={"num_predict": 8, "temperature": 0})
    after = scrape(llama_server.url)
    labels = {"model": MODEL, "backend": "llamacpp"}

    def moved(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert moved("modelyard:prompt_tokens_total") == answer.prompt_eval_count
    assert moved("modelyard:generation_tokens_total") == answer.eval_count == 8
    assert moved("modelyard:request_success_total", finished_reason="length") == 1
    assert moved("modelyard:time_to_first_token_seconds_count") == 1
    assert moved("modelyard:request_decode_time_seconds_sum") == pytest.approx(answer.eval_duration / 1e9)


def test_paths_that_match_no_route_are_logged_and_counted_under_one_label(server):
    before = scrape(server.url)
    paths = [f"/no/such/path/{n}" for n in range(5)]
    for path in paths:
        assert httpx.get(server.url + path, headers={"X-Request-Id": f"lost-{path[-1]}"}).status_code == 404
    assert httpx.request("BREW", server.url + "/api/tags").status_code == 405  # any token is a method to HTTP
    after = scrape(server.url)

    def moved(**labels: str) -> float:
        return value(after, "modelyard:http_requests_total", **labels) - value(
            before, "modelyard:http_requests_total", **labels
        )

    assert moved(route="unmatched", method="GET", status="404") == 5
    assert moved(route="unmatched", method="other", status="405") == 1
    labels = {dict(labels).get("route") for _, labels in after}
    assert not any(path in labels for path in paths)  # one label for them all: a client cannot add series
    poll(lambda: any(line.get("request_id") == "lost-4" for line in log_lines(server)))
    lost = [line for line in log_lines(server) if str(line.get("request_id", "")).startswith("lost-")]
    assert sorted(line["path"] for line in lost) == paths and {line["status"] for line in lost} == {404}
