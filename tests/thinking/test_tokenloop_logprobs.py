"""TokenLoop keeps each token's log probability until the text it belongs to is shown."""

from __future__ import annotations

from modelyard.plugin import Completion, Done, Event, Logprobs, Options, TextDelta, TokenLogprob, TokenLoop


def run(pieces: list[bytes], stop: list[str] | None = None) -> list[Event]:
    loop = TokenLoop(Completion(options=Options(stop=stop or []), prompt=""), 64)
    loop.fit([1, 2, 3])
    events: list[Event] = []
    for token, piece in enumerate(pieces):
        logprob = TokenLogprob(token=piece.decode(errors="replace"), logprob=-float(token), bytes=list(piece))
        if text := loop.push(token, piece, logprob):
            events.extend(loop.deltas(text))
        if loop.finished:
            break
    events.extend(loop.finish())
    return events


def shown(events: list[Event]) -> list[tuple[list[float], str]]:
    """(logprobs, text) for each TextDelta, the logprobs of the Logprobs event just before it."""
    pairs = []
    for index, event in enumerate(events):
        if isinstance(event, TextDelta):
            before = events[index - 1] if index else None
            pairs.append(([t.logprob for t in before.tokens] if isinstance(before, Logprobs) else [], event.text))
    return pairs


def test_each_text_follows_the_logprobs_of_its_tokens() -> None:
    events = run([b"Hello", b" world"])
    assert shown(events) == [([-0.0], "Hello"), ([-1.0], " world")]
    assert isinstance(events[-1], Done)


def test_a_character_split_over_tokens_waits_for_its_last_byte() -> None:
    party = "🎉".encode()
    events = run([b"A", party[:2], party[2:3], party[3:]])
    assert shown(events) == [([-0.0], "A"), ([-1.0, -2.0, -3.0], "🎉")]


def test_text_held_back_for_a_stop_string_keeps_its_logprobs() -> None:
    # "E" could begin the stop string "END": held back, then shown with its token's logprob once "x" follows.
    events = run([b"a", b"E", b"x", b"b"], stop=["END"])
    assert shown(events) == [([-0.0], "a"), ([-1.0, -2.0], "Ex"), ([-3.0], "b")]


def test_tokens_of_a_cut_stop_string_report_nothing() -> None:
    events = run([b"a", b"EN", b"D", b"never"], stop=["END"])
    assert shown(events) == [([-0.0], "a")]
    assert sum(isinstance(event, Logprobs) for event in events) == 1


def test_held_back_tail_is_shown_with_its_logprobs_at_the_end() -> None:
    events = run([b"a", b"EN"], stop=["END"])
    assert shown(events) == [([-0.0], "a"), ([-1.0], "EN")]
