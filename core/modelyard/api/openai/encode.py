"""The runtime's neutral events as OpenAI's chat and completion objects: chunks for a stream (framed as
server-sent events by routes.py), one object for `stream: false` from the runtime's Aggregate."""

from __future__ import annotations

import json
import secrets
import time

from msgspec import UNSET

from modelyard.api.openai.wire import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    Delta,
    FunctionOut,
    TextCompletion,
    TokenLogprob,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Event, Logprobs, TextDelta, ThinkingDelta, ToolCallEvent
from modelyard.runtime.contract import TokenLogprob as NeutralLogprob

FINGERPRINT = "fp_modelyard"


def usage(done: Done) -> Usage:
    return Usage(
        prompt_tokens=done.prompt_eval_count,
        completion_tokens=done.eval_count,
        total_tokens=done.prompt_eval_count + done.eval_count,
    )


def finish_reason(done: Done, tool_calls: bool) -> str:
    if tool_calls and done.reason == "stop":
        return "tool_calls"
    return "length" if done.reason == "length" else "stop"  # a load without work ends as "stop"


def tool_call(call: ToolCallEvent, streamed: bool) -> ToolCallOut:
    return ToolCallOut(
        id=call.id or f"call_{secrets.token_hex(8)}",
        function=FunctionOut(name=call.name, arguments=json.dumps(call.arguments)),
        index=call.index if streamed else UNSET,
    )


def chat_logprobs(tokens: list[NeutralLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=token.token,
                logprob=token.logprob,
                bytes=token.bytes,
                top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in token.top_logprobs],
            )
            for token in tokens
        ]
    )


class ChatEncoder:
    """/v1/chat/completions: `chat.completion.chunk`s, or one `chat.completion`."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model  # as the request named it
        self.include_usage = include_usage
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())  # pinned: every chunk of one answer carries the same
        self._logprobs: ChoiceLogprobs | None = None
        self._tool_calls = False

    def _chunk(self, choices: list[ChunkChoice], usage_: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=FINGERPRINT,
            choices=choices,
            usage=usage_,
        )

    def opening(self) -> ChatCompletionChunk:
        """The first chunk: the assistant's role, as OpenAI sends it before any text."""
        return self._chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])

    def chunks(self, event: Event) -> list[ChatCompletionChunk]:
        """The chunks for one event (none for log probabilities: they ride on the next text)."""
        if isinstance(event, Logprobs):
            self._logprobs = chat_logprobs(event.tokens)
            return []
        if isinstance(event, TextDelta | ThinkingDelta):
            logprobs, self._logprobs = self._logprobs, None
            delta = Delta(content=event.text) if isinstance(event, TextDelta) else Delta(reasoning=event.text)
            return [self._chunk([ChunkChoice(delta=delta, logprobs=logprobs)])]
        if isinstance(event, ToolCallEvent):
            self._tool_calls = True
            return [self._chunk([ChunkChoice(delta=Delta(tool_calls=[tool_call(event, streamed=True)]))])]
        finished = [self._chunk([ChunkChoice(delta=Delta(), finish_reason=finish_reason(event, self._tool_calls))])]
        if self.include_usage:
            finished.append(self._chunk([], usage(event)))
        return finished

    def answer(self, aggregate: Aggregate) -> ChatCompletion:
        """The `stream: false` answer."""
        assert aggregate.done is not None  # the service always ends with Done
        calls = [tool_call(call, streamed=False) for call in aggregate.tool_calls]
        message = AssistantMessage(
            role="assistant",
            content=aggregate.text if aggregate.text or not calls else None,
            reasoning=aggregate.thinking or UNSET,
            tool_calls=calls or UNSET,
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=FINGERPRINT,
            choices=[
                ChatChoice(
                    message=message,
                    logprobs=chat_logprobs(aggregate.logprobs) if aggregate.logprobs else None,
                    finish_reason=finish_reason(aggregate.done, bool(calls)),
                )
            ],
            usage=usage(aggregate.done),
        )


def completion_logprobs(tokens: list[NeutralLogprob], offset: int, top: bool) -> CompletionLogprobs:
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return CompletionLogprobs(
        tokens=[token.token for token in tokens],
        token_logprobs=[token.logprob for token in tokens],
        top_logprobs=[{t.token: t.logprob for t in token.top_logprobs} for token in tokens] if top else None,
        text_offset=offsets,
    )


class CompletionEncoder:
    """/v1/completions: `text_completion` chunks, or one `text_completion`."""

    def __init__(self, model: str, include_usage: bool, top_logprobs: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.top_logprobs = top_logprobs
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self._logprobs: list[NeutralLogprob] = []
        self._offset = 0  # characters of text sent so far: where the next token's text starts

    def _chunk(self, choices: list[CompletionChoice], usage_: Usage | None = None) -> TextCompletion:
        return TextCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=FINGERPRINT,
            choices=choices,
            usage=usage_,
        )

    def chunks(self, event: Event) -> list[TextCompletion]:
        if isinstance(event, Logprobs):
            self._logprobs = event.tokens
            return []
        if isinstance(event, TextDelta):
            logprobs = None
            if self._logprobs:
                logprobs = completion_logprobs(self._logprobs, self._offset, self.top_logprobs)
                self._logprobs = []
            self._offset += len(event.text)
            return [self._chunk([CompletionChoice(text=event.text, logprobs=logprobs, finish_reason=None)])]
        if not isinstance(event, Done):  # thinking and tool calls have no place in a text completion
            return []
        finished = [self._chunk([CompletionChoice(text="", finish_reason=finish_reason(event, False))])]
        if self.include_usage:
            finished.append(self._chunk([], usage(event)))
        return finished

    def answer(self, aggregate: Aggregate) -> TextCompletion:
        assert aggregate.done is not None
        logprobs = completion_logprobs(aggregate.logprobs, 0, self.top_logprobs) if aggregate.logprobs else None
        choice = CompletionChoice(
            text=aggregate.text, logprobs=logprobs, finish_reason=finish_reason(aggregate.done, False)
        )
        return self._chunk([choice], usage(aggregate.done))
