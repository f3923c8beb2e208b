"""What llama-cpp-python's batched decode gains by itself, with no server: the ceiling for issue 11's
"N streams over one stream" ratio. Nothing is asserted:

    uv run python tests/benchmarks/batched_decode.py [--sequences 1 2 4 8] [--steps 64] [--threads 2] [--flash-attn on|off]

For each N, a context with N sequences (a KV stream each, as the llama.cpp backend makes it) evaluates N
copies of a chat prompt, then times `--steps` decode steps of one token per sequence (greedy by argmax).
Prints the median milliseconds per step, tokens/s and the ratio to one sequence.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp
import numpy

from modelyard.store.bundled import smollm2_gguf
from modelyard_llamacpp import LlamaCppSettings, default_threads

PROMPT = b"<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"


def step_seconds(sequences: int, steps: int, threads: int, flash_attn: bool) -> float:
    lib = llama_cpp.llama_cpp
    llm = llama_cpp.Llama(
        str(smollm2_gguf()), n_ctx=64, n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn, verbose=False
    )
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2048 * sequences, 512, 512, sequences
    params.kv_unified = False
    llm._ctx.close()
    ctx = lib.llama_init_from_model(llm._model.model, params)
    batch = lib.llama_batch_init(512, 0, 1)
    vocabulary = llm.n_vocab()
    prompt = llm.tokenize(PROMPT, special=True)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:
        for index, (token, position, sequence, logits) in enumerate(items):
            batch.token[index], batch.pos[index], batch.logits[index] = token, position, logits
            batch.n_seq_id[index], batch.seq_id[index][0] = 1, sequence
        batch.n_tokens = len(items)
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(row: int) -> int:
        return int(numpy.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, row), shape=(vocabulary,)).argmax())

    try:
        last = len(prompt) - 1
        decode(
            [(token, position, s, position == last) for s in range(sequences) for position, token in enumerate(prompt)]
        )
        tokens = [argmax((s + 1) * len(prompt) - 1) for s in range(sequences)]
        times = []
        for position in range(len(prompt), len(prompt) + steps):
            started = time.perf_counter()
            decode([(tokens[s], position, s, True) for s in range(sequences)])
            times.append(time.perf_counter() - started)
            tokens = [argmax(s) for s in range(sequences)]
        return statistics.median(times[4:])  # the first steps warm up
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        default="on" if LlamaCppSettings().flash_attn else "off",
        help="the kernel (default: the llama.cpp backend's)",
    )
    arguments = parser.parse_args()
    print("| sequences | ms per step | tokens/s | x 1 sequence |\n|---:|---:|---:|---:|")
    single = None
    for sequences in arguments.sequences:
        seconds = step_seconds(sequences, arguments.steps, arguments.threads, arguments.flash_attn == "on")
        rate = sequences / seconds
        single = single or rate
        print(f"| {sequences} | {1000 * seconds:.2f} | {rate:.1f} | {rate / single:.2f} |")
    print(f"load average: {' '.join(f'{value:.1f}' for value in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
