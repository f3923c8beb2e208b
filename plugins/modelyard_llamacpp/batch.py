"""Continuous batching: one llama.cpp context serves several requests at once.

One engine thread per loaded model runs steps. A step is one `llama_decode` holding the next token of
every generating sequence plus a chunk of the prompt being evaluated (chunked prefill: a long prompt
does not stall the streams already running). Requests join and leave between steps: a free sequence
slot takes the oldest waiting request (FIFO); a request whose client went away is dropped at the next
step, whether it waits, evaluates its prompt or generates. Each sequence samples with its own sampler
chain, built as llama-cpp-python builds it for one request, so a request's options mean the same.

The KV cache holds `parallel * num_ctx` cells, `num_ctx` for each sequence (llama.cpp's non-unified
cache); TokenLoop caps each request to num_ctx, so a sequence's cells never run out. A slot keeps the tokens
its last request left in the cache: the next request whose prompt starts the same way (a
conversation's next turn, a shared system prompt) goes to that slot and evaluates only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from modelyard.plugin import Event, InternalError, TokenLogprob, TokenLoop, wait_uncancellable

log = logging.getLogger(__name__)

_END = object()

# Prompt tokens a copy of another sequence's cells must save. The copy moves a whole cache stream (num_ctx
# cells); measured on SmolLM2 135M, 2048 cells, 2 cores: about as long as evaluating 1 to 2 prompt tokens
# (tests/benchmarks/concurrent_streams.py --copy-cost). The margin covers larger contexts.
COPY_THRESHOLD = 16


class MemoryApi:
    """The KV cache functions of the installed llama-cpp-python: `llama_memory_seq_*` since 0.3.10 or so,
    `llama_kv_self_seq_*` and `llama_kv_cache_seq_*` before."""

    def __init__(self, lib: Any, ctx: Any) -> None:
        if hasattr(lib, "llama_memory_seq_rm"):
            memory = lib.llama_get_memory(ctx)
            self._remove = lambda seq, start, end: lib.llama_memory_seq_rm(memory, seq, start, end)
            self._copy = lambda source, target: lib.llama_memory_seq_cp(memory, source, target, -1, -1)
            self._clear = lambda: lib.llama_memory_clear(memory, True)
        else:
            prefix = "llama_kv_self" if hasattr(lib, "llama_kv_self_seq_rm") else "llama_kv_cache"
            remove = getattr(lib, f"{prefix}_seq_rm")
            copy = getattr(lib, f"{prefix}_seq_cp")
            clear = getattr(lib, f"{prefix}_clear")
            self._remove = lambda seq, start, end: remove(ctx, seq, start, end)
            self._copy = lambda source, target: copy(ctx, source, target, -1, -1)
            self._clear = lambda: clear(ctx)

    def remove(self, seq_id: int, start: int, end: int = -1) -> bool:
        """Drop a sequence's cells from position `start` (to `end`, -1: the end)."""
        return bool(self._remove(seq_id, start, end))

    def copy(self, source: int, target: int) -> None:
        """Make `target` hold what `source` holds. With a cache stream per sequence llama.cpp copies the
        whole stream (it refuses a part of one), in the next `llama_decode`; trim the target afterwards."""
        self._copy(source, target)

    def clear(self) -> None:
        self._clear()


class Sequence:
    """One request inside the engine: its tokens, sampler chain, progress and where its events go."""

    def __init__(
        self,
        prompt: list[int],
        loop: TokenLoop,
        sampler: Any,
        deliver: Callable[[Any], None],
        released: Callable[[], None],
        *,
        reuse_cache: bool,
    ) -> None:
        self.prompt = prompt
        self.loop = loop
        self.sampler = sampler  # llama-cpp-python's LlamaSampler (a chain)
        self.deliver = deliver  # hands an event (or _END, or an exception) to the request's coroutine
        self.released = released  # tells the request's coroutine the engine has let go of it
        self.reuse_cache = reuse_cache  # seeded requests evaluate their whole prompt (repeatable logits)
        self.cancelled = False
        self.slot: Slot | None = None
        self.evaluated = 0  # prompt tokens in the cache
        self.pending: int | None = None  # the sampled token still to be decoded


