"""The onnx backend's streamed decode rate and time to first token against raw onnxruntime-genai on the
same folder, and against the llama.cpp backend on the same SmolLM2 weights (the GGUF the ONNX model was
converted from): same prompt text, greedy decoding, interleaved in one run.

    uv run pytest tests/benchmarks/test_onnx_decode.py --benchmark-only -s

The ONNX model is the real SmolLM2 converted once and cached (tests/onnx/conftest.py says where), in
int4 (the size of the Q4_1 GGUF) and in int8 (what the tests use: nearly the GGUF's own weights).
Targets (reported, never asserted): decode rate >= 0.97x raw, time to first token <= raw + 10 ms.
prompt_eval_duration, the backend's own time to its first token, is reported beside the client-side
time to first token, which includes HTTP and the core.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.models import create_from_folder

from modelyard.runtime.messages import Message
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import read_header
from modelyard.templates.chat_template import ChatTemplate
from modelyard_conformance.launcher import ServerProcess
from modelyard_onnx import convert

GGUF_MODEL = "smollm2:135m"
ONNX_MODEL = "smollm2-onnx:135m"
TOKENS = 128
ROUNDS = 5
PROMPT = "Write a long story about a lighthouse keeper and the sea."


class Timing:
    def __init__(
        self, first: float, last: float, count: int, engine_first: float | None = None, engine_rate: float | None = None
    ) -> None:
        self.first, self.last, self.count = first, last, count
        self.engine_first = first if engine_first is None else engine_first  # the backend's own share
        self.engine_rate = engine_rate  # tokens/s by the backend's own clock (eval_count / eval_duration)

    @property
    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first)


@pytest.fixture(scope="module", params=["int4", "int8"])
def folder(request: pytest.FixtureRequest) -> Path:
    cache = Path(os.environ.get("MODELYARD_TEST_CACHE") or Path.home() / ".cache" / "modelyard")
    return convert.cached_conversion(smollm2_gguf(), cache, precision=request.param)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[ServerProcess]:
    env = {"MODELYARD_BACKENDS": "onnx,llamacpp", "MODELYARD_BUNDLED_MODELS": GGUF_MODEL}
    with ServerProcess(tmp_path_factory.mktemp("bench-onnx") / "models", env) as process:
        created = create_from_folder(process.url, ONNX_MODEL, folder)
        assert created.status_code == 200, created.text
        yield process


def rendered_prompt() -> str:
    template = str(read_header(smollm2_gguf()).metadata["tokenizer.chat_template"])
    return ChatTemplate(template).render([Message(role="user", content=PROMPT)])


def time_server(url: str, model: str, prompt: str) -> Timing:
    body = {
        "model": model,
        "prompt": prompt,
        "raw": True,
        "options": {"temperature": 0, "seed": 1, "num_predict": TOKENS},
    }
    stamps = []
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        with client.stream("POST", url + "/api/generate", json=body) as response:
            for line in response.iter_lines():
                if not line:
                    continue
                chunk = json.loads(line)
                if not chunk["done"]:
                    stamps.append(time.perf_counter())
                else:
                    prompt_eval = chunk["prompt_eval_duration"] / 1e9
                    engine_rate = (chunk["eval_count"] - 1) / (chunk["eval_duration"] / 1e9)
    return Timing(stamps[0] - started, stamps[-1] - started, len(stamps), prompt_eval, engine_rate)


def time_raw(og, engine, tokenizer, prompt: str) -> Timing:
    """What an application using onnxruntime-genai directly does: encode, generate, stream-decode."""
    stamps = []
    started = time.perf_counter()
    tokens = tokenizer.encode(prompt)
    params = og.GeneratorParams(engine)
    params.set_search_options(max_length=len(tokens) + TOKENS, do_sample=False)
    generator = og.Generator(engine, params)
    stream = tokenizer.create_stream()
    generator.append_tokens(tokens)
    eos = set(int(t) for t in tokenizer.eos_token_ids)
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in eos:
            break
        stream.decode(token)
        stamps.append(time.perf_counter())
    del generator
    return Timing(stamps[0] - started, stamps[-1] - started, len(stamps))


def test_onnx_decode_rate_and_first_token_against_raw_and_llama_cpp(benchmark, server, folder):
    import onnxruntime_genai as og

    prompt = rendered_prompt()
    engine = og.Model(str(folder))
    tokenizer = og.Tokenizer(engine)
    for model in (ONNX_MODEL, GGUF_MODEL):  # warm-up: load the models
        time_server(server.url, model, prompt)
    time_raw(og, engine, tokenizer, prompt)
    ours: list[Timing] = []
    raw: list[Timing] = []
    llama: list[Timing] = []

    def one_round() -> None:
        ours.append(time_server(server.url, ONNX_MODEL, prompt))
        raw.append(time_raw(og, engine, tokenizer, prompt))
        llama.append(time_server(server.url, GGUF_MODEL, prompt))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)

    def rate(timings: list[Timing]) -> float:
        return statistics.median(t.rate for t in timings)

    def ttft_ms(timings: list[Timing]) -> float:
        return 1000 * statistics.median(t.first for t in timings)

    def engine_ms(timings: list[Timing]) -> float:
        return 1000 * statistics.median(t.engine_first for t in timings)

    benchmark.extra_info.update(
        onnx_server_tokens_per_s=rate(ours),
        onnx_raw_tokens_per_s=rate(raw),
        llamacpp_server_tokens_per_s=rate(llama),
        decode_rate_ratio_vs_raw=rate(ours) / rate(raw),
        decode_rate_ratio_vs_llamacpp=rate(ours) / rate(llama),
        onnx_server_ttft_ms=ttft_ms(ours),
        onnx_raw_ttft_ms=ttft_ms(raw),
        llamacpp_server_ttft_ms=ttft_ms(llama),
        ttft_extra_ms_vs_raw=ttft_ms(ours) - ttft_ms(raw),
        # prompt_eval_duration: from the backend's start to its first token, without HTTP and the core.
        onnx_server_prompt_eval_ms=engine_ms(ours),
        llamacpp_server_prompt_eval_ms=engine_ms(llama),
        tokens=[t.count for t in ours[:1] + raw[:1] + llama[:1]],
        cores=len(os.sched_getaffinity(0)),
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=2))
    assert all(t.count > 1 for t in ours + raw + llama)
