"""The runtime's neutral events as Ollama's generate and chat chunks, streamed or joined (`stream: false`)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from msgspec import UNSET

from modelyard.api.ollama.wire import (
    ChatResponse,
    GenerateResponse,
    Logprob,
    ResponseMessage,
    ToolCall,
    ToolCallFunction,
    TopLogprob,
)
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Event, Logprobs, TextDelta, ThinkingDelta, TokenLogprob, ToolCallEvent

LOAD_OR_UNLOAD = ("load", "unload")  # answered without measurements


class UtcClock:
    """Go's time.Now().UTC() in RFC 3339 with nanoseconds, trailing zeros trimmed.

    The seconds part is formatted once per second: this runs for every streamed token.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        seconds, fraction = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._prefix = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        digits = f"{fraction:09d}".rstrip("0")
        return f"{self._prefix}.{digits}Z" if digits else f"{self._prefix}Z"


def stats(done: Done) -> dict[str, Any]:
    """The measurements of a final chunk (none for a load or unload)."""
    if done.reason in LOAD_OR_UNLOAD:
        return {}
    return {
        "total_duration": done.total_duration,
        "load_duration": done.queue_duration + done.load_duration,  # Ollama's covers scheduling too
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }


def wire_logprobs(tokens: list[TokenLogprob]) -> list[Logprob]:
    return [
        Logprob(
            token=token.token,
            logprob=token.logprob,
            bytes=token.bytes if token.bytes is not None else UNSET,
            top_logprobs=[
                TopLogprob(token=top.token, logprob=top.logprob, bytes=top.bytes if top.bytes is not None else UNSET)
                for top in token.top_logprobs
            ]
            if token.top_logprobs
            else UNSET,
        )
        for token in tokens
    ]


def wire_tool_calls(calls: list[ToolCallEvent]) -> list[ToolCall]:
    return [
        ToolCall(
            function=ToolCallFunction(name=call.name, arguments=call.arguments, index=call.index),
            id=call.id or UNSET,
        )
        for call in calls
    ]


class GenerateEncoder:
    """/api/generate chunks. Log probabilities ride on the chunk of the text they belong to."""

    def __init__(self, model: str, clock: UtcClock) -> None:
        self.model = model  # the name as the request gave it
        self.clock = clock
        self._logprobs: list[Logprob] | Any = UNSET

    def chunk(self, event: Event) -> GenerateResponse | None:
        """The chunk for one event, or None for an event that waits for the next (log probabilities)."""
        if isinstance(event, TextDelta):
            logprobs, self._logprobs = self._logprobs, UNSET
            return GenerateResponse(
                model=self.model, created_at=self.clock.now(), response=event.text, done=False, logprobs=logprobs
            )
        if isinstance(event, ThinkingDelta):
            logprobs, self._logprobs = self._logprobs, UNSET
            return GenerateResponse(
                model=self.model,
                created_at=self.clock.now(),
                response="",
                thinking=event.text,
                done=False,
                logprobs=logprobs,
            )
        if isinstance(event, Logprobs):
            self._logprobs = wire_logprobs(event.tokens)
            return None
        if isinstance(event, ToolCallEvent):
            return GenerateResponse(
                model=self.model,
                created_at=self.clock.now(),
                response="",
                done=False,
                tool_calls=wire_tool_calls([event]),
            )
        return self.final(event)

    def final(self, done: Done, text: str = "", aggregate: Aggregate | None = None) -> GenerateResponse:
        return GenerateResponse(
            model=self.model,
            created_at=self.clock.now(),
            response=text,
            thinking=(aggregate.thinking or UNSET) if aggregate else UNSET,
            done=True,
            done_reason=done.reason,
            context=done.context if done.context is not None else UNSET,
            tool_calls=wire_tool_calls(aggregate.tool_calls) if aggregate and aggregate.tool_calls else UNSET,
            logprobs=wire_logprobs(aggregate.logprobs) if aggregate and aggregate.logprobs else UNSET,
            **stats(done),
        )

    def answer(self, aggregate: Aggregate) -> GenerateResponse:
        """The `stream: false` answer."""
        assert aggregate.done is not None  # the service always ends with Done
        return self.final(aggregate.done, aggregate.text, aggregate)


class ChatEncoder:
    """/api/chat chunks: the assistant message grows chunk by chunk."""

    def __init__(self, model: str, clock: UtcClock) -> None:
        self.model = model
        self.clock = clock
        self._logprobs: list[Logprob] | Any = UNSET

    def _chunk(self, message: ResponseMessage, **fields: Any) -> ChatResponse:
        return ChatResponse(model=self.model, created_at=self.clock.now(), message=message, **fields)

    def chunk(self, event: Event) -> ChatResponse | None:
        if isinstance(event, TextDelta):
            logprobs, self._logprobs = self._logprobs, UNSET
            return self._chunk(ResponseMessage(role="assistant", content=event.text), done=False, logprobs=logprobs)
        if isinstance(event, ThinkingDelta):
            logprobs, self._logprobs = self._logprobs, UNSET
            message = ResponseMessage(role="assistant", content="", thinking=event.text)
            return self._chunk(message, done=False, logprobs=logprobs)
        if isinstance(event, Logprobs):
            self._logprobs = wire_logprobs(event.tokens)
            return None
        if isinstance(event, ToolCallEvent):
            message = ResponseMessage(role="assistant", content="", tool_calls=wire_tool_calls([event]))
            return self._chunk(message, done=False)
        return self.final(event)

    def final(self, done: Done, aggregate: Aggregate | None = None) -> ChatResponse:
        message = ResponseMessage(role="assistant", content="")
        logprobs: Any = UNSET
        if aggregate is not None:
            message = ResponseMessage(
                role="assistant",
                content=aggregate.text,
                thinking=aggregate.thinking or UNSET,
                tool_calls=wire_tool_calls(aggregate.tool_calls) if aggregate.tool_calls else UNSET,
            )
            logprobs = wire_logprobs(aggregate.logprobs) if aggregate.logprobs else UNSET
        return self._chunk(message, done=True, done_reason=done.reason, logprobs=logprobs, **stats(done))

    def answer(self, aggregate: Aggregate) -> ChatResponse:
        assert aggregate.done is not None
        return self.final(aggregate.done, aggregate)
