"""The token-loop helper every backend uses: context capping, the budget, stop strings across pieces,
UTF-8 across tokens, counts and timings, in a plain loop, a worker thread and an async generator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from modelyard.plugin import (
    CONTEXT_EXCEEDED,
    BadRequest,
    Completion,
    Done,
    Event,
    Options,
    TextDelta,
    TokenLoop,
    iterate_in_thread,
)


def completion(*, truncate: bool = True, want_context: bool = False, **options: Any) -> Completion:
    return Completion(options=Options(**options), prompt="", truncate=truncate, want_context=want_context)


def run(loop: TokenLoop, pieces: list[bytes | str], end_of_sequence: bool = False) -> list[TextDelta | Done]:
    """A backend's loop over a fake engine that produces `pieces`, then possibly an end-of-sequence token."""
    events: list[TextDelta | Done] = []
    if not loop.finished:
        for token, piece in enumerate(pieces):
            if text := loop.push(100 + token, piece):
                events.append(TextDelta(text))
            if loop.finished:
                break
        else:
            if end_of_sequence:
                loop.end()
    events += loop.finish()
    return events


def text_of(events: list[TextDelta | Done]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def done_of(events: list[TextDelta | Done]) -> Done:
    assert isinstance(events[-1], Done)
    assert not any(isinstance(event, Done) for event in events[:-1])
    return events[-1]


# --- context capping and the budget -----------------------------------------------------------------


def test_a_prompt_that_fits_is_kept_whole_and_the_budget_is_the_room_left():
    loop = TokenLoop(completion(), context_length=10)
    assert loop.fit([1, 2, 3]) == [1, 2, 3]
    assert loop.budget == 7
    done = done_of(run(loop, ["a"] * 20))
    assert (done.reason, done.eval_count, done.prompt_eval_count) == ("length", 7, 3)


def test_a_long_prompt_keeps_num_keep_first_tokens_then_the_newest():
    loop = TokenLoop(completion(num_keep=2), context_length=8)
    assert loop.fit(list(range(20))) == [0, 1, 15, 16, 17, 18, 19]  # room for one generated token
    assert loop.budget == 1


def test_keep_can_be_overridden_for_word_level_backends():
    loop = TokenLoop(completion(num_keep=2), context_length=8)
    assert loop.fit(list(range(20)), keep=0) == list(range(13, 20))


def test_truncate_false_refuses_a_prompt_longer_than_the_context():
    loop = TokenLoop(completion(truncate=False), context_length=8)
    with pytest.raises(BadRequest, match=CONTEXT_EXCEEDED):
        loop.fit(list(range(8)))
    assert TokenLoop(completion(truncate=False), context_length=8).fit(list(range(7))) == list(range(7))


def test_an_empty_prompt_is_a_400_unless_allowed():
    with pytest.raises(BadRequest, match="empty"):
        TokenLoop(completion(), 8).fit([])
    assert TokenLoop(completion(), 8).fit([], allow_empty=True) == []


def test_num_predict_limits_the_output_with_reason_length():
    loop = TokenLoop(completion(num_predict=3), context_length=100)
    loop.fit([1])
    events = run(loop, ["a", "b", "c", "d", "e"])
    assert text_of(events) == "abc"
    done = done_of(events)
    assert (done.reason, done.eval_count) == ("length", 3)


def test_num_predict_zero_generates_nothing():
    loop = TokenLoop(completion(num_predict=0), context_length=100)
    loop.fit([1, 2])
    assert loop.finished
    events = run(loop, ["never"])
    assert text_of(events) == ""
    done = done_of(events)
    assert (done.reason, done.eval_count, done.prompt_eval_count) == ("length", 0, 2)


def test_the_room_left_in_the_context_caps_a_larger_num_predict():
    loop = TokenLoop(completion(num_predict=50), context_length=10)
    loop.fit([1, 2, 3, 4, 5, 6])
    assert loop.budget == 4
    assert done_of(run(loop, ["x"] * 50)).eval_count == 4


def test_an_end_of_sequence_stops_with_reason_stop_and_is_not_counted():
    loop = TokenLoop(completion(), context_length=100)
    loop.fit([1])
    events = run(loop, ["Hello", " world"], end_of_sequence=True)
    assert loop.finished
    assert text_of(events) == "Hello world"
    done = done_of(events)
    assert (done.reason, done.eval_count) == ("stop", 2)


# --- stop strings and UTF-8 -------------------------------------------------------------------------


def test_a_stop_string_split_across_pieces_is_cut_and_never_shown():
    loop = TokenLoop(completion(stop=["STOP"]), context_length=100)
    loop.fit([1])
    pieces: list[bytes | str] = ["one S", "T", "two", " ST", "O", "P three", " four"]
    events = run(loop, pieces)
    # "S", "ST", "STO" wait for the next piece: released when it rules the stop out, dropped when it completes it.
    assert [event.text for event in events if isinstance(event, TextDelta)] == ["one ", "STtwo", " "]
    done = done_of(events)
    assert (done.reason, done.eval_count) == ("stop", 6)  # the token that completed the stop string counts


def test_text_that_could_start_a_stop_string_is_held_back_then_released_at_the_end():
    loop = TokenLoop(completion(stop=["<end>"]), context_length=100)
    loop.fit([1])
    assert loop.push(1, "answer <e") == "answer "
    assert loop.push(2, "n") == ""
    events = loop.finish()
    assert events[0] == TextDelta("<en")
    assert done_of(events).reason == "stop"


def test_utf8_split_across_tokens_is_decoded_whole():
    loop = TokenLoop(completion(), context_length=100)
    loop.fit([1])
    euro, smile = "€".encode(), "🙂".encode()
    pieces: list[bytes | str] = [b"price: ", euro[:1], euro[1:2], euro[2:], b" ", smile[:2], smile[2:]]
    texts = [loop.push(index, piece) for index, piece in enumerate(pieces)]
    assert texts == ["price: ", "", "", "€", " ", "", "🙂"]
    assert text_of(loop.finish()) == ""


def test_an_incomplete_utf8_sequence_at_the_end_becomes_a_replacement_character():
    loop = TokenLoop(completion(num_predict=2), context_length=100)
    loop.fit([1])
    events = run(loop, [b"ok", "€".encode()[:2], b"never"])
    assert text_of(events) == "ok\ufffd"
    assert done_of(events).reason == "length"


def test_a_stop_string_made_of_multibyte_characters_across_tokens():
    loop = TokenLoop(completion(stop=["。"]), context_length=100)
    loop.fit([1])
    mark = "。".encode()
    events = run(loop, [b"done", mark[:1], mark[1:], b"after"])
    assert text_of(events) == "done"
    assert done_of(events).reason == "stop"


# --- counts, timings and context --------------------------------------------------------------------


def test_counts_durations_and_context_are_in_the_done():
    loop = TokenLoop(completion(want_context=True), context_length=100)
    loop.fit([7, 8, 9])
    done = done_of(run(loop, ["a", "b"], end_of_sequence=True))
    assert (done.prompt_eval_count, done.eval_count) == (3, 2)
    assert done.prompt_eval_duration > 0 and done.eval_duration > 0
    assert loop.first_token_at is not None and loop.started < loop.first_token_at
    assert done.context == [7, 8, 9, 100, 101]


def test_no_context_unless_asked():
    loop = TokenLoop(completion(), context_length=100)
    loop.fit([7])
    assert done_of(run(loop, ["a"])).context is None


def test_a_loop_that_produced_nothing_still_has_durations():
    loop = TokenLoop(completion(), context_length=100)
    loop.fit([1])
    done = done_of(run(loop, [], end_of_sequence=True))
    assert done.eval_count == 0 and done.prompt_eval_duration > 0 and done.eval_duration >= 0


# --- in a worker thread and in an async generator ---------------------------------------------------


def test_it_runs_in_a_worker_thread_through_iterate_in_thread():
    threads: set[int] = set()

    def produce(stop: threading.Event) -> Iterator[Event]:
        threads.add(threading.get_ident())
        loop = TokenLoop(completion(num_predict=4, stop=["!"]), context_length=100)
        loop.fit([1, 2])
        for token, piece in enumerate([b"a", b"b", b"!", b"c"]):
            if stop.is_set():
                break
            if text := loop.push(token, piece):
                yield TextDelta(text)
            if loop.finished:
                break
        yield from loop.finish()

    async def collect() -> list[Event]:
        return [event async for event in iterate_in_thread(produce)]

    events = asyncio.run(collect())
    assert threading.get_ident() not in threads
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b"]
    done = events[-1]
    assert isinstance(done, Done) and (done.reason, done.eval_count, done.prompt_eval_count) == ("stop", 3, 2)


def test_it_runs_in_an_async_generator():
    async def generate() -> AsyncGenerator[Event]:
        loop = TokenLoop(completion(num_predict=2), context_length=100)
        loop.fit([1])
        for token, piece in enumerate(["x", "y", "z"]):
            if text := loop.push(token, piece):
                yield TextDelta(text)
            if loop.finished:
                break
            await asyncio.sleep(0)
        for event in loop.finish():
            yield event

    async def collect() -> list[Event]:
        return [event async for event in generate()]

    events = asyncio.run(collect())
    assert events[:2] == [TextDelta("x"), TextDelta("y")]
    done = events[-1]
    assert isinstance(done, Done) and (done.reason, done.eval_count) == ("length", 2)


def test_done_names_the_stop_string_that_ended_the_answer_and_none_otherwise():
    loop = TokenLoop(completion(stop=["never", "an", "a"]), context_length=100)
    loop.fit([1, 2])
    for token, piece in enumerate([b"It", b" is", b" an", b" owl"], start=10):
        loop.push(token, piece)
        if loop.finished:
            break
    # "a" and "an" both start at the same place: the first listed that matched there is named.
    assert done_of(loop.finish()).stop_sequence == "an"
    unstopped = TokenLoop(completion(stop=["zzz"], num_predict=1), context_length=100)
    unstopped.fit([1, 2])
    unstopped.push(10, b"It")
    assert done_of(unstopped.finish()).stop_sequence is None
