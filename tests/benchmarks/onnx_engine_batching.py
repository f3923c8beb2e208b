"""onnxruntime-genai's continuous-batching `Engine` against its one-request `Generator`, on the converted
SmolLM2 (int8, built once and cached), greedy, in one run; nothing is asserted:

    uv run python tests/benchmarks/onnx_engine_batching.py [--tokens 64] [--rounds 2]

Prints tokens/s for one request through the Generator (what the onnx backend runs today), and for 1, 2 and
4 concurrent requests through the Engine (all tokens over the time to the last one). docs/onnx.md says
why the backend keeps the Generator.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy
import onnxruntime_genai as og

from modelyard.store.bundled import smollm2_gguf
from modelyard_onnx import convert


def prompt(tokenizer: og.Tokenizer, index: int) -> list[int]:
    text = f"<|im_start|>user\nWrite a long story about subject number {index}.<|im_end|>\n<|im_start|>assistant\n"
    return [int(token) for token in tokenizer.encode(text)]


def generator_rate(model: og.Model, tokenizer: og.Tokenizer, tokens: int) -> float:
    tokens_in = prompt(tokenizer, 0)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens_in) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens_in)
    started, count = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        count += 1
    return count / (time.perf_counter() - started)


def engine_rate(engine: og.Engine, tokenizer: og.Tokenizer, streams: int, tokens: int) -> float:
    requests = []
    for index in range(streams):
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_temperature(0.0)
        options.set_max_generated_tokens(tokens)
        request.begin_turn(numpy.asarray(prompt(tokenizer, index), dtype=numpy.int32), options)
        requests.append(request)
    events = engine.create_event_buffer(64)
    started, count = time.perf_counter(), 0
    while engine.has_pending_requests():
        count += sum(1 for event in engine.run(events) if event.flags & og.EngineEventFlags.TOKEN)
    elapsed = time.perf_counter() - started
    for request in requests:
        request.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    cache = Path(os.environ.get("MODELYARD_TEST_CACHE") or Path.home() / ".cache" / "modelyard")
    folder = convert.cached_conversion(smollm2_gguf(), cache, precision="int8")
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    engine = og.Engine(model)
    print(f"Engine capabilities: configured_max_batch_size {engine.get_capabilities().configured_max_batch_size}")
    rows = {
        "Generator, 1 request": [generator_rate(model, tokenizer, arguments.tokens) for _ in range(arguments.rounds)]
    }
    for streams in (1, 2, 4):
        rates = [engine_rate(engine, tokenizer, streams, arguments.tokens) for _ in range(arguments.rounds)]
        rows[f"Engine, {streams} concurrent"] = rates
    single = statistics.median(rows["Generator, 1 request"])
    print("| path | tokens/s (median) | x the Generator |\n|---|---|---|")
    for name, rates in rows.items():
        print(f"| {name} | {statistics.median(rates):.1f} | {statistics.median(rates) / single:.2f} |")
    print(f"load average: {' '.join(f'{value:.1f}' for value in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
