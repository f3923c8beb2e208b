"""How `modelyard run` prints: Go's duration format in the stats, words wrapped at the terminal's width."""

from __future__ import annotations

import io

import pytest

from modelyard.cli.interactive import AnswerWriter, Session, go_duration, stream_answer


@pytest.mark.parametrize(
    ("nanoseconds", "printed"),
    [  # what Go's time.Duration.String prints for these
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (12_345_678, "12.345678ms"),
        (1_000_000_000, "1s"),
        (1_503_000_000, "1.503s"),
        (120_000_000_000, "2m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
    ],
)
def test_go_duration(nanoseconds, printed):
    assert go_duration(nanoseconds) == printed


def test_words_wrap_at_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")  # a line holds 25 characters, as Ollama leaves 5 free
    out = io.StringIO()
    writer = AnswerWriter(out, wrap=True)
    text = "the quick brown fox jumps over the lazy dog and keeps running far away\nnew paragraph here"
    for start in range(0, len(text), 7):  # streamed in pieces that cut words
        writer.write(text[start : start + 7])
    writer.finish()
    lines = out.getvalue().split("\n")
    assert all(len(line) <= 25 for line in lines)
    assert out.getvalue().split() == text.split()  # no word cut, none lost
    assert "new paragraph here" in lines  # the answer's own line break is kept


def test_no_wrapping_when_asked(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    out = io.StringIO()
    writer = AnswerWriter(out, wrap=False)
    text = "a long line " * 10
    writer.write(text)
    writer.finish()
    assert out.getvalue() == text


class StreamingClient:
    """Streams given parts, as `Client.stream` yields the server's NDJSON lines (no model answers thinking)."""

    def __init__(self, parts: list[dict]) -> None:
        self.parts = parts

    def stream(self, path: str, body: dict):
        yield from self.parts


def test_thinking_is_shown_before_the_answer(capsys):
    parts = [
        {"message": {"role": "assistant", "content": "", "thinking": "Let me "}, "done": False},
        {"message": {"role": "assistant", "content": "", "thinking": "think."}, "done": False},
        {"message": {"role": "assistant", "content": "Yes."}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 3, "eval_duration": 1_500_000},
    ]
    session = Session(model="m", verbose=True)
    answer = stream_answer(StreamingClient(parts), "/api/chat", {}, session)
    printed = capsys.readouterr()
    assert printed.out == "Thinking...\nLet me think.\n...done thinking.\n\nYes.\n\n"  # Ollama's plain-text form
    assert (
        printed.err
        == "eval count:           3 token(s)\neval duration:        1.5ms\neval rate:            2000.00 tokens/s\n"
    )
    assert (answer.content, answer.thinking) == ("Yes.", "Let me think.")
