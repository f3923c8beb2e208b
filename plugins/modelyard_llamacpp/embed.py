"""Embedding models on llama.cpp: a context of their own, made with `embedding=True`, pooled as the GGUF says.

A GGUF is an embedding model when its header names a pooling type (`<arch>.pooling_type`, which
convert_hf_to_gguf.py writes for BERT-like encoders) or its architecture is an encoder llama.cpp only
embeds with. Several inputs share one batch: llama-cpp-python's `embed` packs sequences into a batch of
up to `n_batch` tokens and pools each one, so 32 short inputs cost a few decodes, not 32. Concurrent
calls share them too (with OLLAMA_NUM_PARALLEL above 1 the scheduler lets them in together): the inputs of
every call that arrives while a round runs go into the next round's one `embed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from modelyard.plugin import CONTEXT_EXCEEDED, BadRequest, Completion, Embeddings, Event, LoadedModel, ModelView

# Architectures llama.cpp runs as encoders only (llama-arch.cpp): they cannot generate text.
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert"})


def is_embedding_model(metadata: Mapping[str, Any]) -> bool:
    architecture = str(metadata.get("general.architecture", ""))
    return architecture in ENCODER_ARCHITECTURES or metadata.get(f"{architecture}.pooling_type") is not None


class EmbeddingRounds:
    """Concurrent embed calls merged: one engine call per round holds the inputs of every call waiting.

    Runs on the event loop; the engine call runs in a worker thread, one round at a time (one context).
    A call whose client went away before its round is left out of it."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]]) -> None:
        self._embed = embed  # blocking: vectors of the inputs, in order
        self._waiting: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
        self._rounds: asyncio.Task[None] | None = None

    async def embed(self, inputs: list[str]) -> list[list[float]]:
        answer: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((inputs, answer))
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.create_task(self._run())
        return await answer

    async def close(self) -> None:
        """Wait for the round under way (the engine is freed after it)."""
        if self._rounds is not None:
            await asyncio.wait({self._rounds})

    async def _run(self) -> None:
        while self._waiting:
            calls = [(inputs, answer) for inputs, answer in self._waiting if not answer.done()]
            self._waiting = []
            try:
                vectors = await asyncio.to_thread(self._embed, [text for inputs, _ in calls for text in inputs])
            except Exception as exc:  # the round's calls fail together; the next round starts afresh
                for _, answer in calls:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            start = 0
            for inputs, answer in calls:
                if not answer.done():
                    answer.set_result(vectors[start : start + len(inputs)])
                start += len(inputs)


class LlamaCppEmbeddingModel(LoadedModel):
    """An embedding model loaded with `embedding=True` (its own context: pooled outputs, no KV cache reuse)."""

    def __init__(self, llm: Any, model: ModelView, n_ctx: int, size: int, *, parallel: int = 1) -> None:
        self.llm = llm
        self.name = model.name
        self.n_ctx = n_ctx
        self.context_length = n_ctx
        self.size = size
        self.parallel = parallel  # calls let in at once; their inputs share the engine's rounds
        self._rounds = EmbeddingRounds(lambda inputs: llm.embed(inputs, normalize=False, truncate=True))

    def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        raise BadRequest(f'"{self.name}" does not support generate')

    async def embed(self, inputs: list[str], *, truncate: bool) -> Embeddings:
        counts = await asyncio.to_thread(self._token_counts, inputs)
        # An encoder sees the whole input in one batch: the context and the batch both bound its length.
        limit = min(self.n_ctx, self.llm.n_batch)
        if not truncate and any(count > limit for count in counts):
            raise BadRequest(CONTEXT_EXCEEDED)
        vectors = await self._rounds.embed(inputs)
        return Embeddings(vectors=vectors, prompt_eval_count=sum(min(count, limit) for count in counts))

    async def close(self) -> None:
        await self._rounds.close()
        await asyncio.to_thread(self.llm.close)

    def _token_counts(self, inputs: list[str]) -> list[int]:
        return [len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)) for text in inputs]
