"""The contracts of the OpenAI- and Anthropic-compatible endpoints: error envelopes and server-sent events.

A server-sent event stream is blocks of `field: value` lines, each block ended by a blank line
(`event: <name>` and one or more `data: <text>` lines; `:` comments, `id:` and `retry:` are allowed). What
each API's SDK reads of it:

- `/v1/chat/completions` and `/v1/completions`: unnamed `data: {chunk}` events, every chunk of one object
  type and one id, the first chat chunk with `delta.role: assistant`, one chunk with a `finish_reason`, then
  `data: [DONE]`; with `stream_options.include_usage` the last chunk before it has `choices: []` and the
  token usage. An error after the stream opened is a last `data: {"error": {...}}` without [DONE].
- `/v1/responses`: named events whose data's `type` is the name, numbered by `sequence_number` from 0,
  from `response.created` to `response.completed` (or `response.incomplete`, `response.failed`, `error`).
- `/v1/messages` (Anthropic): named events whose data's `type` is the name, `message_start` first,
  `message_delta` then `message_stop` last (or an `error` event), content blocks opened, filled and closed
  in index order (`content_block_start`, `content_block_delta`, `content_block_stop`), `ping` anywhere.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

DONE = "[DONE]"
CHUNK_OBJECTS = {"/v1/chat/completions": "chat.completion.chunk", "/v1/completions": "text_completion"}
RESPONSE_ENDINGS = ("response.completed", "response.incomplete", "response.failed", "error")
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Where the generated text is, per endpoint, in a stream's events and in a single answer.
STREAM_TEXT = {
    "/v1/chat/completions": "choices.*.delta.content",
    "/v1/completions": "choices.*.text",
    "/v1/responses": "delta",  # only response.output_text.delta events have one
    "/v1/messages": "delta.text",  # only text_delta blocks' deltas have text
}
ANSWER_TEXT = {
    "/v1/chat/completions": "choices.*.message.content",
    "/v1/completions": "choices.*.text",
    "/v1/responses": "output.*.content.*.text",
    "/v1/messages": "content.*.text",
}


class ServerSentEvent(msgspec.Struct, kw_only=True):
    """One event: its name (the `event:` line, else the data's `type`), its data, and the data's JSON object
    (None for `[DONE]` or data that is not a JSON object)."""

    name: str | None
    data: str
    document: dict[str, Any] | None = None


def text_field(path: str, kind: str) -> str | None:
    return (STREAM_TEXT if kind == "sse" else ANSWER_TEXT).get(path)


def parse_events(body: bytes, disconnected: bool = False) -> tuple[list[ServerSentEvent], list[str]]:
    """The events of a stream, and what is wrong with its framing or its data."""
    problems: list[str] = []
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n")
    blocks = text.split("\n\n")
    if blocks[-1].strip():
        if not disconnected:  # our own hang-up cuts the last event; the server did not
            problems.append(f"the stream's last event does not end with a blank line: {blocks[-1][:200]!r}")
        blocks = blocks[:-1]
    events = []
    for number, block in enumerate(block for block in blocks if block.strip()):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field not in ("", "id", "retry"):  # "": a comment line
                problems.append(f"event {number + 1}: unknown field line {line[:200]!r}")
        if not data:
            continue  # comments only (a keep-alive ping): a client dispatches no event for it
        joined = "\n".join(data)
        event = ServerSentEvent(name=name, data=joined)
        if joined != DONE:
            try:
                document = json.loads(joined)
            except ValueError as exc:
                problems.append(f"event {number + 1}: data is not JSON ({exc}): {joined[:200]!r}")
                document = None
            if isinstance(document, dict):
                event.document = document
                if event.name is None and isinstance(document.get("type"), str):
                    event.name = document["type"]
            elif document is not None:
                problems.append(f"event {number + 1}: data must be a JSON object, is {joined[:200]!r}")
        events.append(event)
    return events, problems


def envelope_problems(path: str, status: int, document: dict[str, Any], where: str) -> list[str]:
    """An error body in its API's envelope: OpenAI's `{"error": {"message", "type", ...}}`, Anthropic's
    `{"type": "error", "error": {"type", "message"}}` (a `/v1/responses` answer carries `"error": null`)."""
    error = document.get("error")
    if status < 400 and error is None:
        return []
    shown = json.dumps(document)[:300]
    if path == "/v1/messages":
        if document.get("type") != "error" or not _typed_message(error):
            wanted = '{"type": "error", "error": {"type", "message"}}'
            return [f"{where}: an Anthropic error must be {wanted}, is {shown}"]
        return []
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return [f'{where}: an OpenAI error must be {{"error": {{"message": "...", "type": ...}}}}, is {shown}']
    return []


def _typed_message(error: Any) -> bool:
    return isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str)


def stream_problems(path: str, request_body: dict[str, Any], events: list[ServerSentEvent]) -> list[str]:
    """What breaks the stream contract of `path` (empty when the stream keeps it)."""
    if not events:
        return ["the stream has no events"]
    if path in CHUNK_OBJECTS:
        return chunk_stream_problems(path, request_body, events)
    if path == "/v1/responses":
        return response_stream_problems(events)
    if path == "/v1/messages":
        return message_stream_problems(events)
    return []


def chunk_stream_problems(path: str, request_body: dict[str, Any], events: list[ServerSentEvent]) -> list[str]:
    problems = []
    if any(event.name is not None and event.document is None for event in events):
        problems.append("chunk events are unnamed `data:` events")
    last = events[-1]
    failed = last.document is not None and last.document.get("error") is not None
    if not failed and last.data != DONE:
        problems.append(f"the stream must end with `data: {DONE}`, ends with {last.data[:200]!r}")
    if any(event.data == DONE for event in events[:-1]):
        problems.append(f"`data: {DONE}` must be the last event")
    chunks = [event.document for event in events if event.document is not None and "error" not in event.document]
    if not chunks:
        return [*problems, "the stream has no chunks"]
    wanted = CHUNK_OBJECTS[path]
    for index, chunk in enumerate(chunks):
        if chunk.get("object") != wanted:
            problems.append(f"chunk {index + 1}: object must be {wanted!r}, is {chunk.get('object')!r}")
        if not isinstance(chunk.get("choices"), list):
            problems.append(f"chunk {index + 1}: choices must be an array, is {chunk.get('choices')!r}")
    ids = {chunk.get("id") for chunk in chunks}
    if len(ids) != 1:
        problems.append(f"every chunk of one answer has the same id, has {sorted(map(str, ids))}")
    if path == "/v1/chat/completions":
        role = _first_choice(chunks[0]).get("delta", {}).get("role")
        if role != "assistant":
            problems.append(f"the first chunk's delta must have role assistant, is {json.dumps(chunks[0])[:200]}")
    finishing = [chunk for chunk in chunks if _first_choice(chunk).get("finish_reason") is not None]
    if not failed and len(finishing) != 1:
        problems.append(f"exactly one chunk must carry a finish_reason, {len(finishing)} do")
    options = request_body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") and not failed:
        usage = chunks[-1].get("usage")
        if chunks[-1].get("choices") != [] or not isinstance(usage, dict):
            shown = json.dumps(chunks[-1])[:300]
            problems.append(f"with include_usage the last chunk has choices [] and usage, is {shown}")
        elif not all(isinstance(usage.get(name), int) for name in USAGE_FIELDS):
            problems.append(f"the usage chunk must count {', '.join(USAGE_FIELDS)} in integers, is {usage}")
    return problems


def _first_choice(chunk: dict[str, Any]) -> dict[str, Any]:
    choices = chunk.get("choices")
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


def _named(events: list[ServerSentEvent]) -> list[str]:
    """Problems of named events: each has a JSON object whose type is its name; no [DONE] belongs here."""
    problems = []
    for index, event in enumerate(events):
        if event.document is None:
            problems.append(f"event {index + 1}: data must be a JSON object, is {event.data[:200]!r}")
        elif event.document.get("type") != event.name:
            kind = event.document.get("type")
            problems.append(f"event {index + 1}: its data's type {kind!r} must be its name {event.name!r}")
    return problems


def response_stream_problems(events: list[ServerSentEvent]) -> list[str]:
    problems = _named(events)
    names = [event.name for event in events]
    if names[0] != "response.created":
        problems.append(f"the first event must be response.created, is {names[0]!r}")
    if names[-1] not in RESPONSE_ENDINGS:
        problems.append(f"the last event must be one of {', '.join(RESPONSE_ENDINGS)}, is {names[-1]!r}")
    numbers = [event.document.get("sequence_number") for event in events if event.document is not None]
    if numbers != list(range(len(numbers))):
        problems.append(f"sequence_number must count 0, 1, 2... over the events, is {numbers[:20]}")
    return problems


def message_stream_problems(events: list[ServerSentEvent]) -> list[str]:
    problems = _named(events)
    names = [event.name for event in events if event.name != "ping"]
    if not names or names[0] != "message_start":
        problems.append(f"the first event must be message_start, is {names[:1]}")
    if names[-1] == "error":
        return problems
    if names[-2:] != ["message_delta", "message_stop"]:
        problems.append(f"the stream must end with message_delta then message_stop, ends with {names[-2:]}")
    open_index: int | None = None
    next_index = 0
    for event in events:
        index = (event.document or {}).get("index")
        if event.name == "content_block_start":
            if open_index is not None or index != next_index:
                problems.append(f"content_block_start {index} while block {open_index} is open (next is {next_index})")
            open_index, next_index = index, next_index + 1
        elif event.name in ("content_block_delta", "content_block_stop"):
            if index != open_index or open_index is None:
                problems.append(f"{event.name} for block {index}, but the open block is {open_index}")
            if event.name == "content_block_stop":
                open_index = None
        elif event.name in ("message_delta", "message_stop") and open_index is not None:
            problems.append(f"{event.name} while content block {open_index} is still open")
    return problems
