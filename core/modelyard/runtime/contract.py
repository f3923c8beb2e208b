"""The backend contract, version 2: what an engine plugin implements and what the core hands it.

A plugin registers `Backend` subclasses through the `register_backends` hook (hookspecs.py) and imports
everything it needs from `modelyard.plugin`. The core resolves a model to a `ModelView`, picks the first
backend (by `priority`) whose `serves` accepts it, asks it for a `LoadSpec`, loads it once per spec, and
hands each request's `Completion` to the `LoadedModel`, which yields `Event`s. The core owns validation,
timestamps, `stream: false` aggregation and each API's encoding; the backend owns the engine.

Every optional member is declared here with its default, so a backend overrides what it supports and the
core never probes with `getattr`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from modelyard.errors import BadRequest
from modelyard.runtime.messages import Message
from modelyard.runtime.options import Format, Options

CONTRACT_VERSION = 2

# Capability names, as /api/show reports them.
COMPLETION = "completion"
TOOLS = "tools"
INSERT = "insert"
VISION = "vision"
EMBEDDING = "embedding"
THINKING = "thinking"

CONTEXT_EXCEEDED = "the input length exceeds the context length"
MIN_CONTEXT = 4  # Ollama's scheduler raises a smaller num_ctx to 4


# --- models ---------------------------------------------------------------------------------------


class Remote(msgspec.Struct, frozen=True):
    """Where a model lives when it is served by another server (a manifest's remote_host/remote_model)."""

    host: str  # a base URL, "http://gpu-box:11434"
    model: str  # the model's name there


class Details(msgspec.Struct, frozen=True, kw_only=True):
    """What a model is, as clients are shown it (Ollama's `details`)."""

    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""  # "135M"
    quantization_level: str = ""  # "Q4_1"
    parent_model: str = ""


class ModelView:
    """What a backend sees of a model: its name, format, files, metadata, templates and parameters.

    A model source makes it: the local store for stored models, a backend's `models()` for models it
    offers itself. `metadata` is read on first use (a GGUF header, an ONNX folder's genai_config.json).
    """

    def __init__(
        self,
        *,
        name: str,
        format: str,
        digest: str = "",
        size: int = 0,
        files: Mapping[str, Path] | None = None,
        metadata: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        messages: list[Message] | None = None,
        remote: Remote | None = None,
        details: Details | Callable[[], Details] | None = None,
        source: str = "store",
        parser: str | None = None,
    ) -> None:
        self.name = name  # as users write it: "smollm2:135m", "me/model:tag"
        self.format = format  # "gguf", "onnx", "remote", or a plugin's own
        self.digest = digest  # changes whenever the model does: a loaded model with another digest reloads
        self.size = size  # bytes on disk (0 when not known)
        self.files = dict(files or {})  # "model" and "adapter" for GGUF; relative paths for a folder
        self._metadata = metadata
        self.template = template  # a Modelfile TEMPLATE (Go template), if any
        self.system = system  # a Modelfile SYSTEM, if any
        self.parameters = dict(parameters or {})  # Modelfile PARAMETERs
        self.messages = list(messages or [])  # Modelfile MESSAGEs
        self.remote = remote
        self._details = details
        self.source = source  # "store", or the name of the backend that offers it
        self.parser = parser  # a Modelfile PARSER: how tool calls are read from the output (tools.md)

    @cached_property
    def metadata(self) -> Mapping[str, Any]:
        value = self._metadata
        if callable(value):
            value = value()
        return value or {}

    @cached_property
    def details(self) -> Details:
        value = self._details
        if callable(value):
            value = value()
        return value or Details(format=self.format)

    def __repr__(self) -> str:
        return f"ModelView({self.name!r}, format={self.format!r}, source={self.source!r})"


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The load-time settings of a loaded model. A request whose spec differs reloads the model."""

    context_length: int  # tokens of context per request
    batch_size: int = 512
    threads: int = 0  # 0: the backend's default
    gpu_layers: int = -1  # -1: as many as fit
    main_gpu: int | None = None
    use_mmap: bool | None = None
    parallel: int = 1  # requests served at once; set by the scheduler (OLLAMA_NUM_PARALLEL, max_parallel)
    extra: tuple[tuple[str, Any], ...] = ()  # a backend's own settings, as sorted (name, value) pairs


# --- one request ----------------------------------------------------------------------------------


class Constraint(msgspec.Struct, frozen=True, kw_only=True):
    """What the output must be, for an engine that constrains sampling (a grammar): free text up to and
    including `after` when it is set (a thinking block's closing marker), then `prefix`, then JSON matching
    `schema` ("json": any JSON object), then `suffix`, and nothing more. With `syntax` "functiongemma" the
    part between prefix and suffix is one call in FunctionGemma's syntax instead of JSON, `schema` being the
    calls' schema (`modelyard.plugin.functiongemma_grammar` writes its grammar)."""

    schema: dict[str, Any] | Literal["json"]
    prefix: str = ""
    suffix: str = ""
    after: str = ""
    syntax: Literal["json", "functiongemma"] = "json"


class Completion(msgspec.Struct, kw_only=True):
    """One generation request, after the core has validated it and applied the model's defaults."""

    options: Options
    messages: list[Message] | None = None  # to be rendered with the model's own chat template
    prompt: str | None = None  # used as is (raw generate, or a prompt the core rendered)
    conversation: list[Message] | None = None  # what the core rendered `prompt` from (a Go template)
    suffix: str = ""
    context: list[int] | None = None  # token ids from an earlier generate, prepended to the prompt
    want_context: bool = False  # return the token ids in Done.context
    truncate: bool = True  # a prompt longer than the context: drop its oldest tokens (else BadRequest)
    format: Format = None  # "json" or a JSON Schema the output must follow
    images: list[bytes] = msgspec.field(default_factory=list)  # decoded, in the order the messages give them
    think: bool | str | None = None  # None: the model's default; a level: "low", "medium", "high", "max"
    tools: list[dict[str, Any]] | None = None  # function tools, as JSON Schema objects
    tool_choice: str | dict[str, Any] | None = None  # "auto", "none", "required" or {"name": function}
    logprobs: bool = False  # report each generated token's log probability (Logprobs events)
    top_logprobs: int = 0  # and that many alternatives per token
    # What the core asks the engine to enforce (format, a forced tool call, after thinking); an engine with
    # grammars follows it rather than `format`. None: nothing to enforce.
    constraint: Constraint | None = None


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of generated text (already stripped of stop sequences)."""

    text: str


class ThinkingDelta(msgspec.Struct, frozen=True):
    """A piece of the model's thinking, separated from the answer."""

    text: str


class ToolCallEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One complete tool call parsed from the output."""

    name: str
    arguments: dict[str, Any]
    id: str = ""
    index: int = 0  # position among the tool calls of this answer


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TokenLogprob] = []


class Logprobs(msgspec.Struct, frozen=True):
    """Log probabilities of the tokens of the text (or thinking) event that comes next."""

    tokens: list[TokenLogprob]


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """The end of a generation, with what the engine measured (the core adds the rest)."""

    reason: str  # "stop" (end of sequence or stop string) or "length" (num_predict or context full)
    prompt_eval_count: int
    prompt_eval_duration: int  # ns
    eval_count: int
    eval_duration: int  # ns
    context: list[int] | None = None  # prompt + output token ids, when the completion asked for them
    stop_sequence: str | None = None  # the stop string that ended the answer (reason "stop"), if one did
    # Set by the core, not the backend:
    load_duration: int = 0  # ns spent loading the model for this request
    queue_duration: int = 0  # ns spent waiting for a free slot
    total_duration: int = 0  # ns from the request's arrival

    @classmethod
    def measured(
        cls,
        reason: str,
        prompt: list[int],
        output: list[int],
        started: int,
        first_token_at: int | None,
        want_context: bool,
        stop_sequence: str | None = None,
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
            stop_sequence=stop_sequence,
        )


Event = TextDelta | ThinkingDelta | ToolCallEvent | Logprobs | Done


class Embeddings(msgspec.Struct, kw_only=True):
    """What `LoadedModel.embed` returns: one vector per input, not normalised."""

    vectors: list[list[float]]
    prompt_eval_count: int  # tokens read, all inputs together


# --- the two classes a backend implements -----------------------------------------------------------


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The settings of a backend that has none."""


class LoadedModel:
    """A model a backend has in memory. Subclass it; override `generate`, and `embed` if it embeds."""

    size: int = 0  # bytes in memory
    size_vram: int = 0  # bytes of that in accelerator memory
    context_length: int = 0  # tokens of context per request
    parallel: int = 1  # requests it serves at once: the scheduler leases it that many times
    # Its prompt cache, counted in tokens (/metrics: modelyard:prefix_cache_queries/hits, vLLM's meanings).
    prefix_cache_queries: int = 0  # prompt tokens of the requests it served
    prefix_cache_hits: int = 0  # of those, tokens its cache already held (not evaluated again)

    def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        """Events of one generation, ending with one Done. The core closes the generator when the client
        goes away: closing must stop the engine's work for this request promptly."""
        raise NotImplementedError

    async def embed(self, inputs: list[str], *, truncate: bool) -> Embeddings:
        """Embeddings of the inputs (the backend's `capabilities` then include EMBEDDING)."""
        raise BadRequest("this model does not support embeddings")

    async def close(self) -> None:
        """Free the engine; the scheduler calls it once no lease is running."""


class Backend:
    """An engine. Subclass it; `name`, `serves` and `load` are required, the rest have defaults."""

    name: ClassVar[str]  # MODELYARD_BACKENDS names it; MODELYARD_<NAME>_<FIELD> fills Settings
    priority: ClassVar[int] = 100  # lower first: the first backend that serves a model runs it
    Settings: ClassVar[type[msgspec.Struct]] = NoSettings  # use forbid_unknown_fields=True
    # Modelfile PARAMETERs of its own (name -> type), stored with the model and read from
    # ModelView.parameters; the core does not treat them as options.
    parameters: ClassVar[Mapping[str, Any]] = {}
    max_parallel: ClassVar[int] = 1  # the most requests one loaded model can serve at once
    quantizes: ClassVar[bool] = False  # it implements `quantize` (for /api/create `quantize`)

    def __init__(self, settings: Any) -> None:
        self.settings = settings  # an instance of Settings

    def serves(self, model: ModelView) -> bool:
        """Whether this backend can run the model (by format, architecture, remote...)."""
        raise NotImplementedError

    def capabilities(self, model: ModelView) -> frozenset[str]:
        """What the model can do on this backend; the core adds what the model's Go template shows."""
        return frozenset({COMPLETION})

    def load_spec(self, model: ModelView, options: Options) -> LoadSpec:
        """The load-time settings a request needs (the scheduler sets `parallel`)."""
        return LoadSpec(context_length=max(MIN_CONTEXT, options.num_ctx))

    async def load(self, model: ModelView, spec: LoadSpec) -> LoadedModel:
        raise NotImplementedError

    def memory_estimate(self, model: ModelView, spec: LoadSpec) -> int:
        """Bytes the model would take once loaded: the scheduler checks it against free memory first."""
        return model.size

    def models(self) -> list[ModelView]:
        """Models this backend offers beyond the local store (listed, shown and run by name)."""
        return []

    async def quantize(self, source: Path, target: Path, file_type: str) -> None:
        """Quantize a GGUF file into `target` (only when `quantizes` is true)."""
        raise BadRequest(f"the {self.name} backend cannot quantize models")

    async def start(self) -> None:
        """Begin background work (health probes...) on the server's event loop, at start-up."""

    async def close(self) -> None:
        """Free what the backend holds at server shutdown (loaded models are closed before)."""


# --- helpers for backends ---------------------------------------------------------------------------


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


T = TypeVar("T")
_END = object()


async def iterate_in_thread(produce: Callable[[threading.Event], Iterator[T]]) -> AsyncGenerator[T]:
    """Run a blocking generator in a worker thread and yield its items on the event loop.

    `produce` receives a stop flag and must check it between items. Closing this generator (a client that
    went away, a cancelled task) sets the flag and waits for the thread, so the engine is idle again when
    this returns.
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
