"""OpenAI's chunks and objects from neutral events, without a server: log probabilities, tool calls,
finish reasons (the llama.cpp backend emits no log probabilities yet, so no real model shows them)."""

from __future__ import annotations

import msgspec

from modelyard.api.openai.encode import ChatEncoder, CompletionEncoder
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Logprobs, TextDelta, TokenLogprob, ToolCallEvent

DONE = Done(reason="stop", prompt_eval_count=5, prompt_eval_duration=1, eval_count=2, eval_duration=1)
TOKENS = [
    TokenLogprob(token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=[TokenLogprob(token="Hi", logprob=-0.1)]),
    TokenLogprob(token=" there", logprob=-0.5, top_logprobs=[TokenLogprob(token=" you", logprob=-1.5)]),
]


def aggregate(*events) -> Aggregate:
    collected = Aggregate()
    for event in events:
        collected.add(event)
    return collected


def as_json(struct) -> dict:
    return msgspec.json.decode(msgspec.json.encode(struct))


def test_chat_logprobs_ride_on_the_text_they_belong_to():
    encoder = ChatEncoder("m", include_usage=True)
    assert encoder.chunks(Logprobs(TOKENS)) == []
    [chunk] = encoder.chunks(TextDelta("Hi there"))
    body = as_json(chunk)
    assert body["choices"][0]["logprobs"]["content"][1]["top_logprobs"] == [
        {"token": " you", "logprob": -1.5, "bytes": None}
    ]
    finish, usage = encoder.chunks(DONE)
    assert as_json(finish)["choices"][0]["finish_reason"] == "stop"
    assert as_json(usage)["choices"] == [] and as_json(usage)["usage"]["total_tokens"] == 7


def test_chat_tool_calls_finish_with_tool_calls_and_null_content():
    call = ToolCallEvent(name="weather", arguments={"city": "Paris"}, index=0)
    body = as_json(ChatEncoder("m", False).answer(aggregate(call, DONE)))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [wire_call] = choice["message"]["tool_calls"]
    assert wire_call["type"] == "function" and wire_call["id"].startswith("call_")
    assert msgspec.json.decode(wire_call["function"]["arguments"]) == {"city": "Paris"}
    streamed = as_json(ChatEncoder("m", False).chunks(call)[0])
    assert streamed["choices"][0]["delta"]["tool_calls"][0]["index"] == 0


def test_completion_logprobs_have_offsets_and_top_alternatives():
    body = as_json(
        CompletionEncoder("m", False, top_logprobs=True).answer(
            aggregate(Logprobs(TOKENS), TextDelta("Hi there"), DONE)
        )
    )
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["Hi", " there"]
    assert logprobs["text_offset"] == [0, 2]
    assert logprobs["top_logprobs"] == [{"Hi": -0.1}, {" you": -1.5}]


def test_length_is_reported_as_length():
    done = msgspec.structs.replace(DONE, reason="length")
    assert (
        as_json(CompletionEncoder("m", False, False).answer(aggregate(TextDelta("x"), done)))["choices"][0][
            "finish_reason"
        ]
        == "length"
    )
