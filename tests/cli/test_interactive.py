"""`modelyard run` in a pseudo-terminal, driven like a user at the keyboard (pexpect), against real servers.

The echo server answers with the last user message and counts every word of the conversation as a
prompt token, so `/set verbose`'s "prompt eval count" tells exactly what the session sent: whether a
/command reached the model, whether a multi-line message went as one, what `/clear` forgot. The
llama.cpp server with the bundled SmolLM2 checks what a user of the real model sees.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

MODEL = "smollm2:135m"
PROMPT = ">>> "
TIMEOUT = 60


class Terminal:
    """`modelyard run MODEL` in a pseudo-terminal."""

    def __init__(self, server_url: str, home: Path, *args: str, preexec_fn: Callable[[], None] | None = None) -> None:
        # HOME: the session's history file goes to ~/.modelyard/history.
        env = {**os.environ, "OLLAMA_HOST": server_url, "TERM": "xterm", "HOME": str(home)}
        env.pop("OLLAMA_NOHISTORY", None)
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "modelyard", "run", *args],
            env=env,
            encoding="utf-8",
            timeout=TIMEOUT,
            dimensions=(40, 200),
            preexec_fn=preexec_fn,
        )
        self.child.expect_exact(PROMPT)
        # The echo backend counts the model's SYSTEM message too (the bundled SmolLM2 has Ollama's).
        shown = httpx.post(server_url + "/api/show", json={"model": args[0]}, timeout=TIMEOUT).json()
        self.system = shown.get("system", "")
        self.system_words = len(self.system.split())

    def send(self, line: str) -> str:
        """Type a line and Enter; what was printed until the next `>>> ` prompt (the line's echo left out)."""
        self.child.sendline(line)
        self.child.expect_exact(line + "\r\n")
        self.child.expect_exact(PROMPT)
        return plain(self.child.before)

    def verbose_prompt_tokens(self, line: str) -> int:
        """Send a message with `/set verbose` on: the prompt eval count the stats report, less the system's."""
        return self.prompt_tokens(self.send(line))

    def prompt_tokens(self, output: str) -> int:
        """The prompt eval count in verbose stats, less the words of the model's system message."""
        return int(re.search(r"prompt eval count:\s+(\d+) token\(s\)", output).group(1)) - self.system_words

    def close(self) -> int:
        if self.child.isalive():
            self.child.sendline("/bye")
            self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


def plain(text: str) -> str:
    """Terminal output without the spinner's escape codes and carriage returns."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]|\r", "", text)


@pytest.fixture
def echo_terminal(echo_server, tmp_path) -> Iterator[Terminal]:
    terminal = Terminal(echo_server.url, tmp_path, MODEL)
    yield terminal
    terminal.close()


@pytest.fixture
def llama_terminal(llama_server, tmp_path) -> Iterator[Terminal]:
    terminal = Terminal(llama_server.url, tmp_path, MODEL)
    terminal.send("/set parameter num_predict 16")
    yield terminal
    terminal.close()


def test_help_is_printed_and_not_sent_to_the_model(echo_terminal):
    help_text = echo_terminal.send("/?")
    assert "Available Commands:" in help_text and "/? shortcuts    Help for keyboard shortcuts" in help_text
    assert 'Use """ to begin a multi-line message.' in help_text
    assert echo_terminal.send("/help").strip() == help_text.strip()
    assert "/set parameter ...     Set a parameter" in echo_terminal.send("/? set")
    assert "/show modelfile    Show Modelfile for this model" in echo_terminal.send("/? show")
    assert "Ctrl + c            Stop the model from responding" in echo_terminal.send("/? shortcuts")
    assert echo_terminal.send("/set verbose").strip() == "Set 'verbose' mode."
    # Only "hello" reached the model: none of the help requests became a message.
    assert echo_terminal.verbose_prompt_tokens("hello") == 1


def test_unknown_commands_are_reported_not_sent(echo_terminal):
    assert echo_terminal.send("/foo bar").strip() == "Unknown command '/foo'. Type /? for help"
    assert echo_terminal.send("/set foo").strip() == "Unknown command '/set foo'. Type /? for help"
    assert echo_terminal.send("/show foo").strip() == "Unknown command '/show foo'. Type /? for help"
    echo_terminal.send("/set verbose")
    assert echo_terminal.verbose_prompt_tokens("hello") == 1


def test_a_refused_message_is_reported_and_left_out(echo_terminal):
    thinking = echo_terminal.send("/set think")
    assert thinking.strip() == "warning: model \"smollm2:135m\" does not support thinking output\nSet 'think' mode."
    assert echo_terminal.send("hello").strip() == 'Error: "smollm2:135m" does not support thinking'
    echo_terminal.send("/set nothink")
    echo_terminal.send("/set verbose")
    assert echo_terminal.verbose_prompt_tokens("again") == 1  # the refused "hello" is not in the conversation


def test_triple_quotes_make_one_message(echo_terminal):
    echo_terminal.send("/set verbose")
    child = echo_terminal.child
    child.sendline('"""')
    for line in ("first line", "second line"):
        child.expect_exact("... ")
        child.sendline(line)
    child.expect_exact("... ")
    child.sendline('"""')
    child.expect_exact(PROMPT)
    output = plain(child.before)
    # The echo backend repeats the last user message: both lines, as one message of four words.
    assert "first line\nsecond line\n\n" in output
    assert echo_terminal.prompt_tokens(output) == 4
    assert re.search(r"eval count:\s+4 token\(s\)", output.split("prompt eval rate")[-1])


def test_pasted_lines_make_one_message(echo_terminal):
    echo_terminal.send("/set verbose")
    child = echo_terminal.child
    child.send("\x1b[200~pasted one\rpasted two\x1b[201~\r")  # a terminal's bracketed paste, then Enter
    child.expect_exact("pasted two\r\n")  # the echo of the pasted text
    child.expect_exact(PROMPT)
    # Before each prompt the terminal is asked to mark pastes (Python's readline leaves that off).
    assert child.before.endswith("\x1b[?2004h")
    output = plain(child.before)
    assert "pasted one\npasted two\n\n" in output
    assert echo_terminal.prompt_tokens(output) == 4


def test_answers_end_with_an_empty_line(echo_terminal):
    output = echo_terminal.send("one two three")
    assert output.endswith("one two three\n\n")


def interrupt_a_long_answer(child: pexpect.spawn) -> str:
    """Ask for a 300-word echo (15 s at the echo server's 0.05 s a word), press Ctrl+C once it streams, and
    return what was printed until the next prompt."""
    words = [f"w{i}" for i in range(300)]
    child.sendline(" ".join(words))
    child.expect_exact(words[-1] + "\r\n")  # the typed line's echo
    child.expect(r"\bw3\b")  # the answer is streaming
    child.sendintr()
    child.expect_exact(PROMPT)
    return child.before


def test_ctrl_c_stops_the_answer_and_keeps_the_session(echo_terminal):
    """Ctrl+C drops the partial answer and keeps the question in the session, as Ollama does."""
    printed = interrupt_a_long_answer(echo_terminal.child)
    assert "w299" not in printed
    assert "Use Ctrl + d" not in printed
    echo_terminal.send("/set verbose")
    # The next message works; the conversation is the 300-word question (no answer) and "next".
    output = echo_terminal.send("next")
    assert "next\n\n" in output
    assert echo_terminal.prompt_tokens(output) == 301


def test_ctrl_c_works_when_started_with_sigint_ignored(echo_server, tmp_path):
    """A shell's background job (a script's `cmd &`, nohup) starts with SIGINT ignored; a session at a
    terminal still stops its answer on Ctrl+C."""
    terminal = Terminal(
        echo_server.url, tmp_path, MODEL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    try:
        assert "w299" not in interrupt_a_long_answer(terminal.child)
    finally:
        terminal.close()


def test_ctrl_c_at_an_empty_prompt_says_how_to_leave_and_ctrl_d_leaves(echo_terminal):
    child = echo_terminal.child
    # Ctrl+C on a typed line or inside """ drops the text without the hint.
    child.send("abc")
    child.expect_exact("abc")
    child.sendintr()
    child.expect_exact(PROMPT)
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendintr()
    child.expect_exact(PROMPT)
    assert "Use Ctrl + d" not in child.before
    echo_terminal.send("/set verbose")
    assert echo_terminal.verbose_prompt_tokens("hello") == 1  # neither "abc" nor the quotes were sent
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_bye_exits_with_status_zero(echo_server, tmp_path):
    terminal = Terminal(echo_server.url, tmp_path, MODEL)
    terminal.child.sendline("/bye")
    terminal.child.expect(pexpect.EOF)
    terminal.child.close()
    assert terminal.child.exitstatus == 0


def test_history_is_kept_across_sessions_unless_turned_off(echo_server, tmp_path):
    first = Terminal(echo_server.url, tmp_path, MODEL)
    first.send("an earlier question")
    first.send("/set nohistory")
    first.send("a private question")
    assert first.close() == 0
    history = (tmp_path / ".modelyard" / "history").read_text()
    assert "an earlier question" in history and "a private question" not in history
    second = Terminal(echo_server.url, tmp_path, MODEL)
    second.child.send("\x1b[A")  # Up: the last line the history kept
    second.child.expect_exact("/set nohistory")
    second.child.send("\x1b[A\r")
    second.child.expect_exact("an earlier question\r\n")
    second.child.expect_exact(PROMPT)
    assert "an earlier question\n\n" in plain(second.child.before)  # the echo server's answer
    assert second.close() == 0


def test_set_system_and_parameters_then_show_them(echo_terminal):
    assert echo_terminal.system  # the bundled SmolLM2 has Ollama's SYSTEM
    assert echo_terminal.send("/show system").strip() == echo_terminal.system
    assert echo_terminal.send("/set system   You are   terse.").strip() == "Set system message."
    assert echo_terminal.send("/show system") == "You are terse.\n\n"
    assert echo_terminal.send("/set parameter num_predict 16").strip() == "Set parameter 'num_predict' to '16'"
    assert echo_terminal.send("/set parameter stop a b").strip() == "Set parameter 'stop' to 'a, b'"
    assert echo_terminal.send("/set parameter nope 1").strip() == "Couldn't set parameter: \"unknown parameter 'nope'\""
    assert echo_terminal.send("/set parameter top_k x").strip() == 'Couldn\'t set parameter: "invalid int value [x]"'
    parameters = echo_terminal.send("/show parameters")
    assert "User defined parameters:" in parameters
    assert re.search(r"num_predict\s+16\n", parameters) and re.search(r"stop\s+\[a b\]\n", parameters)
    # A multi-line system message.
    child = echo_terminal.child
    child.sendline('/set system """Line one.')
    child.expect_exact("... ")
    child.sendline('Line two."""')
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    assert echo_terminal.send("/show system") == "Line one.\nLine two.\n\n"
    child.sendline('/set system """')
    child.expect_exact("... ")
    child.sendline("Alone.")
    child.expect_exact("... ")
    child.sendline('"""')
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    assert echo_terminal.send("/show system") == "Alone.\n\n\n"  # "Alone." keeps its line break, as in Ollama


def test_set_format_and_display_modes(echo_terminal):
    assert (
        echo_terminal.send("/set format xml").strip()
        == "Invalid or missing format. For 'json' mode use '/set format json'"
    )
    assert echo_terminal.send("/set format json").strip() == "Set format to 'json' mode."
    assert '{"echo": "hi there"}\n\n' in echo_terminal.send("hi there")  # the echo backend's JSON mode
    assert echo_terminal.send("/set noformat").strip() == "Disabled format."
    assert echo_terminal.send("plain again").endswith("plain again\n\n")
    assert echo_terminal.send("/set nowordwrap").strip() == "Set 'nowordwrap' mode."
    assert echo_terminal.send("/set wordwrap").strip() == "Set 'wordwrap' mode."
    assert echo_terminal.send("/set quiet").strip() == "Set 'quiet' mode."
    assert "total duration" not in echo_terminal.send("no stats")


def test_clear_forgets_the_conversation(echo_terminal):
    echo_terminal.send("/set verbose")
    assert echo_terminal.verbose_prompt_tokens("one two") == 2
    assert echo_terminal.verbose_prompt_tokens("three") == 5  # "one two" + its echo + "three"
    assert echo_terminal.send("/clear").strip() == "Cleared session context"
    assert echo_terminal.verbose_prompt_tokens("four") == 1


def test_save_creates_a_model_and_load_switches_to_it(echo_terminal, echo_server, tmp_path):
    name = f"session-{uuid.uuid4().hex[:8]}"
    echo_terminal.send("/set system Be brief.")
    echo_terminal.send("/set parameter num_predict 16")
    echo_terminal.send("remember this")
    assert echo_terminal.send(f"/save {name}").strip() == f"Created new model '{name}'"
    assert echo_terminal.send("/save Not A Name").strip() == "Usage:\n  /save <modelname>"
    assert echo_terminal.send("/save bad:name:x").strip() == "error: The model name 'bad:name:x' is invalid"
    with httpx.Client(base_url=echo_server.url, timeout=30) as http:
        assert f"{name}:latest" in [model["name"] for model in http.get("/api/tags").json()["models"]]
        saved = http.post("/api/show", json={"model": name}).json()
        assert saved["system"] == "Be brief."
        assert re.search(r"num_predict\s+16", saved["parameters"])
        assert [(m["role"], m["content"]) for m in saved["messages"]] == [
            ("system", "Be brief."),
            ("user", "remember this"),
            ("assistant", "remember this"),
        ]
        try:
            # A session on the saved model starts where it left off.
            resumed = Terminal(echo_server.url, tmp_path, name)
            resumed.child.expect_exact(PROMPT)
            assert plain(resumed.child.before) == "remember this\nremember this\n\n"
            assert resumed.close() == 0
            assert echo_terminal.send("/load no-such-model").strip() == (
                "Loading model 'no-such-model'\nCouldn't find model 'no-such-model'"
            )
            assert echo_terminal.send(f"/load {name}").strip() == f"Loading model '{name}'"
            # The session is the saved model's now: its system message, a fresh conversation.
            assert echo_terminal.send("/show system") == "Be brief.\n\n"
            assert "num_predict" in echo_terminal.send("/show parameters").split("User defined")[0]
        finally:
            http.request("DELETE", "/api/delete", json={"model": name})


@pytest.mark.slow
def test_real_model_show_commands(llama_terminal):
    info = llama_terminal.send("/show info")
    assert re.search(r"architecture\s+llama\n", info) and "134.52M" in info and "Q4_1" in info
    assert "completion" in info
    assert llama_terminal.send("/show modelfile").startswith("# Modelfile generated by")
    template = llama_terminal.send("/show template")
    assert template.startswith("{{- if .Messages }}")  # Ollama's library template of smollm2:135m
    assert llama_terminal.send("/show license").strip()


@pytest.mark.slow
def test_real_model_chat_with_stats_and_ctrl_c(llama_terminal):
    llama_terminal.send("/set verbose")
    output = llama_terminal.send("Say hello.")
    stats = output[output.index("total duration:") :]
    for label in ("load duration:", "prompt eval count:", "prompt eval rate:", "eval count:", "eval rate:"):
        assert label in stats
    answer = output[: output.index("total duration:")]
    assert answer.strip() and answer.endswith("\n\n")
    # A long answer, stopped after its first words; the session goes on.
    llama_terminal.send("/set parameter num_predict 2000")
    child = llama_terminal.child
    question = "Write a very long story about a dragon, in many chapters."
    child.sendline(question)
    child.expect_exact(question + "\r\n")
    child.expect(r"\w+ \w+ \w+")
    child.sendintr()
    child.expect_exact(PROMPT)
    assert "total duration:" not in child.before  # stopped: no stats, no final part
    llama_terminal.send("/set parameter num_predict 8")
    after = llama_terminal.send("Say yes.")
    assert "eval count:" in after and after[: after.index("total duration:")].strip()
