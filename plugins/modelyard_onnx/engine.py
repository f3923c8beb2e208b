"""The engine process of the onnx backend: one per loaded model, started by the server.

    python -m modelyard_onnx.engine      (the server starts it; it speaks only the protocol below)

onnxruntime-genai's Python binding keeps the GIL while the engine computes. In the server's process that
would stop the event loop for as long as each engine call lasts: other requests, and the sending of the
tokens already made, would wait. Here the engine has a process of its own, and the server's event loop
runs beside it; each piece of text crosses a pipe.

Protocol: length-prefixed msgpack messages (`Request` on stdin, `Reply` on the process's original
stdout; native code that prints to stdout writes to stderr instead). The server sends `Open`, waits for
`Ready` or `Failed`, then for each request sends `Generate` and reads `Piece`s up to `Finished` or
`Failed`. A `Stop` ends the running generation between tokens (or prompt chunks); `Finished` follows.
End of input ends the process.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import msgspec

from modelyard.plugin import (
    BackendUnavailable,
    BadRequest,
    Completion,
    Constraint,
    Done,
    Format,
    InternalError,
    Logprobs,
    ModelyardError,
    Options,
    TextDelta,
    TokenLogprob,
    TokenLoop,
    cut_after,
    final_assistant_text,
    functiongemma_grammar,
    to_lark,
)

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

# --- the protocol ---------------------------------------------------------------------------------


class Open(msgspec.Struct, tag=True):
    folder: str
    provider: str
    threads: int
    device: int | None
    n_ctx: int
    prefill_chunk: int
    name: str = ""  # the model's name, for error messages


class Generate(msgspec.Struct, tag=True):
    completion: Completion


class Stop(msgspec.Struct, tag=True):
    pass


class Ready(msgspec.Struct, tag=True):
    pass


class Piece(msgspec.Struct, tag=True):
    text: str


class Probabilities(msgspec.Struct, tag=True):
    tokens: list[TokenLogprob]  # of the Piece that comes next


class Finished(msgspec.Struct, tag=True):
    done: Done


class Failed(msgspec.Struct, tag=True):
    error: str  # the class name of a modelyard error: the server raises that class again
    message: str


Request = Open | Generate | Stop
Reply = Ready | Piece | Probabilities | Finished | Failed
ERRORS: dict[str, type[ModelyardError]] = {cls.__name__: cls for cls in (BadRequest, InternalError, BackendUnavailable)}
HEADER = struct.Struct("<I")


def frame(message: msgspec.Struct) -> bytes:
    payload = msgspec.msgpack.encode(message)
    return HEADER.pack(len(payload)) + payload


def failure(exc: ModelyardError) -> Failed:
    return Failed(type(exc).__name__ if type(exc).__name__ in ERRORS else "InternalError", exc.message)


def raise_failure(failed: Failed) -> None:
    raise ERRORS.get(failed.error, InternalError)(failed.message)


def _read_request(stream: IO[bytes], decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    """The next message, or None at the end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decoder.decode(payload)


# --- the engine -----------------------------------------------------------------------------------


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


def open_model(og: Any, folder: str, provider: str, threads: int, device: int | None) -> tuple[Any, Any]:
    config = og.Config(folder)
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


