"""What a router (a modelyard running only the upstream backend) costs, measured in one run: reported,
never asserted, and out of the default run (--benchmark-skip):

    uv run pytest tests/benchmarks/test_router_overhead.py --benchmark-only -s

1. A stream through the router against the same llama.cpp upstream directly, in paired rounds (one direct
   stream, then one routed), so the machine's drift cancels in each pair: the medians of the paired
   time-to-first-token difference and decode-rate ratio (targets: within 5 ms, and >= 0.97x).
2. Two llama.cpp upstreams, each pinned to its own core (`taskset -c 0` / `-c 1`, num_thread 1): 8 concurrent
   streams through the router over both against the same 8 sent to one of them alone (target: >= 1.8x the
   aggregate tokens/s). The router and the client need CPU too: on a machine with two cores they take it
   from the upstreams, so measure this on one with at least four.

Numbers measured on a loaded machine mean little: each test prints the load average with its figures.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard_conformance.launcher import ServerProcess, free_port

SMOLLM2 = "smollm2:135m"
ROUTED = "routed"
TOKENS = 96
ROUNDS = 12
STREAMS = 8
PROMPT = "Write a long story about a lighthouse keeper and the sea."
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": TOKENS, "num_thread": 1}
UPSTREAM_ENV = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2}


class Timing:
    """One streamed chat by the client's clock: seconds from the request to the first and the last token."""

    def __init__(self, first: float, last: float, count: int) -> None:
        self.first, self.last, self.count = first, last, count

    @property
    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first)


def timed_stream(url: str, model: str, options: dict[str, object] = OPTIONS) -> Timing:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "options": options}
    # TCP_NODELAY: httpx's sync transport sends a request's headers and body in two writes, and without it
    # Nagle's algorithm holds the body until the server's delayed ACK (about 40 ms on Linux), on either path.
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    stamps = []
    with httpx.Client(transport=transport, timeout=600) as client:
        started = time.perf_counter()
        with client.stream("POST", url + "/api/chat", json=body) as response:
            for line in response.iter_lines():
                if json.loads(line).get("message", {}).get("content"):
                    stamps.append(time.perf_counter())
    return Timing(stamps[0] - started, stamps[-1] - started, len(stamps))


class PinnedServer(ServerProcess):
    """`modelyard serve` under `taskset -c <core>`: it and every thread it starts run on that core only."""

    def __init__(self, models: Path, core: int, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = models.parent / f"server-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **env, "OLLAMA_HOST": f"127.0.0.1:{self.port}", "MODELYARD_MODELS": str(models)}
        self._log = open(self.log_path, "wb")
        command = ["taskset", "-c", str(core), sys.executable, "-m", "modelyard", "serve"]
        self.process = subprocess.Popen(command, env=environment, stdout=self._log, stderr=subprocess.STDOUT)


def router(tmp: Path, *upstreams: str) -> ServerProcess:
    """A modelyard with only the upstream backend, whose pool `routed` is SmolLM2 on `upstreams`."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "upstream.toml"
    lines = ["[[pool]]", f'model = "{ROUTED}"', f'upstream_model = "{SMOLLM2}"']
    for url in upstreams:
        lines += ["[[pool.upstream]]", f'url = "{url}"']
    config.write_text("\n".join(lines) + "\n")
    env = {
        "MODELYARD_BACKENDS": "upstream",
        "MODELYARD_BUNDLED_MODELS": "none",
        "MODELYARD_UPSTREAM_CONFIG": str(config),
    }
    return ServerProcess(tmp / "models", env)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux's /proc, as on the test machines)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg()) + f" on {os.cpu_count()} cores"


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("router-bench")
    cores = os.cpu_count() or 1
    servers = (
        PinnedServer(tmp / "a" / "models", 0, UPSTREAM_ENV),
        PinnedServer(tmp / "b" / "models", 1 % cores, UPSTREAM_ENV),
    )
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("prompt", ["evaluated", "cached"])
def test_a_stream_through_the_router_against_the_same_upstream_direct(benchmark, pinned, tmp_path, prompt):
    """`evaluated`: seeded, so the upstream evaluates the whole prompt each time (a new conversation).
    `cached`: unseeded, so both paths take the same prompt from the upstream's cache and the first token
    comes in milliseconds: the router's own share of it is not buried under the prompt's evaluation, whose
    time varies by more than 5 ms from one request to the next on a shared machine."""
    upstream = pinned[0]
    options = OPTIONS if prompt == "evaluated" else {key: value for key, value in OPTIONS.items() if key != "seed"}
    with router(tmp_path, upstream.url) as hub:
        timed_stream(upstream.url, SMOLLM2, options)  # load the model, warm both paths
        timed_stream(hub.url, ROUTED, options)
        direct: list[Timing] = []
        routed: list[Timing] = []

        def one_round() -> None:
            direct.append(timed_stream(upstream.url, SMOLLM2, options))
            routed.append(timed_stream(hub.url, ROUTED, options))

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    pairs = list(zip(routed, direct, strict=True))
    benchmark.extra_info.update(
        prompt=prompt,
        direct_ttft_ms=1000 * statistics.median(t.first for t in direct),
        routed_ttft_ms=1000 * statistics.median(t.first for t in routed),
        ttft_extra_ms=1000 * statistics.median(mine.first - theirs.first for mine, theirs in pairs),
        direct_tokens_per_s=statistics.median(t.rate for t in direct),
        routed_tokens_per_s=statistics.median(t.rate for t in routed),
        decode_rate_ratio=statistics.median(mine.rate / theirs.rate for mine, theirs in pairs),
        load_average=load_average(),
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
    assert all(t.count > 1 for t in direct + routed)


def aggregate_rate(url: str, model: str) -> tuple[float, int]:
    """Tokens per second of STREAMS concurrent streams (all tokens over the wall time), and the tokens."""
    timings: list[Timing] = []
    threads = [threading.Thread(target=lambda: timings.append(timed_stream(url, model))) for _ in range(STREAMS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = sum(t.count for t in timings)
    return tokens / (time.perf_counter() - started), tokens


def test_eight_streams_over_two_pinned_upstreams_against_one(benchmark, pinned, tmp_path):
    first, second = pinned
    with router(tmp_path, first.url, second.url) as hub:
        for server in pinned:
            timed_stream(server.url, SMOLLM2, {**OPTIONS, "num_predict": 2})  # load the model on both
        results: dict[str, float] = {}

        def measure() -> None:
            results["alone"], alone_tokens = aggregate_rate(first.url, SMOLLM2)
            cpu_before = cpu_seconds(hub.process.pid)
            results["routed"], routed_tokens = aggregate_rate(hub.url, ROUTED)
            results["router_cpu_ms_per_token"] = 1000 * (cpu_seconds(hub.process.pid) - cpu_before) / routed_tokens
            assert alone_tokens == routed_tokens > STREAMS  # greedy: the same answers either way

        benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(
        one_upstream_tokens_per_s=results["alone"],
        two_through_the_router_tokens_per_s=results["routed"],
        ratio=results["routed"] / results["alone"],
        # What the router spends per streamed token: on 2 cores it comes out of the pinned upstreams.
        router_cpu_ms_per_token=results["router_cpu_ms_per_token"],
        load_average=load_average(),
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
