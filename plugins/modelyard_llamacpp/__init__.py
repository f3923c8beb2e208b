"""The llama.cpp backend, through llama-cpp-python. Registered like any third-party plugin.

It serves GGUF models. Chat templates come from the GGUF (Jinja); Ollama's options map onto llama.cpp's
sampler. With OLLAMA_NUM_PARALLEL=1 (the default) generation runs in a worker thread that stops between
tokens when the client goes away; with more, one engine thread batches the requests (batch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import re
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from modelyard.plugin import (
    COMPLETION,
    EMBEDDING,
    FILE_TYPES,
    MIN_CONTEXT,
    THINKING,
    TOOLS,
    Backend,
    BackendUnavailable,
    BadRequest,
    Completion,
    Constraint,
    Event,
    InternalError,
    LoadedModel,
    LoadSpec,
    ModelView,
    Options,
    TokenLoop,
    functiongemma_grammar,
    gbnf_literal,
    hookimpl,
    iterate_in_thread,
    to_gbnf,
)
from modelyard_llamacpp.embed import LlamaCppEmbeddingModel, is_embedding_model

if TYPE_CHECKING:
    from modelyard.plugin import ChatTemplate
    from modelyard_llamacpp.batch import BatchEngine
    from modelyard_llamacpp.logprobs import LogprobReader
    from modelyard_llamacpp.sampling import SamplerChain

log = logging.getLogger(__name__)

# The markers the core's tool-call and thinking parsers read (runtime/tools.py, runtime/thinking.py; not
# exported through modelyard.plugin, hence this copy). A GGUF may hold one as a single control token, which
# llama.cpp renders as nothing; those tokens render as their text instead, so the parsers see them (what
# Ollama and llama.cpp call preserved tokens).
PRESERVED_MARKERS = (
    "<tool_call>",
    "</tool_call>",
    "<|python_tag|>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "<start_function_call>",
    "<end_function_call>",
    "<escape>",
    "<think>",
    "</think>",
    "[THINK]",
    "[/THINK]",
    "◁think▷",
    "◁/think▷",
    "<thinking>",
    "</thinking>",
)

INSTALL_HINT = (
    "the llamacpp backend needs llama-cpp-python: pip install 'modelyard[llamacpp]' "
    "(README.md tells which build flags work on this CPU)"
)


class LlamaCppSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """MODELYARD_LLAMACPP_<FIELD> environment variables."""

    # On, as llama-server's `auto` resolves on CPU and CUDA: faster decode, and it scales better with batching.
    flash_attn: bool = True
    verbose: bool = False  # llama.cpp's own logging on stderr


# The context Llama makes for itself when a batch engine brings its own (llama.cpp pads it up to 256 cells).
BATCHED_PLACEHOLDER_CONTEXT = 64

# ggml's log levels (ggml.h): DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
GGML_LOG_LEVEL_ERROR = 4


class LoadLog:
    """The error lines llama.cpp logs while one thread loads a model: why the load failed.

    llama-cpp-python only raises "Failed to load model from file"; llama.cpp logs the reason through a
    process-wide callback. This one keeps error lines per thread, only while that thread loads, and hands
    every line on to llama-cpp-python's own callback (which prints them when verbose).
    """

    def __init__(self, llama_cpp: Any) -> None:
        from llama_cpp import _logger

        self._lib = llama_cpp
        self._forward = _logger.llama_log_callback
        self._local = threading.local()
        self._callback = llama_cpp.llama_log_callback(self._receive)  # kept alive: C holds its address

    def _receive(self, level: int, text: bytes, user_data: Any) -> None:
        lines = getattr(self._local, "lines", None)
        if lines is not None and level == GGML_LOG_LEVEL_ERROR:
            lines.append(text.decode("utf-8", errors="replace").strip())
        self._forward(level, text, user_data)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        self._lib.llama_log_set(self._callback, ctypes.c_void_p(0))  # ours, even if another backend replaced it
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None


def default_threads() -> int:
    """Every core this process may run on (llama-cpp-python's default is half the logical CPUs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppBackend(Backend):
    name: ClassVar[str] = "llamacpp"
    priority: ClassVar[int] = 10
    Settings: ClassVar[type[msgspec.Struct]] = LlamaCppSettings
    quantizes: ClassVar[bool] = True
    max_parallel: ClassVar[int] = 64  # sequences of one batch engine (each with its own num_ctx of cache)
    settings: LlamaCppSettings

    def __init__(self, settings: LlamaCppSettings) -> None:
        super().__init__(settings)
        self._load_log: LoadLog | None = None  # made by the first load (it needs llama_cpp imported)

    def serves(self, model: ModelView) -> bool:
        return model.format == "gguf"

    def capabilities(self, model: ModelView) -> frozenset[str]:
        if is_embedding_model(model.metadata):
            return frozenset({EMBEDDING})
        found = {COMPLETION}
        template = str(model.metadata.get("tokenizer.chat_template", ""))
        if "tools" in template:
            found.add(TOOLS)
        if model.template is None and ("enable_thinking" in template or "<think>" in template):
            found.add(THINKING)  # the Jinja template renders the prompt only where no Go template does
        return frozenset(found)

    def load_spec(self, model: ModelView, options: Options) -> LoadSpec:
        trained = _arch_value(model.metadata, "context_length") or options.num_ctx
        n_ctx = max(MIN_CONTEXT, min(options.num_ctx, int(trained)))
        return LoadSpec(
            context_length=n_ctx,
            batch_size=min(options.num_batch, n_ctx),  # a larger batch only allocates more (n_ubatch is not capped)
            threads=options.num_thread or default_threads(),
            gpu_layers=options.num_gpu if options.num_gpu >= 0 else -1,
            main_gpu=options.main_gpu,
            use_mmap=options.use_mmap,
        )

    def memory_estimate(self, model: ModelView, spec: LoadSpec) -> int:
        """The weights and an f16 KV cache for the whole context."""
        adapter = model.files.get("adapter")
        weights = model.files["model"].stat().st_size + (adapter.stat().st_size if adapter else 0)
        # An embedding model has one context whatever `parallel` is (concurrent calls share its rounds).
        sequences = 1 if is_embedding_model(model.metadata) else spec.parallel
        return weights + _kv_cache_bytes(model.metadata, spec.context_length * sequences)

    async def load(self, model: ModelView, spec: LoadSpec) -> LoadedModel:
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendUnavailable(INSTALL_HINT) from exc
        if self._load_log is None:
            self._load_log = LoadLog(llama_cpp)
        load_log = self._load_log
        weights = model.files["model"]
        adapter = model.files.get("adapter")
        engine_said: list[str] = []

        def construct() -> Any:
            with load_log.capture() as lines:
                try:
                    return build()
                finally:
                    engine_said.extend(lines)

        embedding = is_embedding_model(model.metadata)
        batched = spec.parallel > 1 and not embedding  # embeddings batch their inputs in one call instead
        # A batched model gets its context from batch.open_context; Llama's own is minimal and freed there.
        own_context = BATCHED_PLACEHOLDER_CONTEXT if batched else spec.context_length
        own_batch = min(spec.batch_size, own_context)

        def build() -> Any:
            return llama_cpp.Llama(
                str(weights),
                n_ctx=own_context,
                n_batch=own_batch,
                n_ubatch=own_batch,
                n_threads=spec.threads,
                n_threads_batch=spec.threads,
                n_gpu_layers=spec.gpu_layers,
                main_gpu=spec.main_gpu or 0,
                use_mmap=True if spec.use_mmap is None else spec.use_mmap,
                flash_attn=self.settings.flash_attn,
                lora_path=str(adapter) if adapter else None,
                embedding=embedding,  # an embedding model gets a context that pools (embed.py)
                verbose=self.settings.verbose,
            )

        try:
            llm = await asyncio.to_thread(construct)
        except (ValueError, RuntimeError, MemoryError) as exc:
            reason = "; ".join(engine_said) or str(exc) or type(exc).__name__
            raise InternalError(f"llama.cpp could not load {weights} ({model.name}): {reason}") from exc
        if embedding:
            size = self.memory_estimate(model, spec)
            return LlamaCppEmbeddingModel(llm, model, spec.context_length, size, parallel=spec.parallel)
        loaded = LlamaCppModel(llm, model, spec.context_length, self.memory_estimate(model, spec))
        if batched:
            try:
                await asyncio.to_thread(loaded.start_batching, spec.parallel, spec.batch_size)
            except BaseException:
                await loaded.close()
                raise
        return loaded

    async def quantize(self, source: Path, target: Path, file_type: str) -> None:
        """Quantize an F16/F32 GGUF file (llama.cpp's llama_model_quantize) into `target`."""
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendUnavailable(INSTALL_HINT) from exc
        ftype = next((number for number, name in FILE_TYPES.items() if name == file_type), None)
        if ftype is None:
            raise BadRequest(f"unsupported quantization type {file_type}")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = default_threads()
        result = await asyncio.to_thread(
            llama_cpp.llama_model_quantize, str(source).encode(), str(target).encode(), ctypes.byref(params)
        )
        if result != 0:
            raise InternalError(f"llama.cpp could not quantize the model to {file_type} (error {result})")


class LlamaCppModel(LoadedModel):
    def __init__(self, llm: Any, model: ModelView, n_ctx: int, size: int) -> None:
        import llama_cpp

        from modelyard.plugin import ChatTemplate  # jinja2: loaded with the first model, not at start

        self.llm = llm
        self.n_ctx = n_ctx
        self.context_length = n_ctx
        self.size = size
        self._lib = llama_cpp
        metadata = model.metadata
        self.template: ChatTemplate = ChatTemplate(
            str(metadata.get("tokenizer.chat_template", "")),
            bos_token=_token_text(metadata, "tokenizer.ggml.bos_token_id"),
            eos_token=_token_text(metadata, "tokenizer.ggml.eos_token_id"),
        )
        self._grammars: dict[str, Any] = {}
        self._grammar_lock = threading.Lock()  # batched requests prepare in several worker threads
        self._pieces: dict[int, bytes] = {}
        self._preserved = preserved_tokens(llm)
        self.engine: BatchEngine | None = None  # set when the model serves several requests at once

    def start_batching(self, parallel: int, batch_size: int) -> None:
        """Serve `parallel` requests at once from one context (batch.py); runs in a worker thread."""
        from modelyard_llamacpp.batch import BatchEngine, open_context

        ctx, free = open_context(
            self._lib, self.llm, parallel=parallel, context_length=self.n_ctx, batch_size=batch_size
        )
        self.engine = BatchEngine(
            self._lib,
            ctx,
            self.llm._model.vocab,
            parallel=parallel,
            batch_size=batch_size,
            piece=self._piece,
            count_prompt=self._count_prompt,
            on_close=free,
        )
        self.parallel = parallel

    def _count_prompt(self, tokens: int, reused: int) -> None:
        """Note a request's prompt tokens and how many of them the cache held (the hit rate's terms)."""
        self.prefix_cache_queries += tokens
        self.prefix_cache_hits += reused
        log.debug(
            "%d of %d prompt tokens from the cache (%.0f%% of this model's prompt tokens so far)",
            reused,
            tokens,
            100 * self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0,
        )

    def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        if self.engine is not None:
            return self.engine.generate(lambda: self._prepare_batched(completion))
        return iterate_in_thread(lambda stop: self._generate(completion, stop))

    async def close(self) -> None:
        engine = self.engine
        if engine is not None:
            await asyncio.to_thread(engine.close)
        await asyncio.to_thread(self.llm.close)

    # --- in the worker thread ---------------------------------------------------------------------

    def _prompt_tokens(self, completion: Completion) -> list[int]:
        if completion.messages is not None:
            text = self.template.render(completion.messages, completion.tools, completion.think)
        else:
            text = completion.prompt or ""
        add_bos = self.llm._model.add_bos_token() and not (
            self.template.bos_token and text.startswith(self.template.bos_token)
        )
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        context = list(completion.context or [])
        n_vocab = self.llm.n_vocab()
        unknown = next((token for token in context if not 0 <= token < n_vocab), None)
        if unknown is not None:  # llama.cpp would refuse the batch with a bare "llama_decode returned -1"
            raise BadRequest(f"context holds a token id this model does not have: {unknown}")
        return context + tokens

    def _piece(self, token: int) -> bytes:
        """The bytes of one token, cached per token id: control tokens render as nothing, except the
        parsers' markers (PRESERVED_MARKERS), which render as their text."""
        piece = self._pieces.get(token)
        if piece is None:
            special = token in self._preserved
            buffer = ctypes.create_string_buffer(64)
            length = self._lib.llama_token_to_piece(self.llm._model.vocab, token, buffer, len(buffer), 0, special)
            if length < 0:
                buffer = ctypes.create_string_buffer(-length)
                length = self._lib.llama_token_to_piece(self.llm._model.vocab, token, buffer, len(buffer), 0, special)
            piece = self._pieces[token] = buffer.raw[:length]
        return piece

    def _prepare_batched(self, completion: Completion) -> tuple[list[int], TokenLoop, SamplerChain, bool]:
        """What the batch engine needs of one request: the same prompt, budget and sampler as `_generate`."""
        from modelyard_llamacpp.sampling import SamplerChain

        options = completion.options
        loop = TokenLoop(completion, self.n_ctx)
        with self._grammar_lock:
            grammar = self._grammar(completion)
        prompt = loop.fit(self._prompt_tokens(completion))
        seed = options.seed if options.seed >= 0 else random.getrandbits(32)
        sampler = SamplerChain.build(self._lib, self.llm._model, options, seed=seed, grammar=grammar, n_ctx=self.n_ctx)
        sampler.logprobs = self._logprob_reader(completion)
        # A seeded request must repeat: it evaluates its whole prompt, as `_generate` does (llm.reset()).
        return prompt, loop, sampler, options.seed < 0

    def _logprob_reader(self, completion: Completion) -> LogprobReader | None:
        """Only a request that asks for logprobs reads the logits."""
        if not completion.logprobs:
            return None
        from modelyard_llamacpp.logprobs import LogprobReader

        return LogprobReader(self.llm.n_vocab(), self._piece, completion.top_logprobs)

    def _grammar(self, completion: Completion) -> Any:
        """The grammar of the completion's constraint (its format, a forced tool call), cached per source."""
        constraint = completion.constraint
        if constraint is None and completion.format is not None:  # a Completion made without the core
            constraint = Constraint(schema=completion.format)
        if constraint is None:
            return None
        # The schema as given, not sorted: the grammar writes properties in the schema's order, and a
        # key that ignored the order would hand one order's grammar to the other.
        source = msgspec.json.encode(constraint).decode()
        if source not in self._grammars:
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

            try:
                if constraint == Constraint(schema="json"):
                    self._grammars[source] = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                else:
                    self._grammars[source] = LlamaGrammar.from_string(constraint_gbnf(constraint), verbose=False)
            except Exception as exc:
                raw = json.dumps(json.dumps(constraint.schema))
                raise InternalError(
                    f'invalid format: {raw}; expected "json" or a valid JSON Schema object ({exc})'
                ) from exc
        return self._grammars[source]

    def _generate(self, completion: Completion, stop: threading.Event) -> Iterator[Event]:
        options = completion.options
        llm = self.llm
        loop = TokenLoop(completion, self.n_ctx)
        grammar = self._grammar(completion)
        prompt = loop.fit(self._prompt_tokens(completion))
        if options.seed >= 0:
            # A seeded request must repeat exactly. Logits of a prompt evaluated in one batch differ in
            # the last bits from those of a cached prefix plus a short batch, so it skips the cache.
            llm.reset()
        llm.set_seed(options.seed if options.seed >= 0 else random.getrandbits(32))
        llm.last_n_tokens_size = self.n_ctx if options.repeat_last_n < 0 else options.repeat_last_n
        if not loop.finished:
            from modelyard_llamacpp.batch import common_prefix

            # What Llama.generate takes from its cache: the longest common prefix, short of the last token.
            cached = common_prefix(llm._input_ids, prompt) if options.seed < 0 else 0
            self._count_prompt(len(prompt), max(0, min(cached, len(prompt) - 1)))
            vocab = llm._model.vocab
            is_eog = self._lib.llama_vocab_is_eog
            to_piece = self._piece
            tokens = llm.generate(
                prompt,
                top_k=options.top_k,
                top_p=options.top_p,
                min_p=options.min_p,
                typical_p=options.typical_p,
                temp=options.temperature,
                repeat_penalty=options.repeat_penalty,
                frequency_penalty=options.frequency_penalty,
                presence_penalty=options.presence_penalty,
                grammar=grammar,
            )
            reader = self._logprob_reader(completion)
            ctx = llm._ctx.ctx
            for token in tokens:
                if stop.is_set():
                    break
                if is_eog(vocab, token):
                    loop.end()
                    break
                # generate() yields before its next decode: the context still holds this step's logits
                logprob = reader.read(self._lib.llama_get_logits_ith(ctx, -1), token) if reader else None
                text = loop.push(token, to_piece(token), logprob)
                if text:
                    yield from loop.deltas(text)
                if loop.finished:
                    break
            tokens.close()
        yield from loop.finish()


def preserved_tokens(llm: Any) -> frozenset[int]:
    """The ids of the PRESERVED_MARKERS this model's vocabulary holds as single tokens."""
    ids = set()
    for marker in PRESERVED_MARKERS:
        tokens = llm.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) == 1:
            ids.add(tokens[0])
    return frozenset(ids)


