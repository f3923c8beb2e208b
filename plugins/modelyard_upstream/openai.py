"""The `openai` kind: any OpenAI-compatible server (vLLM, SGLang, llama-server, llama-cpp-python's server,
TGI, LM Studio, a gateway). A Completion is translated into /v1/chat/completions (a chat, or a generate
whose messages the upstream renders with its own template) or /v1/completions (a raw prompt), and the SSE
stream back into events:

| Ollama | OpenAI |
|---|---|
| messages (images, tool calls, tool results) | messages (image_url parts, tool_calls, role "tool") |
| num_predict, temperature, top_p, seed, stop, presence/frequency_penalty | max_tokens and the same names |
| top_k, min_p, repeat_penalty | the same names (vLLM, SGLang and llama.cpp's servers read them) |
| format "json" / a JSON Schema | response_format json_object / json_schema |
| think true / a level | reasoning_effort "medium" / the level ("max" is "high") |
| tools, tool_choice | tools, tool_choice |
| logprobs, top_logprobs | logprobs, top_logprobs |
| done_reason, counts | finish_reason, usage (prompt_tokens, completion_tokens) |
| durations | measured here: until the first token, then after it |
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from modelyard.plugin import (
    COMPLETION,
    VISION,
    Completion,
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

from .ollama import UpstreamFault, changed_options

# Ollama option -> the OpenAI request field it becomes.
SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
}


def sampling(options: Options) -> dict[str, Any]:
    changed = changed_options(options)
    body = {SAMPLING[key]: value for key, value in changed.items() if key in SAMPLING}
    if options.num_predict >= 0:
        body["max_tokens"] = options.num_predict
    return body


def request(completion: Completion, model: str) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    body |= sampling(completion.options)
    if completion.logprobs:
        body["logprobs"] = True
        if completion.top_logprobs:
            body["top_logprobs"] = completion.top_logprobs
    messages = completion.messages or completion.conversation
    if messages is None:  # a raw prompt
        body["prompt"] = completion.prompt or ""
        if completion.logprobs:  # the legacy endpoint takes a count
            body["logprobs"] = completion.top_logprobs
        return "/v1/completions", body
    body["messages"] = [_message(message) for message in messages]
    if completion.images and not any(message.images for message in messages):  # a generate's images
        body["messages"][-1] = _with_images(body["messages"][-1], completion.images)
    if completion.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(completion.format, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": completion.format, "strict": True},
        }
    if completion.think not in (None, False):
        body["reasoning_effort"] = _effort(completion.think)
    if completion.tools:
        body["tools"] = completion.tools
    if isinstance(completion.tool_choice, dict):
        body["tool_choice"] = {"type": "function", "function": {"name": completion.tool_choice.get("name", "")}}
    elif completion.tool_choice is not None:
        body["tool_choice"] = completion.tool_choice
    return "/v1/chat/completions", body


def _effort(think: bool | str | None) -> str:
    if think is True:
        return "medium"
    return "high" if think == "max" else str(think)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or message.tool_name or ""
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{index}",
                "type": "function",
                "function": {"name": call.function.name, "arguments": json.dumps(call.function.arguments)},
            }
            for index, call in enumerate(message.tool_calls)
        ]
    if message.images:
        out = _with_images(out, [base64.b64decode(image) for image in message.images])
    return out


def _with_images(message: dict[str, Any], images: list[bytes]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.get("content") or ""}]
    for image in images:
        url = f"data:{_media_type(image)};base64,{base64.b64encode(image).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return message | {"content": parts}


def _media_type(image: bytes) -> str:
    if image.startswith(b"\x89PNG"):
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class FunctionDelta(msgspec.Struct, kw_only=True):
    name: str | None = None
    arguments: str | None = None


class Delta(msgspec.Struct, kw_only=True):
    content: str | None = None
    reasoning_content: str | None = None  # vLLM, SGLang, llama.cpp
    reasoning: str | None = None  # some gateways
    tool_calls: list[ToolCallDelta] | None = None


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ContentLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = msgspec.field(default_factory=list)


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    content: list[ContentLogprob] | None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta | None = None
    text: str | None = None  # /v1/completions
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None  # /v1/completions has another shape: decoded as empty


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Chunk(msgspec.Struct, kw_only=True):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: dict[str, Any] | str | None = None


class StreamReader:
    """SSE lines of one answer -> events. Tool calls arrive in pieces and are emitted whole at the end."""

    def __init__(self) -> None:
        self.decoder = msgspec.json.Decoder(Chunk)
        self.started = time.perf_counter_ns()
        self.first_token_at: int | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.done = False
        self.pieces = 0  # text pieces: the token count when the server sends no usage

    def events(self, line: str) -> Iterator[Event]:
        if not line.startswith("data:"):
            return  # SSE comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            yield from self.finish()
            return
        try:
            chunk = self.decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamFault(f"the upstream sent an event that is not an OpenAI chunk: {exc}") from None
        if chunk.error is not None:
            raise UpstreamFault(_error_text(chunk.error))
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.logprobs is not None and choice.logprobs.content:
                yield Logprobs([_token_logprob(entry) for entry in choice.logprobs.content])
            delta = choice.delta
            thinking = delta and (delta.reasoning_content or delta.reasoning)
            if thinking:
                self._token()
                yield ThinkingDelta(thinking)
            text = delta.content if delta else choice.text
            if text:
                self._token()
                yield TextDelta(text)
            for call in (delta.tool_calls if delta else None) or []:
                self._token()
                entry = self.tool_calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def _token(self) -> None:
        self.pieces += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter_ns()

    def finish(self) -> Iterator[Event]:
        """The tool calls gathered and Done, once: at `[DONE]`, or at the end of a stream without it."""
        if self.done or (self.finish_reason is None and self.usage is None):
            return
        self.done = True
        for index, call in sorted(self.tool_calls.items()):
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except json.JSONDecodeError:
                problem = f"the upstream's tool call {call['name']} has arguments that are not JSON"
                raise UpstreamFault(problem) from None
            yield ToolCallEvent(name=call["name"], arguments=arguments, id=call["id"], index=index)
        finished = time.perf_counter_ns()
        first = self.first_token_at or finished
        usage = self.usage or Usage(completion_tokens=self.pieces)
        yield Done(
            reason="length" if self.finish_reason == "length" else "stop",
            prompt_eval_count=usage.prompt_tokens,
            prompt_eval_duration=first - self.started,
            eval_count=usage.completion_tokens,
            eval_duration=finished - first,
        )


def _token_logprob(entry: ContentLogprob) -> TokenLogprob:
    return TokenLogprob(
        token=entry.token,
        logprob=entry.logprob,
        bytes=entry.bytes,
        top_logprobs=[
            TokenLogprob(token=top.token, logprob=top.logprob, bytes=top.bytes) for top in entry.top_logprobs
        ],
    )


def _error_text(error: dict[str, Any] | str) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return error


class Architecture(msgspec.Struct):
    input_modalities: list[str] = msgspec.field(default_factory=list)  # "text", "image" (OpenRouter's words)


class ModelEntry(msgspec.Struct):
    id: str
    capabilities: list[str] | None = None  # some llama-server versions
    architecture: Architecture | None = None  # llama-server's newer listings


class OllamaStyleEntry(msgspec.Struct):
    """llama-server also lists its model Ollama's way, with capabilities ("multimodal": it reads images)."""

    name: str
    capabilities: list[str] | None = None