class Slot:
    """A sequence id of the context and the tokens its cells hold."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        self.sequence: Sequence | None = None


class BatchEngine:
    """The engine thread of one loaded model and the requests it serves."""

    def __init__(
        self,
        lib: Any,
        ctx: Any,
        vocab: Any,
        *,
        parallel: int,
        batch_size: int,
        copy_threshold: int = COPY_THRESHOLD,
        piece: Callable[[int], bytes],
        count_prompt: Callable[[int, int], None],
        on_close: Callable[[], None],
    ) -> None:
        self._lib = lib
        self._ctx = ctx
        self._vocab = vocab
        self._piece = piece
        self._count_prompt = count_prompt  # (prompt tokens, of those reused from the cache), for the hit rate
        self._on_close = on_close  # frees the context, in the engine thread once it stops
        self._batch_size = batch_size
        self._copy_threshold = copy_threshold
        self._memory = MemoryApi(lib, ctx)
        self._batch = lib.llama_batch_init(batch_size, 0, 1)
        self._slots = [Slot(seq_id) for seq_id in range(parallel)]
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in admission order: the oldest prompt is evaluated first
        self._wake = threading.Condition()
        self._closing = False
        self.copies = 0  # prompt prefixes copied from another sequence's cells
        self._thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self._thread.start()

    # --- the request side (event loop) ------------------------------------------------------------

    async def generate(self, prepare: Callable[[], tuple[list[int], TokenLoop, Any, bool]]) -> AsyncGenerator[Event]:
        """Events of one request. `prepare` (run in a worker thread) gives the prompt, its TokenLoop, the
        sampler chain and whether the cache may be reused."""
        prompt, loop, sampler, reuse_cache = await asyncio.to_thread(prepare)
        if loop.finished:  # nothing to generate (num_predict 0, no room): no need to queue
            for event in loop.finish():
                yield event
            return
        events = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        released: asyncio.Future[None] = events.create_future()

        def deliver(item: Any) -> None:
            try:
                events.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody listens any more
                sequence.cancelled = True

        def settle() -> None:
            if not released.done():
                released.set_result(None)

        def release() -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits any more
                events.call_soon_threadsafe(settle)

        sequence = Sequence(prompt, loop, sampler, deliver, release, reuse_cache=reuse_cache)
        self._submit(sequence)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._cancel(sequence)
            await wait_uncancellable(released)  # the slot is free before the lease is released

    def close(self) -> None:
        """Stop the engine thread (running requests end with an error) and free the context."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._closing:
                raise InternalError("the model is being unloaded")
            self._waiting.append(sequence)
            self._wake.notify()

    def _cancel(self, sequence: Sequence) -> None:
        with self._wake:
            sequence.cancelled = True
            self._wake.notify()

    # --- the engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next_step():
                try:
                    self._step()
                except Exception as exc:  # a failed decode ends the requests in it, not the engine
                    log.exception("llama.cpp batch step failed")
                    for sequence in list(self._running):
                        self._leave(sequence, error=InternalError(f"llama.cpp failed: {exc}"), keep_cache=False)
        finally:
            for sequence in [*self._running, *self._waiting]:
                self._leave(sequence, error=InternalError("the model was unloaded"), keep_cache=False)
            self._waiting.clear()
            self._lib.llama_batch_free(self._batch)
            self._on_close()

    def _next_step(self) -> bool:
        """Wait for work; drop cancelled requests; admit waiting ones into free slots. False: closing."""
        with self._wake:
            while not self._closing and not self._running and not self._waiting:
                self._wake.wait()
            if self._closing:
                return False
            for sequence in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(sequence)
                sequence.released()
            for sequence in [s for s in self._running if s.cancelled]:
                self._leave(sequence, keep_cache=True)
            while self._waiting and len(self._running) < len(self._slots):
                self._admit(self._waiting.popleft())
            return True

    def _admit(self, sequence: Sequence) -> None:
        """Give the request a free slot and as much of its prompt as the cache already holds.

        The slot is the free one whose cells share the longest prefix with the prompt (its conversation's
        last turn), or, when none shares `copy_threshold` tokens, the lowest free one: llama.cpp runs the
        tokens of consecutive sequence ids in one micro-batch, so packed slots make fewer passes over the
        weights. When another slot, busy or free, holds a prefix `copy_threshold` tokens longer (a system
        prompt other requests share), its cells are copied in rather than evaluated again."""
        prompt = sequence.prompt
        free = [slot for slot in self._slots if slot.sequence is None]
        reused = 0
        if sequence.reuse_cache:
            matches = [common_prefix(slot.cached, prompt) for slot in self._slots]
            slot = max(free, key=lambda s: (matches[s.seq_id], -s.seq_id))
            if matches[slot.seq_id] < self._copy_threshold:
                slot = free[0]
            reused = matches[slot.seq_id]
            source = max(self._slots, key=lambda s: matches[s.seq_id])
            if matches[source.seq_id] - reused >= self._copy_threshold:
                self._memory.copy(source.seq_id, slot.seq_id)
                reused = matches[source.seq_id]
                self.copies += 1
        else:  # a seeded request evaluates its whole prompt (repeatable logits)
            slot = free[0]
        reused = min(reused, len(prompt) - 1)  # the last prompt token is evaluated again: its logits are needed
        self._memory.remove(slot.seq_id, reused)
        slot.cached = prompt[:reused]
        slot.sequence = sequence
        sequence.slot = slot
        sequence.evaluated = reused
        self._count_prompt(len(prompt), reused)
        self._running.append(sequence)

    def _step(self) -> None:
        lib, batch = self._lib, self._batch
        # What each sequence puts into this step: its next token, or a chunk of its prompt in the room the
        # generating sequences leave (oldest request first).
        work: list[tuple[Sequence, list[int], bool]] = []  # (sequence, tokens, whether its last one samples)
        room = self._batch_size - sum(1 for sequence in self._running if sequence.pending is not None)
        for sequence in self._running:
            if sequence.pending is not None:
                work.append((sequence, [sequence.pending], True))
            elif room > 0 and sequence.evaluated < len(sequence.prompt):
                chunk = sequence.prompt[sequence.evaluated : sequence.evaluated + room]
                room -= len(chunk)
                sequence.evaluated += len(chunk)
                work.append((sequence, chunk, sequence.evaluated == len(sequence.prompt)))
        # With a cache stream per sequence, llama.cpp cuts a batch into micro-batches of consecutive,
        # increasing sequence ids (llama_batch_allocr::split_equal), one pass over the weights each: in slot
        # order the next tokens of slots 0..N-1 make one micro-batch, in admission order up to N.
        work.sort(key=lambda item: _slot(item[0]).seq_id)
        outputs: list[tuple[Sequence, int]] = []
        count = 0
        for sequence, tokens, samples in work:
            slot = _slot(sequence)
            start = len(slot.cached)
            seq_id = slot.seq_id
            for offset, token in enumerate(tokens):
                batch.token[count] = token
                batch.pos[count] = start + offset
                batch.n_seq_id[count] = 1
                batch.seq_id[count][0] = seq_id
                batch.logits[count] = False
                count += 1
            if samples:
                batch.logits[count - 1] = True
                outputs.append((sequence, count - 1))
            slot.cached.extend(tokens)
        batch.n_tokens = count
        result = lib.llama_decode(self._ctx, batch)
        if result != 0:
            raise RuntimeError(f"llama_decode returned {result}")
        for sequence, index in outputs:
            token = sequence.sampler.sample_at(self._ctx, index)
            reader = sequence.sampler.logprobs  # None unless the request asked: no cost otherwise
            logprob = reader.read(lib.llama_get_logits_ith(self._ctx, index), token) if reader else None
            self._sampled(sequence, token, logprob)

    def _sampled(self, sequence: Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        loop = sequence.loop
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            loop.end()
        else:
            text = loop.push(token, self._piece(token), logprob)
            if text:
                for event in loop.deltas(text):
                    sequence.deliver(event)
        if loop.finished:
            with self._wake:
                self._leave(sequence, keep_cache=True)
        else:
            sequence.pending = token

    def _leave(self, sequence: Sequence, *, error: BaseException | None = None, keep_cache: bool) -> None:
        """End a request: its last events, its slot freed (its cells kept for prefix reuse, or dropped)."""
        if sequence in self._running:
            self._running.remove(sequence)
        slot = sequence.slot
        if slot is not None:
            slot.sequence = None
            sequence.slot = None
            if not keep_cache:
                self._memory.remove(slot.seq_id, 0)
                slot.cached = []
        if error is not None:
            sequence.deliver(error)
        elif not sequence.cancelled:
            for event in sequence.loop.finish():
                sequence.deliver(event)
        sequence.deliver(_END)
        sequence.sampler.free()
        sequence.released()


def _slot(sequence: Sequence) -> Slot:
    assert sequence.slot is not None  # running sequences hold a slot
    return sequence.slot


def common_prefix(a: Iterable[int], b: Iterable[int]) -> int:
    """How many tokens two token lists share from their start."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def open_context(lib: Any, llm: Any, *, parallel: int, context_length: int, batch_size: int) -> tuple[Any, Any]:
    """A context for `parallel` sequences of `context_length` tokens each, on the model `llm` loaded, with
    its LoRA adapter. `llm` was built with a minimal context of its own, freed here. Returns the context
    and a function that frees it."""
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx = context_length * parallel
    params.n_batch = params.n_ubatch = batch_size
    params.n_seq_max = parallel
    if hasattr(params, "kv_unified"):
        # A cache stream per sequence, as llama-server's default: a sequence's cells start at 0 whatever the
        # others hold, so its attention sums run as they run alone, and a greedy answer is the same text
        # alone and in a batch. In one unified cache the cells' places change the rounding (measured:
        # 2 of 4 greedy answers differed, one from its first token).
        params.kv_unified = False
    llm._ctx.close()  # the minimal context Llama made: the batched one replaces it
    ctx = lib.llama_init_from_model(llm._model.model, params)
    if ctx is None:
        raise InternalError(f"llama.cpp could not make a context of {context_length} tokens x {parallel}")
    adapter = getattr(llm, "_lora_adapter", None)
    if adapter is not None:
        if hasattr(lib, "llama_set_adapters_lora"):
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            failed = lib.llama_set_adapters_lora(ctx, adapters, 1, scales)
        else:
            failed = lib.llama_set_adapter_lora(ctx, adapter, llm.lora_scale)
        if failed:
            lib.llama_free(ctx)
            raise InternalError(f"llama.cpp could not apply the adapter {llm.lora_path}")
    return ctx, lambda: lib.llama_free(ctx)
