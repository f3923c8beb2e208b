"""The echo backend: answers with the prompt it was given, word by word.

It is deterministic and needs no engine, so core tests use it, and it is the example the plugin
tutorial (docs/plugins.md) walks through. It serves any model of the store but never the ones a real
engine serves first (it registers with the lowest priority).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import msgspec

from modelyard.plugin import (
    CONTEXT_EXCEEDED,
    Backend,
    BadRequest,
    Completion,
    Done,
    Event,
    LoadedModel,
    LoadSpec,
    ModelView,
    StopSequences,
    TextDelta,
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
        started = time.perf_counter_ns()
        messages = completion.messages or completion.conversation  # echo the words, not a template's markup
        if messages:
            prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
            conversation = " ".join(m.content for m in messages)
        else:
            prompt = conversation = completion.prompt or ""
        # A word is a token here: the whole conversation must fit the context.
        prompt_words = conversation.split()
        if len(prompt_words) >= self.context_length:
            if not completion.truncate:
                raise BadRequest(CONTEXT_EXCEEDED)
            prompt_words = prompt_words[len(prompt_words) - self.context_length + 1 :]
            prompt = " ".join(prompt.split()[-(self.context_length - 1) :])
        answer = json.dumps({"echo": prompt}) if completion.format is not None else prompt
        words = re.findall(r"\s*\S+", answer) or [""]
        options = completion.options
        stops = StopSequences(options.stop)
        reason, count = "stop", 0
        for word in words:
            if 0 <= options.num_predict <= count:
                reason = "length"
                break
            count += 1
            text, stopped = stops.push(word)
            if text:
                yield TextDelta(text)
            if stopped:
                break
            await asyncio.sleep(self.delay)
        else:
            if tail := stops.flush():
                yield TextDelta(tail)
        finished = time.perf_counter_ns()
        yield Done(
            reason=reason,
            prompt_eval_count=len(prompt_words),
            prompt_eval_duration=0,
            eval_count=count,
            eval_duration=finished - started,
            context=list((prompt + answer).encode()) if completion.want_context else None,
        )


@hookimpl
def register_backends(register: Any) -> None:
    register(EchoBackend)
