"""Four concurrent /api/embed calls against the same four one after another, on the bundled all-minilm with
OLLAMA_NUM_PARALLEL=4 (concurrent calls share the engine's rounds: plugins/modelyard_llamacpp/embed.py),
interleaved in one run.

    uv run pytest tests/benchmarks/test_concurrent_embed.py --benchmark-only -s

Reported, never asserted: the time of the four concurrent calls over the time of the four in a row (below 1
when they share the engine's calls rather than queue), medians of paired rounds, with the load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from modelyard_conformance.launcher import ServerProcess

MODEL = "all-minilm"
CALLS = 4
ROUNDS = 7


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "MODELYARD_BACKENDS": "llamacpp",
        "MODELYARD_BUNDLED_MODELS": "all-minilm:latest",
        "OLLAMA_NUM_PARALLEL": str(CALLS),
    }
    with ServerProcess(tmp_path_factory.mktemp("embed-concurrent") / "models", env) as server:
        yield server


@pytest.mark.parametrize("per_call", [1, 8])
def test_four_concurrent_embed_calls_against_four_in_a_row(benchmark, server, per_call):
    inputs = [
        [f"Call {call}, sentence {index}: a lighthouse by the sea." for index in range(per_call)]
        for call in range(CALLS)
    ]
    together: list[float] = []
    in_a_row: list[float] = []

    async def concurrently(client: httpx.AsyncClient) -> None:
        answers = await asyncio.gather(
            *(client.post("/api/embed", json={"model": MODEL, "input": texts}) for texts in inputs)
        )
        assert all(len(answer.json()["embeddings"]) == per_call for answer in answers)

    async def one_round() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            started = time.perf_counter()
            for texts in inputs:
                (await client.post("/api/embed", json={"model": MODEL, "input": texts})).raise_for_status()
            in_a_row.append(time.perf_counter() - started)
            started = time.perf_counter()
            await concurrently(client)
            together.append(time.perf_counter() - started)

    httpx.post(server.url + "/api/embed", json={"model": MODEL, "input": "warm up"}, timeout=300).raise_for_status()
    benchmark.pedantic(lambda: asyncio.run(one_round()), rounds=ROUNDS, iterations=1)
    paired = [a / b for a, b in zip(together, in_a_row, strict=True)]
    benchmark.extra_info.update(
        {
            "inputs_per_call": per_call,
            "four_concurrent_s": round(statistics.median(together), 4),
            "four_in_a_row_s": round(statistics.median(in_a_row), 4),
            "ratio_concurrent_to_in_a_row": round(statistics.median(paired), 3),
            "load_average": round(os.getloadavg()[0], 1),
        }
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