class ModelList(msgspec.Struct):
    data: list[ModelEntry]
    models: list[OllamaStyleEntry] | None = None


def model_list(body: bytes) -> dict[str, frozenset[str]]:
    """The models of a /v1/models answer, each with what it can do: completion (the endpoint's purpose), and
    vision where the server says the model is multimodal or reads images. Tools, thinking and embedding are
    not said."""
    listing = msgspec.json.decode(body, type=ModelList)
    said = {entry.name: set(entry.capabilities or ()) for entry in listing.models or ()}
    models = {}
    for entry in listing.data:
        capabilities = set(entry.capabilities or ()) | said.get(entry.id, set())
        reads_images = (
            "multimodal" in capabilities or "image" in (entry.architecture or Architecture()).input_modalities
        )
        models[entry.id] = frozenset({COMPLETION} | ({VISION} if reads_images else set()))
    return models


def embed_request(inputs: list[str], model: str) -> tuple[str, dict[str, Any]]:
    return "/v1/embeddings", {"model": model, "input": inputs, "encoding_format": "float"}


class EmbeddingEntry(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingsUsage(msgspec.Struct):
    prompt_tokens: int = 0


class EmbeddingList(msgspec.Struct):
    data: list[EmbeddingEntry]
    usage: EmbeddingsUsage | None = None


def embeddings(body: bytes) -> Embeddings:
    """A /v1/embeddings answer as the contract's Embeddings (in input order; the core normalises)."""
    answer = msgspec.json.decode(body, type=EmbeddingList)
    vectors = [entry.embedding for entry in sorted(answer.data, key=lambda entry: entry.index)]
    return Embeddings(vectors=vectors, prompt_eval_count=answer.usage.prompt_tokens if answer.usage else 0)
