"""What the store's long operations take and report, in Ollama's shapes (the store is Ollama's layout):
a model to create, and progress lines of pulls, pushes and creates. The Ollama API serves them as they are."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from modelyard.runtime.messages import Message


class ProgressResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One progress line of a pull, push or create."""

    status: str
    digest: str | UnsetType = UNSET
    total: int | UnsetType = UNSET
    completed: int | UnsetType = UNSET


class CreateRequest(msgspec.Struct, kw_only=True):
    """What a new model is made from (Ollama's /api/create body: the store keeps Ollama's layout)."""

    model: str | None = None
    name: str | None = None  # deprecated alias of model
    from_: str | None = msgspec.field(default=None, name="from")
    remote_host: str | None = None  # with `from`: the model is `from` on that server
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    renderer: str | None = None  # Ollama's RENDERER and PARSER, kept in the config blob
    parser: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    quantization: str | None = None  # deprecated alias of quantize
    stream: bool | None = None