class Engine:
    """One loaded model and its token loop."""

    def __init__(self, og: Any, engine: Any, tokenizer: Any, n_ctx: int, prefill_chunk: int = 0) -> None:
        self.og = og
        self.engine = engine
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.prefill_chunk = prefill_chunk
        self.eos = frozenset(int(token) for token in tokenizer.eos_token_ids)
        self._guidance: bool | None = None  # whether this build has guidance, once known

    def _prompt_tokens(self, completion: Completion) -> list[int]:
        if completion.messages is not None:
            messages = msgspec.json.encode(completion.messages).decode()
            tools = json.dumps(completion.tools) if completion.tools else None
            # A conversation that ends with an assistant message is continued, as on llama.cpp: rendered
            # without the generation prompt and cut right after that message's text.
            final = final_assistant_text(completion.messages)
            try:
                text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=not final)
            except RuntimeError as exc:
                raise InternalError(f"the model's chat template failed: {exc}") from exc
            if final:
                text = cut_after(text, final)
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
            # The binding takes a C int and refuses more; seeds are opaque, so a large one is folded in.
            search["random_seed"] = options.seed % 2**31
        return search

    def _set_constraint(self, params: Any, constraint: Constraint | None) -> None:
        """Hand the constraint (a format, a forced tool call, either after a thinking block) to llguidance:
        a bare JSON Schema as one, anything with text around it as a Lark grammar that inlines the schema."""
        if constraint is None:
            return
        if self._guidance is None:
            self._guidance = _has_guidance(self.og, self.engine)
        if not self._guidance:
            raise BadRequest(
                "format and forced tool calls need guidance, which this onnxruntime-genai build lacks (it is "
                "built without llguidance): install the official onnxruntime-genai wheels, or leave them out"
            )
        schema = dict(JSON_OBJECT) if constraint.schema == "json" else closed_objects(constraint.schema)
        schema.setdefault("x-guidance", COMPACT_LAYOUT)
        try:
            if constraint.prefix or constraint.suffix or constraint.after or constraint.syntax != "json":
                params.set_guidance("lark_grammar", constraint_lark(constraint, schema))
            else:
                params.set_guidance("json_schema", json.dumps(schema))
        except RuntimeError as exc:
            raise _invalid_format(constraint.schema, exc) from exc

    def _generator(self, params: Any, format_: Format) -> Any:
        try:
            return self.og.Generator(self.engine, params)
        except RuntimeError as exc:
            if format_ is not None:  # the grammar is compiled here
                raise _invalid_format(format_, exc) from exc
            raise InternalError(f"onnxruntime-genai could not start generating: {exc}") from exc

    def generate(self, completion: Completion, stop: threading.Event) -> Iterator[Logprobs | TextDelta | Done]:
        """Pieces of text (each after its tokens' log probabilities, when asked), then the Done; checks `stop`
        between tokens and between prompt chunks."""
        loop = TokenLoop(completion, self.n_ctx)
        prompt = loop.fit(self._prompt_tokens(completion))
        if not loop.finished:
            params = self.og.GeneratorParams(self.engine)
            # max_length ends the search where the budget does (the loop below stops there first).
            params.set_search_options(**self._search_options(completion.options, len(prompt) + loop.budget))
            constraint = completion.constraint
            if constraint is None and completion.format is not None:  # a Completion made without the core
                constraint = Constraint(schema=completion.format)
            self._set_constraint(params, constraint)
            generator = self._generator(params, constraint.schema if constraint else None)
            stream = self.tokenizer.create_stream()
            try:
                step = self.prefill_chunk if self.prefill_chunk > 0 else len(prompt)
                for start in range(0, len(prompt), step):
                    if stop.is_set():
                        break
                    generator.append_tokens(prompt[start : start + step])
                reader = LogprobReader(self.tokenizer, completion.top_logprobs) if completion.logprobs else None
                while not stop.is_set() and not generator.is_done():  # is_done: a format that is complete
                    # Read before the step: afterwards the generator holds the next step's logits already.
                    logits = generator.get_logits() if reader else None
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                    if token in self.eos:
                        loop.end()
                        break
                    logprob = reader.read(logits, token) if reader else None
                    text = loop.push(token, stream.decode(token), logprob)
                    if text:
                        yield from loop.deltas(text)
                    if loop.finished:
                        break
            finally:
                del generator
        yield from loop.finish()


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


