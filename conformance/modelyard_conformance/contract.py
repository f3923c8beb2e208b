"""The response bodies of the Ollama REST API as msgspec types: every JSON object a server answers must
decode through its endpoint's type (a field of the wrong type or a missing required one fails).

The suite keeps its own copy so that it installs without modelyard; modelyard's `wire.py` serves the same
shapes, and tests/conformance/test_conformance_packaging.py fails when the two differ.
A field Ollama always sends has no default; a field it may omit defaults to UNSET.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class ToolCallFunction(msgspec.Struct, kw_only=True):
    index: int = 0
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct, kw_only=True):
    id: str | UnsetType = UNSET
    function: ToolCallFunction


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | UnsetType = UNSET


class Logprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | UnsetType = UNSET
    top_logprobs: list[TopLogprob] | UnsetType = UNSET


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str = ""
    thinking: str | UnsetType = UNSET
    images: list[str] | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_name: str | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class ResponseMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str
    thinking: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET


class GenerateResponse(msgspec.Struct, kw_only=True):
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


class ChatResponse(msgspec.Struct, kw_only=True):
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


class ModelDetails(msgspec.Struct, kw_only=True):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str
    context_length: int | UnsetType = UNSET
    embedding_length: int | UnsetType = UNSET


class ListModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    remote_model: str | UnsetType = UNSET
    remote_host: str | UnsetType = UNSET
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] | UnsetType = UNSET


class ListResponse(msgspec.Struct, kw_only=True):
    models: list[ListModel]


class ShowResponse(msgspec.Struct, kw_only=True):
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


class ProcessModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(msgspec.Struct, kw_only=True):
    models: list[ProcessModel]


class VersionResponse(msgspec.Struct, kw_only=True):
    version: str


class ProgressResponse(msgspec.Struct, kw_only=True):
    status: str
    digest: str | UnsetType = UNSET
    total: int | UnsetType = UNSET
    completed: int | UnsetType = UNSET


RESPONSE_TYPES: dict[str, type[msgspec.Struct]] = {
    "/api/generate": GenerateResponse,
    "/api/chat": ChatResponse,
    "/api/tags": ListResponse,
    "/api/show": ShowResponse,
    "/api/ps": ProcessResponse,
    "/api/version": VersionResponse,
    "/api/pull": ProgressResponse,
    "/api/push": ProgressResponse,
    "/api/create": ProgressResponse,
}