def constraint_gbnf(constraint: Constraint) -> str:
    """A GBNF grammar for `constraint`: [free text ending with `after`] prefix payload suffix, the payload's
    rules from llama-cpp-python's JSON Schema converter, or the core's for FunctionGemma's call syntax."""
    schema = {"type": "object"} if constraint.schema == "json" else constraint.schema
    if constraint.syntax == "functiongemma":
        payload = to_gbnf(functiongemma_grammar(schema))
    else:
        from llama_cpp.llama_grammar import SchemaConverter

        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        converter.visit(converter.resolve_refs(schema, "format"), "payload")
        payload = strict_json_strings(converter.format_grammar())
    sequence = [
        "free-text" if constraint.after else "",
        gbnf_literal(constraint.prefix) if constraint.prefix else "",
        "payload",
        gbnf_literal(constraint.suffix) if constraint.suffix else "",
    ]
    rules = [f"root ::= {' '.join(part for part in sequence if part)}", payload]
    if constraint.after:
        rules.append(f"free-text ::= {text_before(constraint.after)} {gbnf_literal(constraint.after)}")
    return "\n".join(rules) + "\n"


def gbnf_not(char: str) -> str:
    """A character class of every character but `char`."""
    escaped = {"\\": "\\\\", "]": "\\]", "^": "\\^", "-": "\\-", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return f"[^{escaped.get(char, char)}]"


def strict_json_strings(gbnf: str) -> str:
    """The converter's grammar with JSON strings that hold no raw control characters. llama-cpp-python's
    converter lets a string hold a raw newline, which JSON parsers refuse (sampled answers broke that way:
    3 of 8 at temperature 1); llama.cpp's own converter, and so Ollama's grammar, excludes them."""
    loose, strict = r'[^"\\] |', r'[^"\\\x7F\x00-\x1F] |'
    return "\n".join(
        line.replace(loose, strict, 1) if re.match(r"char\d* ::= ", line) else line for line in gbnf.split("\n")
    )


def text_before(marker: str) -> str:
    """Any text that does not contain `marker`: each step is a character that cannot begin it, or the
    marker's first characters followed by one that breaks it. (Text that repeats the marker's first
    character just before the marker, "<</think>", cannot be written: the model writes the marker alone.)"""
    steps = [gbnf_not(marker[0])]
    steps += [f"{gbnf_literal(marker[:size])} {gbnf_not(marker[size])}" for size in range(1, len(marker))]
    return "(" + " | ".join(steps) + ")*"


def _arch_value(metadata: Mapping[str, Any], key: str) -> Any:
    """`<architecture>.<key>` of a GGUF header, e.g. context_length."""
    return metadata.get(f"{metadata.get('general.architecture', '')}.{key}")


def _token_text(metadata: Any, key: str) -> str:
    """A token's text from a GGUF header's lazy Metadata (array_item/array_length read one item)."""
    token_id = metadata.get(key)
    count = metadata.array_length("tokenizer.ggml.tokens") or 0
    # One token read from the file: the whole vocabulary (49k strings) is not needed here.
    return (
        metadata.array_item("tokenizer.ggml.tokens", token_id)
        if isinstance(token_id, int) and 0 <= token_id < count
        else ""
    )


def _kv_cache_bytes(metadata: Mapping[str, Any], n_ctx: int) -> int:
    """f16 K and V for every layer: what the context costs on top of the weights."""
    layers = _arch_value(metadata, "block_count") or 0
    heads = _arch_value(metadata, "attention.head_count") or 1
    kv_heads = _arch_value(metadata, "attention.head_count_kv") or heads
    embedding = _arch_value(metadata, "embedding_length") or 0
    head_dim = _arch_value(metadata, "attention.key_length") or (embedding // heads if heads else 0)
    return int(2 * 2 * n_ctx * layers * kv_heads * head_dim)


@hookimpl
def register_backends(register: Any) -> None:
    register(LlamaCppBackend)
