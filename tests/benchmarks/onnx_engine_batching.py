"""onnxruntime-genai's continuous-batching `Engine` against its one-request `Generator`, on the converted
SmolLM2 (int8, built once and cached), greedy, in one run; nothing is asserted:

    uv run python tests/benchmarks/onnx_engine_batching.py [--tokens 64] [--rounds 2]

Prints tokens/s for one request through the Generator (what the onnx backend runs today), and for 1, 2 and
4 concurrent requests through the Engine (all tokens over the time from the start, prompts included, to the
last one); then what happens to
requests that arrive while another decodes: the step at which they get their first token, and the longest
step. docs/onnx.md says why the backend keeps the Generator.
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
    started, count = time.perf_counter(), 0  # the prompt's evaluation counts, as on the Engine
    generator = og.Generator(model, params)
    generator.append_tokens(tokens_in)
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


def late_arrivals(engine: og.Engine, tokenizer: og.Tokenizer, tokens: int) -> tuple[int, int, float]:
    """One request decodes; three more arrive at its 5th step. Returns (the step the first one's turn ended,
    the step the late ones got their first token, the longest step in seconds)."""

    def begin(index: int, count: int) -> og.Request:
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_do_sample(False)
        options.set_max_generated_tokens(count)
        request.begin_turn(numpy.asarray(prompt(tokenizer, 10 + index), dtype=numpy.int32), options)
        return request

    first = begin(0, tokens)
    late: list[og.Request] = []
    events = engine.create_event_buffer(64)
    step, first_ended, late_started, longest = 0, 0, 0, 0.0
    while engine.has_pending_requests():
        started = time.perf_counter()
        happened = list(engine.run(events))
        longest = max(longest, time.perf_counter() - started)
        step += 1
        for event in happened:
            if event.request is first and event.flags & og.EngineEventFlags.TURN_FINISHED:
                first_ended = step
            token = event.flags & og.EngineEventFlags.TOKEN
            if token and not late_started and any(event.request is request for request in late):
                late_started = step
        if step == 5:
            late = [begin(index, 8) for index in range(1, 4)]
    for request in [first, *late]:
        request.close()
    return first_ended, late_started, longest


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
    # A fresh Engine: a batch size it has not run yet shows its first-run cost.
    ended, started, longest = late_arrivals(og.Engine(model), tokenizer, arguments.tokens)
    print(
        f"late arrivals (step 5, while one request decodes {arguments.tokens} tokens): first token at step "
        f"{started}; the running request's turn ended at step {ended}; longest step {longest:.2f} s"
    )
    print(f"load average: {' '.join(f'{value:.1f}' for value in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
