"""The backend contract: what an engine plugin implements and what the core hands it.

A backend is registered through the `modelyard` entry-point group (see hookspecs.py). The core checks a
model's capabilities before calling, owns timestamps, `stream: false` aggregation and NDJSON encoding;
the backend turns a `Completion` into a stream of typed events.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import msgspec

from modelyard.api.ollama.wire import Message
from modelyard.errors import BadRequest
from modelyard.runtime.options import Format, Options

if TYPE_CHECKING:
    from modelyard.store.local import StoredModel

# Capability names, as /api/show reports them.
COMPLETION = "completion"
TOOLS = "tools"
INSERT = "insert"
VISION = "vision"
EMBEDDING = "embedding"
THINKING = "thinking"


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of generated text (already stripped of stop sequences)."""

    text: str


CONTEXT_EXCEEDED = "the input length exceeds the context length"
MIN_CONTEXT = 4  # Ollama's scheduler raises a smaller num_ctx to 4


def final_assistant_text(messages: list[Message] | None) -> str:
    """The text of the last message when it is the assistant's: that turn is continued, not answered anew."""
    if messages and messages[-1].role == "assistant":
        return messages[-1].content.strip()
    return ""


def cut_after(prompt: str, final: str) -> str:
    """A chat template's rendering cut right after the final assistant text, so the model goes on from it
    (Hugging Face's `continue_final_message`; Ollama leaves that turn open too)."""
    end = prompt.rfind(final)
    if end < 0:
        raise BadRequest("the chat template does not show the final assistant message, so it cannot be continued")
    return prompt[: end + len(final)]


def fit_context(tokens: list[int], context_length: int, keep: int, truncate: bool) -> list[int]:
    """Prompt tokens that leave room for one generated token: the first `keep`, then the newest.

    With `truncate` false, a prompt that does not fit is Ollama's 400 instead.
    """
    limit = context_length - 1
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        raise BadRequest(CONTEXT_EXCEEDED)
    keep = max(0, min(keep, limit // 2))
    return tokens[:keep] + tokens[len(tokens) - (limit - keep) :]


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """The end of a generation, with what the engine measured."""

    reason: str  # "stop" (end of sequence or stop string) or "length" (num_predict or context full)
    prompt_eval_count: int
    prompt_eval_duration: int  # ns
    eval_count: int
    eval_duration: int  # ns
    context: list[int] | None = None  # prompt + output token ids, when the completion asked for them

    @classmethod
    def measured(
        cls,
        reason: str,
        prompt: list[int],
        output: list[int],
        started: int,
        first_token_at: int | None,
        want_context: bool,
    ) -> Done:
        """The Done of a token loop: prompt time until the first token, eval time after it (perf_counter_ns)."""
        finished = time.perf_counter_ns()
        first_token_at = first_token_at or finished
        return cls(
            reason=reason,
            prompt_eval_count=len(prompt),
            prompt_eval_duration=first_token_at - started,
            eval_count=len(output),
            eval_duration=finished - first_token_at,
            context=prompt + output if want_context else None,
        )


Event = TextDelta | Done


class Completion(msgspec.Struct, kw_only=True):
    """One generation request, after the core has validated it and applied the model's defaults."""

    options: Options
    messages: list[Message] | None = None  # to be rendered with the model's chat template
    prompt: str | None = None  # used as is (raw generate, or a prompt rendered by the core)
    conversation: list[Message] | None = None  # what the core rendered `prompt` from (a Go template)
    suffix: str = ""
    context: list[int] | None = None  # token ids from an earlier generate, prepended to the prompt
    want_context: bool = False  # return the token ids in Done.context
    truncate: bool = True  # a prompt longer than the context: drop its oldest tokens (else BadRequest)
    format: Format = None
    tools: list[dict[str, Any]] | None = None


class LoadedModel(Protocol):
    """A model a backend has in memory."""

    size: int  # bytes in memory
    size_vram: int  # bytes of that in accelerator memory
    context_length: int  # tokens of context allocated

    def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        """Events of one generation; closing the iterator must stop the engine promptly."""
        ...

    async def close(self) -> None: ...


class Backend(Protocol):
    """An engine. `Settings` is a msgspec Struct (forbid_unknown_fields) filled from the environment.

    `priority` orders backends (lower first; the first that serves a model runs it). A backend that can
    quantize GGUF files also has `async quantize(source, target, file_type)`.
    """

    name: ClassVar[str]
    priority: ClassVar[int]
    Settings: ClassVar[type[msgspec.Struct]]

    def __init__(self, settings: Any) -> None: ...  # an instance of its own Settings

    def serves(self, model: StoredModel) -> bool:
        """Whether this backend can run the stored model (by format, architecture...)."""
        ...

    def capabilities(self, model: StoredModel) -> frozenset[str]:
        """What the model can do on this backend (COMPLETION, TOOLS, ...)."""
        ...

    def load_key(self, model: StoredModel, options: Options) -> tuple[Any, ...]:
        """The load-time settings a request needs; a loaded model with another key is reloaded."""
        ...

    async def load(self, model: StoredModel, options: Options) -> LoadedModel: ...

    async def close(self) -> None: ...


T = TypeVar("T")
_END = object()


async def iterate_in_thread(produce: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking generator in a worker thread and yield its items on the event loop.

    `produce` receives a stop flag and must check it between items. Closing this iterator (a client that
    went away, a cancelled task) sets the flag and waits for the thread, so the engine is idle again when
    this returns and the next request can use it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def deliver(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            for item in produce(stop):
                deliver(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the event loop, raised there
            deliver(_Raised(exc))
        finally:
            deliver(_END)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, _Raised):
                raise item.exception
            yield item
    finally:
        stop.set()
        await wait_uncancellable(worker)


class _Raised(msgspec.Struct):
    exception: BaseException


async def wait_uncancellable(future: asyncio.Future[Any]) -> None:
    """Wait for a worker thread even while being cancelled: the engine must be idle before reuse."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:
            break
    if cancelled:
        raise asyncio.CancelledError
