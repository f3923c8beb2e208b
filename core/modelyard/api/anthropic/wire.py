"""Wire types of Anthropic's Messages API as Ollama serves it: text, images, tool use and results, thinking."""

from __future__ import annotations

from typing import Any

import msgspec


class Request(msgspec.Struct, kw_only=True):
    """Base of every request body: unknown fields are ignored."""


class InputMessage(Request, kw_only=True):
    role: str
    content: str | list[dict[str, Any]]  # a string, or blocks: text, image, tool_use, tool_result, thinking


class MessagesRequest(Request, kw_only=True):
    model: str | None = None
    max_tokens: int | None = None
    messages: list[InputMessage] | None = None
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None  # enforced: "any" and "tool" by grammar (docs/tools.md)
    thinking: dict[str, Any] | None = None  # {"type": "enabled", "budget_tokens": n}: budget not enforced
    metadata: dict[str, Any] | None = None


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[dict[str, Any]]  # text, thinking and tool_use blocks
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: Usage
