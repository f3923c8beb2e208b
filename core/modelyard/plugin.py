"""Everything a backend plugin needs, in one place: plugins import from here and nothing else in core.

    from modelyard.plugin import Backend, LoadedModel, ModelView, LoadSpec, Completion, hookimpl, ...

docs/plugins.md walks through writing one; the echo backend (plugins/modelyard_echo) is the example. A plugin
that stores a new kind of model files registers a `ModelFormat` (the onnx plugin's format.py is the example).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.errors import BackendUnavailable, BadRequest, InternalError, ModelyardError, NotFound, Unavailable
from modelyard.runtime.contract import (
    COMPLETION,
    CONTEXT_EXCEEDED,
    CONTRACT_VERSION,
    EMBEDDING,
    INSERT,
    MIN_CONTEXT,
    THINKING,
    TOOLS,
    VISION,
    Backend,
    Completion,
    Constraint,
    Details,
    Done,
    Embeddings,
    Event,
    LoadedModel,
    LoadSpec,
    Logprobs,
    ModelView,
    NoSettings,
    Remote,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCallEvent,
    cut_after,
    final_assistant_text,
    fit_context,
    iterate_in_thread,
    wait_uncancellable,
)
from modelyard.runtime.grammar import gbnf_literal, to_gbnf, to_lark
from modelyard.runtime.hookspecs import hookimpl
from modelyard.runtime.messages import Message, ToolCall, ToolCallFunction
from modelyard.runtime.options import Format, Options
from modelyard.runtime.text import StopSequences
from modelyard.runtime.tokenloop import TokenLoop
from modelyard.runtime.tools import functiongemma_grammar
from modelyard.store.formats import Blob, ModelFormat, NewModel
from modelyard.store.gguf import FILE_TYPES, human_number
from modelyard.store.gguf import read_header as read_gguf_header
from modelyard.store.local import TITLE_ANNOTATION, FolderView, Layer, ModelConfig, StoredModel

if TYPE_CHECKING:
    from modelyard.templates.chat_template import ChatTemplate

# Imported on first use: jinja2 must not load at server start (nor in engine processes that need none).
_LAZY = {"ChatTemplate": "modelyard.templates.chat_template"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMPLETION",
    "CONTEXT_EXCEEDED",
    "CONTRACT_VERSION",
    "EMBEDDING",
    "FILE_TYPES",
    "INSERT",
    "MIN_CONTEXT",
    "THINKING",
    "TITLE_ANNOTATION",
    "TOOLS",
    "VISION",
    "Backend",
    "BackendUnavailable",
    "BadRequest",
    "Blob",
    "ChatTemplate",
    "Completion",
    "Constraint",
    "Details",
    "Done",
    "Embeddings",
    "Event",
    "FolderView",
    "Format",
    "InternalError",
    "Layer",
    "LoadSpec",
    "LoadedModel",
    "Logprobs",
    "Message",
    "ModelConfig",
    "ModelFormat",
    "ModelView",
    "ModelyardError",
    "NewModel",
    "NoSettings",
    "NotFound",
    "Options",
    "Remote",
    "StopSequences",
    "StoredModel",
    "TextDelta",
    "ThinkingDelta",
    "TokenLoop",
    "TokenLogprob",
    "ToolCall",
    "ToolCallEvent",
    "ToolCallFunction",
    "Unavailable",
    "cut_after",
    "final_assistant_text",
    "fit_context",
    "functiongemma_grammar",
    "gbnf_literal",
    "hookimpl",
    "human_number",
    "iterate_in_thread",
    "read_gguf_header",
    "to_gbnf",
    "to_lark",
    "wait_uncancellable",
]
