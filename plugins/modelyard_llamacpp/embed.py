"""Embedding models on llama.cpp: a context of their own, made with `embedding=True`, pooled as the GGUF says.

A GGUF is an embedding model when its header names a pooling type (`<arch>.pooling_type`, which
convert_hf_to_gguf.py writes for BERT-like encoders) or its architecture is an encoder llama.cpp only
embeds with. Several inputs share one batch: llama-cpp-python's `embed` packs sequences into a batch of
up to `n_batch` tokens and pools each one, so 32 short inputs cost a few decodes, not 32.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from modelyard.plugin import CONTEXT_EXCEEDED, BadRequest, Completion, Embeddings, Event, LoadedModel, ModelView

# Architectures llama.cpp runs as encoders only (llama-arch.cpp): they cannot generate text.
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert"})


def is_embedding_model(metadata: Mapping[str, Any]) -> bool:
    architecture = str(metadata.get("general.architecture", ""))
    return architecture in ENCODER_ARCHITECTURES or metadata.get(f"{architecture}.pooling_type") is not None


class LlamaCppEmbeddingModel(LoadedModel):
    """An embedding model loaded with `embedding=True` (its own context: pooled outputs, no KV cache reuse)."""

    def __init__(self, llm: Any, model: ModelView, n_ctx: int, size: int) -> None:
        self.llm = llm
        self.name = model.name
        self.n_ctx = n_ctx
        self.context_length = n_ctx
        self.size = size
        self._lock = threading.Lock()  # one llama.cpp context: one embedding call at a time

    def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        raise BadRequest(f'"{self.name}" does not support generate')

    async def embed(self, inputs: list[str], *, truncate: bool) -> Embeddings:
        return await asyncio.to_thread(self._embed, inputs, truncate)

    async def close(self) -> None:
        await asyncio.to_thread(self.llm.close)

    def _embed(self, inputs: list[str], truncate: bool) -> Embeddings:
        llm = self.llm
        # An encoder sees the whole input in one batch: the context and the batch both bound its length.
        limit = min(self.n_ctx, llm.n_batch)
        counts = [len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)) for text in inputs]
        if not truncate and any(count > limit for count in counts):
            raise BadRequest(CONTEXT_EXCEEDED)
        with self._lock:
            vectors = llm.embed(inputs, normalize=False, truncate=True)
        return Embeddings(vectors=vectors, prompt_eval_count=sum(min(count, limit) for count in counts))
