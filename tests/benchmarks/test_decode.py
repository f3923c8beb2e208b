"""The server's streamed decode rate and time to first token against raw llama-cpp-python, same GGUF,
same prompt tokens, same greedy decoding, interleaved in one run.

    uv run pytest tests/benchmarks --benchmark-only -s

Targets (reported, never asserted): decode rate >= 0.97x raw, time to first token <= raw + 10 ms, both as
the median over paired rounds (one server request, then one raw completion).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from modelyard.runtime.messages import Message
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import read_header
from modelyard.templates.chat_template import ChatTemplate
from modelyard_conformance.launcher import ServerProcess
from modelyard_llamacpp import default_threads

MODEL = "smollm2:135m"
TOKENS = 128
ROUNDS = 12  # rounds are paired (server, then raw) so the machine's drift cancels in each pair
PROMPT = "Write a long story about a lighthouse keeper and the sea."


class Timing:
    def __init__(self, first: float, last: float, count: int) -> None:
        self.first, self.last, self.count = first, last, count

    @property
    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL, "MODELYARD_LLAMACPP_FLASH_ATTN": "true"}
    with ServerProcess(tmp_path_factory.mktemp("bench") / "models", env) as process:
        yield process


def rendered_prompt() -> str:
    template = str(read_header(smollm2_gguf()).metadata["tokenizer.chat_template"])
    return ChatTemplate(template).render([Message(role="user", content=PROMPT)])


def time_server(url: str, prompt: str) -> Timing:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "raw": True,
        "options": {"temperature": 0, "seed": 1, "num_predict": TOKENS},
    }
    stamps = []
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        with client.stream("POST", url + "/api/generate", json=body) as response:
            for line in response.iter_lines():
                if line and not json.loads(line)["done"]:
                    stamps.append(time.perf_counter())
    return Timing(stamps[0] - started, stamps[-1] - started, len(stamps))


def time_raw(llm, prompt: str) -> Timing:
    llm.reset()  # the server's seeded requests evaluate the whole prompt too
    stamps = []
    started = time.perf_counter()
    for _ in llm.create_completion(prompt, max_tokens=TOKENS, temperature=0, stream=True):
        stamps.append(time.perf_counter())
    return Timing(stamps[0] - started, stamps[-1] - started, len(stamps))


def test_decode_rate_and_first_token_against_raw_llama_cpp(benchmark, server):
    from llama_cpp import Llama

    prompt = rendered_prompt()
    llm = Llama(
        str(smollm2_gguf()),
        n_ctx=4096,
        n_threads=default_threads(),
        n_threads_batch=default_threads(),
        flash_attn=True,  # as the server (the fixture's environment)
        verbose=False,
    )
    time_server(server.url, prompt)  # warm-up: load the model
    time_raw(llm, prompt)
    ours: list[Timing] = []
    raw: list[Timing] = []

    def one_round() -> None:
        ours.append(time_server(server.url, prompt))
        raw.append(time_raw(llm, prompt))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    llm.close()
    pairs = list(zip(ours, raw, strict=True))
    rate_ratio = statistics.median(mine.rate / theirs.rate for mine, theirs in pairs)
    ttft_extra_ms = 1000 * statistics.median(mine.first - theirs.first for mine, theirs in pairs)
    benchmark.extra_info.update(
        server_tokens_per_s=statistics.median(t.rate for t in ours),
        raw_tokens_per_s=statistics.median(t.rate for t in raw),
        decode_rate_ratio=rate_ratio,
        server_ttft_ms=1000 * statistics.median(t.first for t in ours),
        raw_ttft_ms=1000 * statistics.median(t.first for t in raw),
        ttft_extra_ms=ttft_extra_ms,
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
    assert all(t.count > 1 for t in ours + raw)
