"""Text helpers shared by backends."""

from __future__ import annotations


class StopSequences:
    """Finds stop strings in streamed text without ever emitting them.

    Text that could be the start of a stop string is held back until the next piece decides it.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.matched: str | None = None  # the stop string that was reached (Anthropic's stop_sequence)

    def push(self, text: str) -> tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        pending = self.pending + text
        found = [(index, stop) for stop in self.stops if (index := pending.find(stop)) >= 0]
        if found:
            self.pending = ""
            index, self.matched = min(found, key=lambda position: position[0])  # the earliest; ties: listed first
            return pending[:index], True
        held = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(pending)), held, -1):
                if pending.endswith(stop[:length]):
                    held = length
                    break
        self.pending = pending[len(pending) - held :]
        return pending[: len(pending) - held], False

    def flush(self) -> str:
        """What was held back, at the end of generation."""
        text, self.pending = self.pending, ""
        return text
