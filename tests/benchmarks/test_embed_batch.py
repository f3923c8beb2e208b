"""Embeddings of 32 short inputs in one /api/embed call against 32 calls of one input each, on the bundled
all-minilm, interleaved in one run.

    uv run pytest tests/benchmarks/test_embed_batch.py --benchmark-only -s

Target (reported, never asserted): one call takes less time than 32 (a ratio below 1).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from modelyard_conformance.launcher import ServerProcess

MODEL = "all-minilm"
INPUTS = [f"Sentence number {index} is about a lighthouse by the sea." for index in range(32)]
ROUNDS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": "all-minilm:latest"}
    with ServerProcess(tmp_path_factory.mktemp("embed-bench") / "models", env) as server:
        yield server


def test_32_inputs_in_one_call_against_32_calls(benchmark, server):
    batched: list[float] = []
    separate: list[float] = []
    with httpx.Client(base_url=server.url, timeout=300) as http:
        http.post("/api/embed", json={"model": MODEL, "input": "warm up"}).raise_for_status()

        def one_round() -> None:
            started = time.perf_counter()
            answer = http.post("/api/embed", json={"model": MODEL, "input": INPUTS})
            batched.append(time.perf_counter() - started)
            assert len(answer.json()["embeddings"]) == 32
            started = time.perf_counter()
            for text in INPUTS:
                http.post("/api/embed", json={"model": MODEL, "input": text}).raise_for_status()
            separate.append(time.perf_counter() - started)

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    one_call, many_calls = statistics.median(batched), statistics.median(separate)
    benchmark.extra_info.update(
        {
            "one_call_of_32_s": round(one_call, 4),
            "32_calls_s": round(many_calls, 4),
            "ratio_one_call_to_32_calls": round(one_call / many_calls, 3),
        }
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
