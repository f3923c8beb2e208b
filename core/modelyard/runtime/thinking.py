"""Thinking separated from the answer: a streaming parser from the engine's text to ThinkingDelta and TextDelta.

Reasoning models write their thinking between tags before the answer: `<think>...</think>` (Qwen3,
DeepSeek-R1, QwQ, GLM, Cogito...), `[THINK]...[/THINK]` (Magistral, Ministral), `◁think▷...◁/think▷`
(Kimi), `<thinking>...</thinking>`. The tags are read from the model's template, as Ollama infers them
(`thinking.InferTags`): a template that mentions a pair of them, or one that reads `.Think` / Jinja's
`enable_thinking` (the `<think>` pair then). A template whose generation prompt already opens the tag
(DeepSeek-R1's ends with `<think>\\n`) makes the model start inside its thinking.

The parser follows Ollama's (`thinking.Parser`): whitespace before the opening tag is skipped; text that
starts with anything else is all answer; whitespace right after the opening tag and around the closing
tag is trimmed; a tag split across pieces is held back until it is whole. Log probabilities stay with
their text: a Logprobs event waits for the next piece of thinking or answer it belongs to.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from modelyard.runtime.contract import Done, Event, Logprobs, TextDelta, ThinkingDelta, TokenLogprob


class ThinkingTags(NamedTuple):
    opening: str
    closing: str


THINK = ThinkingTags("<think>", "</think>")
TAG_FAMILIES = (
    THINK,
    ThinkingTags("[THINK]", "[/THINK]"),
    ThinkingTags("◁think▷", "◁/think▷"),
    ThinkingTags("<thinking>", "</thinking>"),
)

# Go templates: `.Think`, `.ThinkLevel`, `.IsThinkSet` (Ollama's names), in any letter case.
_READS_THINK = re.compile(r"\.(?:think|thinklevel|isthinkset)\b", re.IGNORECASE)
# Jinja templates: Qwen3's switch, gpt-oss's effort.
_JINJA_SWITCHES = ("enable_thinking", "reasoning_effort")


def template_tags(source: str, *, jinja: bool = False) -> ThinkingTags | None:
    """The thinking tags a template names, or `<think>` for one that reads the think switch; None when the
    template knows nothing of thinking."""
    for tags in TAG_FAMILIES:
        if tags.opening in source and tags.closing in source:
            return tags
    switches = any(name in source for name in _JINJA_SWITCHES) if jinja else bool(_READS_THINK.search(source))
    if switches:
        return next((tags for tags in TAG_FAMILIES if tags.opening in source), THINK)
    return None


def starts_inside(tags: ThinkingTags, prompt: str | None, jinja_source: str = "") -> bool:
    """Whether the prompt already opened the thinking (the model's first words are thoughts).

    With the prompt at hand (a Go template the core rendered) its end decides. A Jinja template is rendered
    by the engine: there its generation-prompt branch decides, when it writes the opening tag and not the
    closing one (DeepSeek-R1's `<｜Assistant｜><think>\\n`; Qwen3 writes both only to switch thinking off).
    """
    if prompt is not None:
        return prompt.rstrip().endswith(tags.opening)
    position = jinja_source.rfind("add_generation_prompt")
    if position < 0:
        return False
    branch = jinja_source[position:]
    return tags.opening in branch and tags.closing not in branch


def think_level(think: bool | str | None) -> str:
    """`.ThinkLevel` and Jinja's `reasoning_effort`: the level asked for, "" for plain true/false."""
    return think if isinstance(think, str) else ""


class ThinkingParser:
    """Splits one generation's text into thinking and answer, piece by piece."""

    _BEFORE, _THINKING, _AFTER, _ANSWER = range(4)

    def __init__(self, tags: ThinkingTags, *, inside: bool = False) -> None:
        self.tags = tags
        self._state = self._THINKING if inside else self._BEFORE
        self._thinking_started = False  # whitespace right after the opening tag is dropped
        self._buffer = ""
        self._logprobs: list[TokenLogprob] = []

    def split(self, event: Event) -> list[Event]:
        """The events that replace `event`: text becomes thinking and answer pieces (or waits for more),
        log probabilities wait for the piece they belong to, Done first lets out what was held back."""
        if isinstance(event, TextDelta):
            return self._with_logprobs(self._feed(event.text))
        if isinstance(event, Logprobs):
            self._logprobs.extend(event.tokens)
            return []
        if isinstance(event, ThinkingDelta):  # a backend that separates thinking itself
            return self._with_logprobs([event])
        if isinstance(event, Done):
            return [*self._with_logprobs(self._flush()), event]
        return [event]

    def _with_logprobs(self, pieces: list[Event]) -> list[Event]:
        if pieces and self._logprobs:
            logprobs, self._logprobs = Logprobs(self._logprobs), []
            return [logprobs, *pieces]
        return pieces

    def _feed(self, text: str) -> list[Event]:
        self._buffer += text
        out: list[Event] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            self._step(out)
            if (self._state, len(self._buffer)) == before:
                break  # waiting for more text
        return out

    def _step(self, out: list[Event]) -> None:
        buffer, opening, closing = self._buffer, self.tags.opening, self.tags.closing
        if self._state == self._BEFORE:
            trimmed = buffer.lstrip()
            if trimmed.startswith(opening):
                self._buffer, self._state = trimmed[len(opening) :], self._THINKING
            elif trimmed and not opening.startswith(trimmed):
                self._state = self._ANSWER  # no thinking: the answer keeps its text as written
        elif self._state == self._THINKING:
            if not self._thinking_started:
                buffer = self._buffer = buffer.lstrip()
                if not buffer:
                    return
                self._thinking_started = True
            end = buffer.find(closing)
            if end >= 0:
                if thought := buffer[:end].rstrip():
                    out.append(ThinkingDelta(thought))
                self._buffer, self._state = buffer[end + len(closing) :], self._AFTER
                return
            # Hold back what may be the start of the closing tag, and trailing whitespace that may precede it.
            keep = _partial_suffix(buffer, closing)
            body = buffer[: len(buffer) - keep]
            shown = body.rstrip()
            if shown:
                out.append(ThinkingDelta(shown))
                self._buffer = buffer[len(shown) :]
        elif self._state == self._AFTER:
            trimmed = buffer.lstrip()
            self._buffer = trimmed
            if trimmed:
                self._state = self._ANSWER
        else:
            out.append(TextDelta(buffer))
            self._buffer = ""

    def _flush(self) -> list[Event]:
        """The end of the text: what was held back, as what it was part of."""
        buffer, self._buffer = self._buffer, ""
        if self._state == self._THINKING:
            thought = buffer.strip() if not self._thinking_started else buffer.rstrip()
            return [ThinkingDelta(thought)] if thought else []
        if self._state in (self._BEFORE, self._ANSWER) and buffer:
            return [TextDelta(buffer)]
        return []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a beginning of `tag`."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
