"""`stream: false`: the events of one generation joined into one answer, whatever the API.

Text and thinking are concatenated, tool calls and log probabilities kept in order, and the final Done
carries the measurements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from modelyard.runtime.contract import Done, Event, Logprobs, TextDelta, ThinkingDelta, TokenLogprob, ToolCallEvent


class Aggregate:
    def __init__(self) -> None:
        self._text: list[str] = []
        self._thinking: list[str] = []
        self.tool_calls: list[ToolCallEvent] = []
        self.logprobs: list[TokenLogprob] = []
        self.done: Done | None = None

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ThinkingDelta):
            self._thinking.append(event.text)
        elif isinstance(event, ToolCallEvent):
            self.tool_calls.append(event)
        elif isinstance(event, Logprobs):
            self.logprobs.extend(event.tokens)
        elif isinstance(event, Done):
            self.done = event

    @classmethod
    async def collect(cls, first: Event, events: AsyncIterator[Event]) -> Aggregate:
        """Every event of a generation whose first event was already read."""
        aggregate = cls()
        aggregate.add(first)
        async for event in events:
            aggregate.add(event)
        return aggregate
