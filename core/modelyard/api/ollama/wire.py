"""Wire types of the Ollama REST API.

Requests are lenient like Ollama's Go structs: unknown fields are ignored and `null` means "not given".
Responses use `omit_defaults`: a field Ollama always sends has no default, a field it omits when empty
defaults to UNSET. Field order is Ollama's JSON key order.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from modelyard.runtime.messages import Message, ToolCall, ToolCallFunction
from modelyard.store.operations import CreateRequest, ProgressResponse

__all__ = [
    "CreateRequest",
    "Message",
    "ProgressResponse",
    "ToolCall",
    "ToolCallFunction",
]  # re-exported: they are Ollama's wire types too


class Request(msgspec.Struct, kw_only=True):
    """Base of every request body."""


class Response(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every response body."""


# --- chat messages and tools: the runtime's own types (runtime/messages.py) -------------------


class ResponseMessage(Response, kw_only=True):
    """The assistant message of a chat response: `content` is always sent."""

    role: str
    content: str
    thinking: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET


# --- generate and chat -------------------------------------------------------------------------


class GenerateRequest(Request, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool | None = None
    # Validated after decoding: "json", a JSON Schema object, "" or null.
    format: Any = None
    # Validated after decoding: seconds as a number, or a Go duration string.
    keep_alive: Any = UNSET
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(Request, kw_only=True):
    model: str | None = None
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # an extension (Ollama has none): "auto", "none", "required" or a function
    stream: bool | None = None
    format: Any = None
    keep_alive: Any = UNSET
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class TopLogprob(Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | UnsetType = UNSET


class Logprob(Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | UnsetType = UNSET
    top_logprobs: list[TopLogprob] | UnsetType = UNSET


class GenerateResponse(Response, kw_only=True):
    model: str
    created_at: str
    response: str
    thinking: str | UnsetType = UNSET
    done: bool
    done_reason: str | UnsetType = UNSET
    context: list[int] | UnsetType = UNSET
    total_duration: int | UnsetType = UNSET
    load_duration: int | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET
    prompt_eval_duration: int | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: int | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    logprobs: list[Logprob] | UnsetType = UNSET


class ChatResponse(Response, kw_only=True):
    model: str
    created_at: str
    message: ResponseMessage
    done: bool
    done_reason: str | UnsetType = UNSET
    logprobs: list[Logprob] | UnsetType = UNSET
    total_duration: int | UnsetType = UNSET
    load_duration: int | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET
    prompt_eval_duration: int | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: int | UnsetType = UNSET


# --- models -------------------------------------------------------------------------------------


class ModelDetails(Response, kw_only=True):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str
    context_length: int | UnsetType = UNSET
    embedding_length: int | UnsetType = UNSET


class ListModel(Response, kw_only=True):
    name: str
    model: str
    remote_model: str | UnsetType = UNSET
    remote_host: str | UnsetType = UNSET
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] | UnsetType = UNSET


class ListResponse(Response, kw_only=True):
    models: list[ListModel]


class ShowRequest(Request, kw_only=True):
    model: str | None = None
    name: str | None = None  # deprecated alias of model
    verbose: bool | None = None
    system: str | None = None
    template: str | None = None
    options: dict[str, Any] | None = None


class ShowResponse(Response, kw_only=True):
    license: str | UnsetType = UNSET
    modelfile: str | UnsetType = UNSET
    parameters: str | UnsetType = UNSET
    template: str | UnsetType = UNSET
    system: str | UnsetType = UNSET
    details: ModelDetails
    messages: list[Message] | UnsetType = UNSET
    remote_model: str | UnsetType = UNSET
    remote_host: str | UnsetType = UNSET
    model_info: dict[str, Any]
    tensors: list[dict[str, Any]] | UnsetType = UNSET
    capabilities: list[str] | UnsetType = UNSET
    modified_at: str


class ProcessModel(Response, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(Response, kw_only=True):
    models: list[ProcessModel]


class VersionResponse(Response, kw_only=True):
    version: str


class ErrorResponse(Response, kw_only=True):
    error: str


# --- model management ---------------------------------------------------------------------------


class PullRequest(Request, kw_only=True):
    model: str | None = None
    name: str | None = None  # deprecated alias of model
    insecure: bool | None = None
    stream: bool | None = None
    username: str | None = None  # deprecated, ignored
    password: str | None = None  # deprecated, ignored


PushRequest = PullRequest


class CopyRequest(Request, kw_only=True):
    source: str | None = None
    destination: str | None = None


class DeleteRequest(Request, kw_only=True):
    model: str | None = None
    name: str | None = None  # deprecated alias of model


# --- embeddings ---------------------------------------------------------------------------------


class EmbedRequest(Request, kw_only=True):
    model: str | None = None
    input: Any = None  # a string or a list of strings; checked after decoding ("invalid input type")
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: Any = UNSET
    options: dict[str, Any] | None = None


class EmbedResponse(Response, kw_only=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int | UnsetType = UNSET
    load_duration: int | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET


class EmbeddingRequest(Request, kw_only=True):
    """The legacy /api/embeddings request."""

    model: str | None = None
    prompt: str | None = None
    keep_alive: Any = UNSET
    options: dict[str, Any] | None = None


class EmbeddingResponse(Response, kw_only=True):
    embedding: list[float]
