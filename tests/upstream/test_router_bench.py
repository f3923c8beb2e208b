"""What a router costs, measured in one run (reported, never asserted; skipped by the default run's
--benchmark-skip like tests/benchmarks):

    uv run pytest tests/upstream/test_router_bench.py --benchmark-only -s

1. A stream through the router against the same llama.cpp upstream directly, interleaved: time to first
   token and decode rate (targets: within 5 ms, and >= 0.97x).
2. Two llama.cpp upstreams, each pinned to its own core (sched_setaffinity, num_thread 1): 8 concurrent
   streams through the router against the same 8 sent to one of them alone (target: >= 1.8x tokens/s).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from routing import SMOLLM2, pool, router

from modelyard_conformance.launcher import ServerProcess

TOKENS = 96
ROUNDS = 5
PROMPT = "Write a long story about a lighthouse keeper and the sea."
OPTIONS = {"temperature": 0, "num_predict": TOKENS}


def timed_stream(url: str, model: str, options: dict[str, object]) -> tuple[float, float, float, int]:
    """(start, first token, last token, tokens) of one streamed chat, by the client's clock."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "options": options}
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    # TCP_NODELAY: httpx's sync transport sends a request's headers and body in two writes, and without it
    # Nagle's algorithm holds the body until the server's delayed ACK (about 40 ms on Linux), for either path.
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with (
        httpx.Client(transport=transport, timeout=300) as client,
        client.stream("POST", url + "/api/chat", json=body) as response,
    ):
        for line in response.iter_lines():
            chunk = json.loads(line)
            if chunk.get("message", {}).get("content"):
                last = time.perf_counter()
                first = first or last
                count += 1
    return started, first, last, count


def llama_upstream(tmp: Path, core: int | None = None) -> ServerProcess:
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2}
    server = ServerProcess(tmp / "models", env)
    if core is not None:  # before the interpreter starts any thread: every thread it makes inherits it
        os.sched_setaffinity(server.process.pid, {core})
    return server


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("bench")
    servers = (llama_upstream(tmp / "a", 0), llama_upstream(tmp / "b", 1 % (os.cpu_count() or 1)))
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_router_overhead(upstreams, tmp_path, benchmark):
    upstream = upstreams[0]
    with router(tmp_path, pool("routed", upstream.url, upstream_model=SMOLLM2)) as hub:

        def measure() -> None:
            options = {**OPTIONS, "num_thread": 1}
            for url, model in ((upstream.url, SMOLLM2), (hub.url, "routed")):
                timed_stream(url, model, options)  # load and warm both paths
            direct_ttft, routed_ttft, direct_rate, routed_rate = [], [], [], []
            for _ in range(ROUNDS):
                for url, model, ttfts, rates in (
                    (upstream.url, SMOLLM2, direct_ttft, direct_rate),
                    (hub.url, "routed", routed_ttft, routed_rate),
                ):
                    started, first, last, count = timed_stream(url, model, options)
                    ttfts.append((first - started) * 1000)
                    rates.append((count - 1) / (last - first))
            ttft_direct, ttft_routed = statistics.median(direct_ttft), statistics.median(routed_ttft)
            rate_direct, rate_routed = statistics.median(direct_rate), statistics.median(routed_rate)
            print(
                f"\nTTFT median of {ROUNDS}: direct {ttft_direct:.1f} ms, routed {ttft_routed:.1f} ms "
                f"(+{ttft_routed - ttft_direct:.1f} ms); decode: direct {rate_direct:.1f} tok/s, routed "
                f"{rate_routed:.1f} tok/s ({rate_routed / rate_direct:.3f}x)"
            )

        benchmark.pedantic(measure, rounds=1, iterations=1)


def aggregate_rate(url: str, model: str, streams: int) -> float:
    """Tokens per second of `streams` concurrent streams, all tokens over the wall time."""
    results: list[tuple[float, float, float, int]] = []
    options = {**OPTIONS, "num_thread": 1}

    def one() -> None:
        results.append(timed_stream(url, model, options))

    threads = [threading.Thread(target=one) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(result[3] for result in results) / (time.perf_counter() - started)


def test_two_pinned_upstreams_against_one(upstreams, tmp_path, benchmark):
    first, second = upstreams
    with router(tmp_path, pool("routed", first.url, second.url, upstream_model=SMOLLM2)) as hub:

        def measure() -> None:
            for server in upstreams:
                timed_stream(server.url, SMOLLM2, {**OPTIONS, "num_thread": 1, "num_predict": 2})  # load both
            alone = aggregate_rate(first.url, SMOLLM2, 8)
            routed = aggregate_rate(hub.url, "routed", 8)
            print(
                f"\n8 streams: one pinned upstream {alone:.1f} tok/s, two through the router {routed:.1f} tok/s "
                f"({routed / alone:.2f}x)"
            )

        benchmark.pedantic(measure, rounds=1, iterations=1)
