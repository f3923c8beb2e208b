"""Everything a backend plugin needs, in one place: plugins import from here and nothing else in core.

    from modelyard.plugin import Backend, LoadedModel, ModelView, LoadSpec, Completion, hookimpl, ...

docs/plugins.md walks through writing one; the echo backend (plugins/modelyard_echo) is the example. A plugin
that stores a new kind of model files registers a `ModelFormat` (the onnx plugin's format.py is the example).
"""

from __future__ import annotations

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
from modelyard.runtime.hookspecs import hookimpl
from modelyard.runtime.messages import Message, ToolCall, ToolCallFunction
from modelyard.runtime.options import Format, Options
from modelyard.runtime.text import StopSequences
from modelyard.store.formats import Blob, ModelFormat, NewModel
from modelyard.store.gguf import human_number
from modelyard.store.local import TITLE_ANNOTATION, FolderView, Layer, ModelConfig, StoredModel

__all__ = [
    "COMPLETION",
    "CONTEXT_EXCEEDED",
    "CONTRACT_VERSION",
    "EMBEDDING",
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
    "Completion",
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
    "TokenLogprob",
    "ToolCall",
    "ToolCallEvent",
    "ToolCallFunction",
    "Unavailable",
    "cut_after",
    "final_assistant_text",
    "fit_context",
    "hookimpl",
    "human_number",
    "iterate_in_thread",
    "wait_uncancellable",
]
