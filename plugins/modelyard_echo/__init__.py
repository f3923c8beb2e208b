"""The echo backend: answers with the prompt it was given, word by word.

It is deterministic and needs no engine, so core tests use it, and it is the example the plugin
tutorial (docs/plugins.md) walks through. It serves any model of the store but never the ones a real
engine serves first (it registers with the lowest priority).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import msgspec

from modelyard.plugin import (
    Backend,
    Completion,
    Event,
    LoadedModel,
    LoadSpec,
    ModelView,
    TextDelta,
    TokenLoop,
    hookimpl,
)


class EchoSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """MODELYARD_ECHO_<FIELD> environment variables."""

    delay: float = 0.0  # seconds between words, to watch streaming and cancellation


class EchoBackend(Backend):
    name: ClassVar[str] = "echo"
    priority: ClassVar[int] = 1000
    Settings: ClassVar[type[msgspec.Struct]] = EchoSettings
    settings: EchoSettings

    def serves(self, model: ModelView) -> bool:
        return model.remote is None  # a model on another server is for a backend that forwards to it

    async def load(self, model: ModelView, spec: LoadSpec) -> EchoModel:
        return EchoModel(self.settings.delay, spec.context_length)


class EchoModel(LoadedModel):
    def __init__(self, delay: float, context_length: int) -> None:
        self.delay = delay
        self.context_length = context_length

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        loop = TokenLoop(completion, self.context_length)
        messages = completion.messages or completion.conversation  # echo the words, not a template's markup
        if messages:
            prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
            conversation = " ".join(m.content for m in messages)
        else:
            prompt = conversation = completion.prompt or ""
        # A word is a token here (its position its id): the whole conversation must fit the context, and
        # a truncated one keeps the newest words, which the answer keeps too.
        conversation_words = conversation.split()
        kept = loop.fit(list(range(len(conversation_words))), keep=0, allow_empty=True)
        if len(kept) < len(conversation_words):
            prompt = " ".join(prompt.split()[-len(kept) :])
        answer = json.dumps({"echo": prompt}) if completion.format is not None else prompt
        words = [] if loop.finished else re.findall(r"\s*\S+", answer)
        for index, word in enumerate(words):
            if text := loop.push(index, word):
                yield TextDelta(text)
            if loop.finished:
                break
            await asyncio.sleep(self.delay)
        for event in loop.finish():
            yield event


@hookimpl
def register_backends(register: Any) -> None:
    register(EchoBackend)