class LogprobReader:
    """A sampled token's log probability (and its `top` alternatives) from the full softmax over the raw
    logits of its step, as the llama.cpp backend computes them."""

    def __init__(self, tokenizer: Any, top: int) -> None:
        import numpy  # onnxruntime-genai's own dependency

        self._numpy = numpy
        self._tokenizer = tokenizer
        self._top = top

    def read(self, logits: Any, token: int) -> TokenLogprob:
        np = self._numpy
        values = np.asarray(logits, dtype=np.float32).reshape(-1)
        highest = float(values.max())
        # The exponents are <= 0, so float32 cannot overflow; the sum runs in float64.
        normalizer = highest + float(np.log(np.exp(values - highest).sum(dtype=np.float64)))
        alternatives = []
        if self._top > 0:
            top = min(self._top, values.size)
            candidates = np.argpartition(values, -top)[-top:].tolist()
            ordered = sorted(candidates, key=lambda index: (-float(values[index]), index))
            alternatives = [self._entry(index, float(values[index]) - normalizer) for index in ordered]
        return self._entry(token, float(values[token]) - normalizer, alternatives)

    def _entry(self, token: int, logprob: float, top: list[TokenLogprob] | None = None) -> TokenLogprob:
        # The tokenizer decodes whole tokens only: a token that is part of a character shows U+FFFD.
        text = self._tokenizer.decode([token])
        return TokenLogprob(token=text, logprob=logprob, bytes=list(text.encode()), top_logprobs=top or [])


def constraint_lark(constraint: Constraint, schema: dict[str, Any]) -> str:
    """An llguidance Lark grammar for `constraint`: [free text ending with `after`] prefix payload suffix,
    the payload the JSON Schema inlined, or the core's grammar of a FunctionGemma call. Literals are JSON
    strings, which Lark reads with the same escapes."""
    sequence = [
        "free_text" if constraint.after else "",
        json.dumps(constraint.prefix) if constraint.prefix else "",
        "payload",
        json.dumps(constraint.suffix) if constraint.suffix else "",
    ]
    if constraint.syntax == "functiongemma":
        payload = to_lark(functiongemma_grammar(schema))
    else:
        payload = f"payload: %json {json.dumps(schema)}"
    rules = ["%llguidance {}", "start: " + " ".join(part for part in sequence if part), payload]
    if constraint.after:
        # Lazy: the free text ends at the first `after`, which the suffix option writes.
        rules.append(f"free_text[suffix={json.dumps(constraint.after)}]: /(?s:.*)/")
    return "\n".join(rules) + "\n"


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


# --- the process ----------------------------------------------------------------------------------


def _load(request: Open) -> Engine:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime-genai cannot be imported in the engine process: {exc}") from exc
    check_provider(og, request.provider)
    try:
        engine, tokenizer = open_model(og, request.folder, request.provider, request.threads, request.device)
    except RuntimeError as exc:
        # The folder links the model's blobs; it goes when the load fails, the name says which model.
        raise InternalError(f"onnxruntime-genai could not load {request.name} from {request.folder}: {exc}") from exc
    return Engine(og, engine, tokenizer, request.n_ctx, request.prefill_chunk)


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    decoder = msgspec.msgpack.Decoder(Request)

    def reply(message: msgspec.Struct) -> None:
        replies.write(frame(message))
        replies.flush()

    opened = _read_request(requests, decoder)
    if not isinstance(opened, Open):
        return
    try:
        engine = _load(opened)
    except ModelyardError as exc:
        reply(failure(exc))
        return
    reply(Ready())

    # A reader thread takes the requests, so that a Stop arrives while the engine computes.
    stop = threading.Event()
    inbox: queue.SimpleQueue[Generate | None] = queue.SimpleQueue()

    def read() -> None:
        while True:
            message = _read_request(requests, decoder)
            if message is None:  # the server went away: stop, then end
                stop.set()
                inbox.put(None)
                return
            if isinstance(message, Stop):
                stop.set()
            elif isinstance(message, Generate):
                inbox.put(message)

    threading.Thread(target=read, name="requests", daemon=True).start()
    while (request := inbox.get()) is not None:
        stop.clear()  # a Stop for the previous generation was read before this request
        try:
            for event in engine.generate(request.completion, stop):
                if isinstance(event, TextDelta):
                    reply(Piece(event.text))
                elif isinstance(event, Logprobs):
                    reply(Probabilities(event.tokens))
                else:
                    reply(Finished(event))
        except ModelyardError as exc:
            reply(failure(exc))
        except Exception as exc:  # the engine's own errors (RuntimeError from the binding...)
            reply(Failed("InternalError", f"onnxruntime-genai failed: {exc}"))


def main() -> None:
    # The replies take a private copy of stdout; stdout itself then goes to stderr, so that whatever
    # native code prints cannot corrupt the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
