"""The `ollama` kind: another modelyard or a real Ollama. A Completion goes out as the request a client
would have sent (the model renamed), and the NDJSON stream comes back as events.

- A chat (`messages`, or the `conversation` the core rendered a local Go template from) goes to /api/chat:
  the upstream applies its own model's template, which is the one that matches its weights.
- A generate goes to /api/generate with the user's prompt, the system prompt, `suffix`, `context` and
  images, so the upstream renders it and returns its own context ids; a raw one (only `prompt`) with
  `raw: true`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import msgspec

from modelyard.plugin import (
    Completion,
    Details,
    Done,
    Embeddings,
    Event,
    Logprobs,
    Message,
    Options,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCallEvent,
)

DEFAULT_OPTIONS = msgspec.to_builtins(Options())


def changed_options(options: Options) -> dict[str, Any]:
    """The options that differ from the defaults: what the client (or the model's PARAMETERs) asked for,
    and num_ctx, which the router's default context length always sets."""
    values = msgspec.to_builtins(options)
    return {key: value for key, value in values.items() if value != DEFAULT_OPTIONS.get(key)}


def request(completion: Completion, model: str) -> tuple[str, dict[str, Any]]:
    """The path and JSON body that ask the upstream for this completion, streamed."""
    body: dict[str, Any] = {"model": model, "stream": True, "options": changed_options(completion.options)}
    if completion.format is not None:
        body["format"] = completion.format
    if completion.think is not None:
        body["think"] = completion.think
    if not completion.truncate:  # the upstream refuses a prompt longer than its context, as asked
        body["truncate"] = False
    if completion.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = completion.top_logprobs
    messages = completion.messages or completion.conversation
    if messages is None:  # raw generate: the prompt as the client wrote it
        body |= {"prompt": completion.prompt or "", "raw": True}
        return "/api/generate", _with_images(body, completion.images)
    if not completion.want_context:  # a chat (only generate asks for context ids)
        body["messages"] = msgspec.to_builtins(messages)
        if completion.tools:
            body["tools"] = completion.tools
        return "/api/chat", body
    system = next((message.content for message in messages if message.role == "system"), None)
    body["prompt"] = _last_user_text(messages)
    if system is not None:
        body["system"] = system
    if completion.suffix:
        body["suffix"] = completion.suffix
    if completion.context:
        body["context"] = completion.context
    return "/api/generate", _with_images(body, completion.images)


def _last_user_text(messages: list[Message]) -> str:
    return next((message.content for message in reversed(messages) if message.role == "user"), "")


def _with_images(body: dict[str, Any], images: list[bytes]) -> dict[str, Any]:
    if images:
        body["images"] = [base64.b64encode(image).decode() for image in images]
    return body


class Chunk(msgspec.Struct, kw_only=True):
    """One NDJSON line of /api/generate or /api/chat (fields of both; unknown ones ignored)."""

    error: str | None = None
    response: str = ""
    thinking: str = ""
    message: ChunkMessage | None = None
    logprobs: list[TokenLogprob] | None = None
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: list[int] | None = None


class ChunkFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None


class ChunkToolCall(msgspec.Struct, kw_only=True):
    function: ChunkFunction
    id: str = ""


class ChunkMessage(msgspec.Struct, kw_only=True):
    content: str = ""
    thinking: str = ""
    tool_calls: list[ChunkToolCall] | None = None


class UpstreamFault(Exception):
    """The upstream said something this router cannot read, or stopped mid-answer with an error line."""


class StreamReader:
    """NDJSON lines of one answer -> events. `tool_calls` counts tool calls for their index."""

    def __init__(self) -> None:
        self.decoder = msgspec.json.Decoder(Chunk)
        self.tool_calls = 0

    def events(self, line: str) -> Iterator[Event]:
        try:
            chunk = self.decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise UpstreamFault(f"the upstream sent a line that is not an Ollama chunk: {exc}") from None
        if chunk.error is not None:
            raise UpstreamFault(chunk.error)
        if chunk.logprobs:
            yield Logprobs(chunk.logprobs)
        thinking = chunk.message.thinking if chunk.message else chunk.thinking
        if thinking:
            yield ThinkingDelta(thinking)
        text = chunk.message.content if chunk.message else chunk.response
        if text:
            yield TextDelta(text)
        for call in (chunk.message.tool_calls if chunk.message else None) or []:
            index = call.function.index if call.function.index is not None else self.tool_calls
            yield ToolCallEvent(name=call.function.name, arguments=call.function.arguments, id=call.id, index=index)
            self.tool_calls += 1
        if chunk.done:
            yield Done(
                reason=chunk.done_reason or "stop",
                prompt_eval_count=chunk.prompt_eval_count,
                prompt_eval_duration=chunk.prompt_eval_duration,
                eval_count=chunk.eval_count,
                eval_duration=chunk.eval_duration,
                context=chunk.context,
            )

    def finish(self) -> Iterator[Event]:
        """Events owed at the end of the stream: none, the last chunk carries Done."""
        return iter(())


def error_message(body: bytes) -> str:
    """The message of an error body (Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}, a
    FastAPI {"detail": ...}), else the body's text."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode(errors="replace").strip()
    if isinstance(decoded, dict):
        error = decoded.get("error", decoded.get("detail"))
        if isinstance(error, dict):  # OpenAI's {"error": {"message": ...}}
            error = error.get("message")
        if isinstance(error, str):
            return error
    return body.decode(errors="replace").strip()


def embed_request(inputs: list[str], truncate: bool, model: str) -> tuple[str, dict[str, Any]]:
    """/api/embed, passed through: the upstream's vectors come back normalised, as Ollama's embed gives them."""
    return "/api/embed", {"model": model, "input": inputs, "truncate": truncate}


class EmbedAnswer(msgspec.Struct):
    embeddings: list[list[float]]
    prompt_eval_count: int = 0


def embeddings(body: bytes) -> Embeddings:
    answer = msgspec.json.decode(body, type=EmbedAnswer)
    return Embeddings(vectors=answer.embeddings, prompt_eval_count=answer.prompt_eval_count)


class ShowDetails(msgspec.Struct):
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    parent_model: str = ""


class ShowAnswer(msgspec.Struct):
    """The part of an /api/show answer the router repeats for a pool model."""

    capabilities: list[str] = msgspec.field(default_factory=list)
    details: ShowDetails | None = None


def shown(body: bytes) -> tuple[frozenset[str], Details | None]:
    """An /api/show answer's capabilities and details. The format is left out, as Ollama leaves it out for a
    remote model: the weights are not here, and neither are their metadata (model_info) nor tensors."""
    answer = msgspec.json.decode(body, type=ShowAnswer)
    details = None
    if answer.details is not None:
        details = Details(**msgspec.structs.asdict(msgspec.structs.replace(answer.details, format="")))
    return frozenset(answer.capabilities), details
