"""The ONNX Runtime GenAI backend. Registered like any third-party plugin.

It serves ONNX GenAI folders (genai_config.json, model.onnx and its weights, tokenizer files, chat
template) that entered the store through /api/create; at load time the store links the folder's files
into a temporary folder, which onnxruntime-genai reads. The execution provider (cpu, cuda, dml) comes
from MODELYARD_ONNX_PROVIDER or the model's `PARAMETER provider`; the three builds of onnxruntime-genai
provide the same module, one per install (`modelyard[onnx]`, `[onnx-cuda]`, `[onnx-directml]`).

Ollama's options map to search options; tokens are produced in a worker thread that stops between tokens
when the client goes away, streamed through `TokenizerStream`, cut by stop strings. `format` uses the
build's guidance (llguidance). docs/onnx.md lists the options it ignores.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

import msgspec
from modelyard.backend import (
    COMPLETION,
    TOOLS,
    Completion,
    Done,
    Event,
    TextDelta,
    fit_context,
    iterate_in_thread,
)
from modelyard.errors import BackendUnavailable, BadRequest, InternalError
from modelyard.hookspecs import hookimpl
from modelyard.options import Format, Options
from modelyard.store import FolderView, StoredModel
from modelyard.text import StopSequences

Provider = Literal["cpu", "cuda", "dml"]

INSTALL_HINT = "the onnx backend needs onnxruntime-genai: pip install 'modelyard[onnx]' (or [onnx-cuda], [onnx-directml])"

# Per provider: the name onnxruntime-genai knows it by, the function that says whether this build has
# it, and the install that brings it.
PROVIDERS: dict[str, tuple[str, str, str]] = {
    "cuda": ("cuda", "is_cuda_available", "modelyard[onnx-cuda]"),
    "dml": ("dml", "is_dml_available", "modelyard[onnx-directml] (Windows)"),
}

# `format: "json"`: any JSON object (as Ollama's grammar), without runs of free whitespace, which small
# models fall into (the grammar allows them; the schema's `x-guidance` says the layout instead).
JSON_OBJECT = {"type": "object"}
COMPACT_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


# Between two chunks of a long prompt, the worker sleeps this long (seconds): the event loop's turn.
PREFILL_PAUSE = 0.002
# How long the worker waits for the core to take a piece of text before it goes on regardless (seconds).
HANDOFF_TIMEOUT = 0.05


class OnnxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """MODELYARD_ONNX_<FIELD> environment variables."""

    provider: Provider = "cpu"  # a model's `PARAMETER provider` overrides it
    # Prompt tokens evaluated per engine call (0: the whole prompt in one). The binding keeps the GIL
    # during a call, so the server answers other requests, and notices a client that left, between chunks.
    prefill_chunk: int = 64


class OnnxBackend:
    name: ClassVar[str] = "onnx"
    priority: ClassVar[int] = 11  # a real engine; after llama.cpp (they serve different formats)
    Settings: ClassVar[type[msgspec.Struct]] = OnnxSettings
    # Modelfile parameters of this backend, stored with the model (see manage.typed_parameter).
    parameters: ClassVar[dict[str, Any]] = {"provider": Provider}

    def __init__(self, settings: OnnxSettings) -> None:
        self.settings = settings

    def serves(self, model: StoredModel) -> bool:
        return model.format == "onnx"

    def capabilities(self, model: StoredModel) -> frozenset[str]:
        found = {COMPLETION}
        if "tools" in model.folder_chat_template:
            found.add(TOOLS)
        return frozenset(found)

    def provider(self, model: StoredModel) -> Provider:
        chosen = model.parameters.get("provider", self.settings.provider)
        try:
            return msgspec.convert(chosen, Provider)
        except msgspec.ValidationError:
            raise BadRequest(f"unknown onnx provider {chosen!r} in {model.name.display} (cpu, cuda or dml)") from None

    def context_length(self, model: StoredModel, options: Options) -> int:
        trained = int(model.onnx_config.get("model", {}).get("context_length") or options.num_ctx)
        return max(1, min(options.num_ctx, trained))

    def load_key(self, model: StoredModel, options: Options) -> tuple[Any, ...]:
        return (self.context_length(model, options), self.provider(model), options.num_thread, options.main_gpu)

    async def load(self, model: StoredModel, options: Options) -> OnnxModel:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise BackendUnavailable(INSTALL_HINT) from exc
        n_ctx, provider, threads, device = self.load_key(model, options)
        check_provider(og, provider)
        view = model.folder_view()
        try:
            engine, tokenizer = await asyncio.to_thread(_open, og, view, provider, threads, device)
        except BaseException as exc:
            view.close()
            if isinstance(exc, RuntimeError):
                raise InternalError(f"onnxruntime-genai could not load {model.name.display}: {exc}") from exc
            raise
        return OnnxModel(og, engine, tokenizer, view, model, n_ctx, provider, self.settings.prefill_chunk)

    async def close(self) -> None:
        pass


def check_provider(og: Any, provider: str) -> None:
    """A clear error when this onnxruntime-genai build lacks the provider."""
    if provider == "cpu":
        return
    _, probe, install = PROVIDERS[provider]
    available = getattr(og, probe, None)
    if available is None or not available():
        raise BackendUnavailable(
            f"the onnx backend was asked for the {provider} provider (MODELYARD_ONNX_PROVIDER or the model's "
            f"PARAMETER provider), but the installed onnxruntime-genai build has no {provider.upper()} support: "
            f"install {install} in place of the CPU build (they provide the same module), or choose provider cpu"
        )


def _open(og: Any, view: FolderView, provider: str, threads: int, device: int | None) -> tuple[Any, Any]:
    config = og.Config(str(view.path))
    config.clear_providers()
    if provider != "cpu":
        name = PROVIDERS[provider][0]
        config.append_provider(name)
        if device is not None:
            config.set_provider_option(name, "device_id", str(device))
    if threads > 0:
        session = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(session))
    engine = og.Model(config)
    return engine, og.Tokenizer(engine)


def _kv_cache_bytes(model: StoredModel, n_ctx: int, provider: str) -> int:
    decoder = model.onnx_config.get("model", {}).get("decoder", {})
    layers = int(decoder.get("num_hidden_layers") or 0)
    kv_heads = int(decoder.get("num_key_value_heads") or decoder.get("num_attention_heads") or 0)
    head_size = int(decoder.get("head_size") or 0)
    element = 4 if provider == "cpu" else 2  # fp32 on the CPU, fp16 on accelerators
    return 2 * element * n_ctx * layers * kv_heads * head_size


class OnnxModel:
    def __init__(
        self,
        og: Any,
        engine: Any,
        tokenizer: Any,
        view: FolderView,
        model: StoredModel,
        n_ctx: int,
        provider: str,
        prefill_chunk: int = 0,
    ) -> None:
        self.og = og
        self.prefill_chunk = prefill_chunk
        self.engine = engine
        self.tokenizer = tokenizer
        self.view = view
        self.n_ctx = n_ctx
        self.context_length = n_ctx
        weights = sum(path.stat().st_size for path in model.files.values())
        self.size = weights + _kv_cache_bytes(model, n_ctx, provider)
        self.size_vram = 0 if provider == "cpu" else self.size
        self.eos = frozenset(int(token) for token in tokenizer.eos_token_ids)
        self._guidance: bool | None = None  # whether this build has guidance, once known

    async def generate(self, completion: Completion) -> AsyncIterator[Event]:
        # onnxruntime-genai's Python binding keeps the GIL while the engine computes, so the event loop
        # runs only between engine calls. The worker waits after each piece of text until the core has
        # taken it (it asks for the next event), so that the piece is sent now rather than a token later.
        taken = threading.Event()
        events = iterate_in_thread(lambda stop: self._generate(completion, stop, taken))
        try:
            async for event in events:
                yield event
                taken.set()
        finally:
            taken.set()  # a worker waiting for the core must not wait for a consumer that left
            await events.aclose()

    async def close(self) -> None:
        self.engine = self.tokenizer = None
        self.view.close()

    # --- in the worker thread ---------------------------------------------------------------------

    def _prompt_tokens(self, completion: Completion) -> list[int]:
        if completion.messages is not None:
            messages = msgspec.json.encode(completion.messages).decode()
            tools = json.dumps(completion.tools) if completion.tools else None
            try:
                text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True)
            except RuntimeError as exc:
                raise InternalError(f"the model's chat template failed: {exc}") from exc
        else:
            text = completion.prompt or ""
        tokens = [int(token) for token in self.tokenizer.encode(text)] if text else []
        return list(completion.context or []) + tokens

    def _search_options(self, options: Options, max_length: int) -> dict[str, Any]:
        search: dict[str, Any] = {"max_length": max_length, "repetition_penalty": options.repeat_penalty}
        if options.temperature > 0:
            search.update(
                do_sample=True,
                temperature=options.temperature,
                top_k=max(0, options.top_k),  # 0: no top-k cut
                top_p=options.top_p if 0 < options.top_p <= 1 else 1.0,
            )
        else:
            search["do_sample"] = False
        if options.seed >= 0:
            search["random_seed"] = options.seed
        return search

    def _set_format(self, params: Any, format_: Format) -> None:
        if format_ is None:
            return
        if self._guidance is None:
            self._guidance = _has_guidance(self.og, self.engine)
        if not self._guidance:
            raise BadRequest(
                "format needs guidance, which this onnxruntime-genai build lacks (it is built without "
                "llguidance): install the official onnxruntime-genai wheels, or leave format out"
            )
        schema = dict(JSON_OBJECT) if format_ == "json" else closed_objects(format_)
        schema.setdefault("x-guidance", COMPACT_LAYOUT)
        try:
            params.set_guidance("json_schema", json.dumps(schema))
        except RuntimeError as exc:
            raise _invalid_format(format_, exc) from exc

    def _generator(self, params: Any, format_: Format) -> Any:
        try:
            return self.og.Generator(self.engine, params)
        except RuntimeError as exc:
            if format_ is not None:  # the grammar is compiled here
                raise _invalid_format(format_, exc) from exc
            raise InternalError(f"onnxruntime-genai could not start generating: {exc}") from exc

    def _generate(self, completion: Completion, stop: threading.Event, taken: threading.Event) -> Iterator[Event]:
        og = self.og
        options = completion.options
        started = time.perf_counter_ns()
        prompt = fit_context(self._prompt_tokens(completion), self.n_ctx, options.num_keep, completion.truncate)
        if not prompt:
            raise BadRequest("the prompt is empty after tokenization")
        budget = options.num_predict if options.num_predict >= 0 else self.n_ctx
        max_length = min(len(prompt) + budget, self.n_ctx)
        stops = StopSequences(options.stop)
        output: list[int] = []
        reason = "stop"
        first_token_at = None
        if budget == 0:
            reason = "length"
        else:
            params = og.GeneratorParams(self.engine)
            params.set_search_options(**self._search_options(options, max_length))
            self._set_format(params, completion.format)
            generator = self._generator(params, completion.format)
            stream = self.tokenizer.create_stream()
            try:
                step = self.prefill_chunk if self.prefill_chunk > 0 else len(prompt)
                for start in range(0, len(prompt), step):
                    if start:
                        time.sleep(PREFILL_PAUSE)  # the event loop's turn (the GIL) between chunks
                    if stop.is_set():
                        break
                    generator.append_tokens(prompt[start : start + step])
                while not stop.is_set():
                    if generator.is_done():
                        # The length limit, or a finished format; an end-of-sequence token breaks below.
                        if len(prompt) + len(output) >= max_length:
                            reason = "length"
                        break
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                    if first_token_at is None:
                        first_token_at = time.perf_counter_ns()
                    if token in self.eos:
                        break
                    output.append(token)
                    text, stopped = stops.push(stream.decode(token))
                    if text:
                        taken.clear()
                        yield TextDelta(text)
                        taken.wait(HANDOFF_TIMEOUT)
                    if stopped:
                        break
            finally:
                del generator
        tail = stops.flush()
        if tail:
            yield TextDelta(tail)
        yield Done.measured(reason, prompt, output, started, first_token_at, completion.want_context)


# JSON Schema keywords whose value maps names to schemas, and those whose value is data.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = ("enum", "const", "default", "examples")


def closed_objects(schema: Any) -> Any:
    """A copy of a JSON Schema where objects with `properties` and no `additionalProperties` allow no
    other keys: what Ollama's grammar (llama.cpp's json-schema-to-grammar) generates, where llguidance
    follows JSON Schema and would allow any."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {}
    for key, value in schema.items():
        if key in _DATA:
            copy[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            copy[key] = {name: closed_objects(item) for name, item in value.items()}
        else:
            copy[key] = closed_objects(value)
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        copy["additionalProperties"] = False
    return copy


def _invalid_format(format_: Format, exc: Exception) -> InternalError:
    raw = json.dumps(json.dumps(format_))
    return InternalError(f'invalid format: {raw}; expected "json" or a valid JSON Schema object ({exc})')


def _has_guidance(og: Any, engine: Any) -> bool:
    """Whether this build applies guidance (builds without llguidance refuse set_guidance)."""
    if not hasattr(og.GeneratorParams, "set_guidance"):
        return False
    try:
        og.GeneratorParams(engine).set_guidance("json_schema", json.dumps(JSON_OBJECT))
    except RuntimeError:
        return False
    return True


@hookimpl
def register_backends(register: Any) -> None:
    register(OnnxBackend)
