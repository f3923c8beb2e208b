"""Chat messages and tool calls as the runtime passes them to templates and backends.

They have Ollama's shape (the first API served), so the Ollama API decodes straight into them; other APIs
convert their own messages into these. Fields a message does not carry stay UNSET and are not encoded.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class ToolCallFunction(msgspec.Struct, kw_only=True):
    """Always encoded whole, in Ollama's key order: index, name, arguments."""

    index: int = 0
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str | UnsetType = UNSET
    function: ToolCallFunction


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str
    content: str = ""
    thinking: str | UnsetType = UNSET
    images: list[str] | UnsetType = UNSET  # base64, as the Ollama API sends them
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_name: str | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        # Ollama lower-cases roles on decode ("User" is "user").
        self.role = self.role.lower()
