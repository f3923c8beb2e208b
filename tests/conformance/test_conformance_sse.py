"""The suite's reading of server-sent events (modelyard_conformance/sse.py): each broken stream is noticed."""

from __future__ import annotations

import json
from typing import Any

from modelyard_conformance.sse import envelope_problems, parse_events, stream_problems


def data(document: Any, name: str | None = None) -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    return (f"event: {name}\n" if name else "") + f"data: {text}\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, ident: str = "chatcmpl-1") -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": ident, "object": "chat.completion.chunk", "choices": [choice]}


def problems(path: str, body: str, request: dict[str, Any] | None = None) -> list[str]:
    events, found = parse_events(body.encode())
    return found + stream_problems(path, request or {}, events)


GOOD_CHAT = (
    data(chat_chunk({"role": "assistant", "content": ""}))
    + data(chat_chunk({"content": "Hi"}))
    + data(chat_chunk({}, "stop"))
    + data("[DONE]")
)


def test_a_good_chat_stream_keeps_the_contract_and_comments_are_not_events() -> None:
    assert problems("/v1/chat/completions", ": ping\n\n" + GOOD_CHAT) == []


def test_a_chat_stream_without_done_or_with_two_ids_or_no_finish_is_noticed() -> None:
    assert any(
        "[DONE]" in problem for problem in problems("/v1/chat/completions", GOOD_CHAT.rsplit("data: [DONE]", 1)[0])
    )
    two_ids = GOOD_CHAT.replace(
        '"chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content"',
        '"chatcmpl-2", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content"',
    )
    assert any("same id" in problem for problem in problems("/v1/chat/completions", two_ids))
    unfinished = GOOD_CHAT.replace('"finish_reason": "stop"', '"finish_reason": null')
    assert any("finish_reason" in problem for problem in problems("/v1/chat/completions", unfinished))


def test_include_usage_wants_a_last_chunk_without_choices() -> None:
    asked = {"stream_options": {"include_usage": True}}
    assert any("include_usage" in problem for problem in problems("/v1/chat/completions", GOOD_CHAT, asked))
    usage = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    with_usage = GOOD_CHAT.replace("data: [DONE]", data(usage) + "data: [DONE]")
    assert problems("/v1/chat/completions", with_usage, asked) == []


def test_an_anthropic_stream_out_of_order_is_noticed() -> None:
    def named(kind: str, **fields: Any) -> str:
        return data({"type": kind, **fields}, kind)

    start = named("message_start", message={"role": "assistant", "content": []})
    block = named("content_block_start", index=0, content_block={"type": "text", "text": ""})
    delta = named("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"})
    stop = named("content_block_stop", index=0)
    ending = named("message_delta", delta={"stop_reason": "end_turn"}) + named("message_stop")
    assert problems("/v1/messages", start + block + delta + stop + ending) == []
    assert any("still open" in problem for problem in problems("/v1/messages", start + block + delta + ending))
    assert any("message_start" in problem for problem in problems("/v1/messages", block + delta + stop + ending))
    mislabelled = start.replace("event: message_start", "event: ping")
    assert any("must be its name" in problem for problem in problems("/v1/messages", mislabelled + ending))


def test_a_responses_stream_counts_its_events_from_zero() -> None:
    created = data({"type": "response.created", "sequence_number": 0}, "response.created")
    completed = data({"type": "response.completed", "sequence_number": 1}, "response.completed")
    assert problems("/v1/responses", created + completed) == []
    skipped = completed.replace('"sequence_number": 1', '"sequence_number": 2')
    assert any("sequence_number" in problem for problem in problems("/v1/responses", created + skipped))


def test_error_envelopes_of_each_api() -> None:
    assert envelope_problems("/v1/chat/completions", 404, {"error": {"message": "no", "type": "x"}}, "body") == []
    assert envelope_problems("/v1/chat/completions", 404, {"detail": "Not Found"}, "body")
    assert envelope_problems("/v1/responses", 200, {"object": "response", "error": None}, "body") == []
    anthropic = {"type": "error", "error": {"type": "not_found_error", "message": "no"}}
    assert envelope_problems("/v1/messages", 404, anthropic, "body") == []
    assert envelope_problems("/v1/messages", 404, {"error": {"message": "no", "type": "x"}}, "body")
