"""Wire types of OpenAI's API as Ollama serves it under /v1, and as the official `openai` SDK sends them.

Requests are lenient (unknown fields are ignored, as Ollama does) except where a field would change the
answer and cannot be honoured (`n` above 1): the routes reject those with OpenAI's error. Responses send
every key OpenAI sends, `null` included, so strict clients find what they expect.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType


class Request(msgspec.Struct, kw_only=True):
    """Base of every request body."""


class Response(msgspec.Struct, kw_only=True):
    """Base of every response body."""


class Sparse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of response parts whose absent keys are left out rather than sent as null."""


# --- requests ---------------------------------------------------------------------------------------


class StreamOptions(Request, kw_only=True):
    include_usage: bool | None = None


class ResponseFormat(Request, kw_only=True):
    type: str = "text"  # "text", "json_object" or "json_schema"
    json_schema: dict[str, Any] | None = None  # {"name", "schema", "strict"}


class FunctionCall(Request, kw_only=True):
    name: str = ""
    arguments: str | dict[str, Any] = ""  # a JSON string, as OpenAI sends it; an object is taken too


class ChatToolCall(Request, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(Request, kw_only=True):
    role: str
    content: str | list[dict[str, Any]] | None = None  # a string, or parts: text, image_url
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None  # Ollama's field for the thinking of an earlier turn


class SamplingFields(Request, kw_only=True):
    """What chat and completion requests share."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    options: dict[str, Any] | None = None  # Ollama's options (num_ctx...) in the body: honoured here
    keep_alive: Any = UNSET  # an Ollama field, accepted here too
    user: str | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage] | None = None
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    reasoning: dict[str, Any] | None = None  # {"effort": ...}: the Responses API's spelling, accepted here too


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[str] | None = None
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None  # the number of alternatives per token (0: the chosen token's only)


# --- responses: chat --------------------------------------------------------------------------------


class Usage(Response, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallOut(Response, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut
    index: int | UnsetType = UNSET  # streamed deltas carry it


class FunctionOut(Response, kw_only=True):
    name: str
    arguments: str  # JSON text


class TopLogprob(Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Response, kw_only=True):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(Sparse, kw_only=True):
    role: str  # no defaults here: omit_defaults would drop them
    content: str | None
    reasoning: str | UnsetType = UNSET  # the model's thinking (Ollama's name for it)
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChatChoice(Response, kw_only=True):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(Response, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(Sparse, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChunkChoice(Response, kw_only=True):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Response, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# --- responses: completions -------------------------------------------------------------------------


class CompletionLogprobs(Response, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(Response, kw_only=True):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class TextCompletion(Response, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- models -----------------------------------------------------------------------------------------


class ModelObject(Response, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    # A model another server runs (an upstream pool, a remote model), marked as /api/tags marks it.
    remote_model: str | UnsetType = UNSET
    remote_host: str | UnsetType = UNSET


class ModelList(Response, kw_only=True):
    object: str = "list"
    data: list[ModelObject]


# --- embeddings -------------------------------------------------------------------------------------


class EmbeddingsRequest(Request, kw_only=True):
    model: str | None = None
    input: Any = None  # a string or a list of strings (token arrays are not supported)
    encoding_format: str | None = None  # "float" (default) or "base64": little-endian float32
    dimensions: int | None = None
    options: dict[str, Any] | None = None  # Ollama's options, honoured as on chat
    keep_alive: Any = UNSET
    user: str | None = None


class EmbeddingObject(Response, kw_only=True):
    object: str = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingsUsage(Response, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Response, kw_only=True):
    object: str = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingsUsage
