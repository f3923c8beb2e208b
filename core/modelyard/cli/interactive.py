"""`modelyard run`: one prompt, or an interactive chat session with Ollama's /commands.

The texts, the order of the checks and the session's rules follow Ollama's `cmd/interactive.go` and
`cmd/cmd.go`, so a user of `ollama run` meets the same session: `/set`, `/show`, `/load`, `/save`,
`/clear`, `/bye`, `\"\"\"` multi-line messages, Ctrl+C to stop an answer, Ctrl+D to leave.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from modelyard.cli import Client, ServerError, list_models, print_model_info
from modelyard.runtime.options import OPTION_KINDS

try:  # line editing and history where the platform has GNU readline (not on Windows)
    import readline
except ImportError:  # pragma: no cover - depends on the platform
    readline = None  # type: ignore[assignment]

MULTILINE_QUOTES = '"""'
EXIT_HINT = "Use Ctrl + d or /bye to exit."
HISTORY_LIMIT = 100
GREY, BOLD, RESET = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

# The keys Python's readline binds (emacs mode); no Ctrl+g editor, unlike Ollama's own line editor.
USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit modelyard (/bye)
"""

USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""


@dataclass
class Session:
    """What `/save` keeps and every chat request carries."""

    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    loaded_messages: list[dict[str, Any]] = field(default_factory=list)  # the model's own MESSAGEs
    parent_model: str = ""
    system: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    format: str = ""
    think: bool | str | None = None
    keep_alive: str | None = None
    verbose: bool = False
    word_wrap: bool = True
    history: bool = True


# --- output ---------------------------------------------------------------------------------------


def go_duration(nanoseconds: int) -> str:
    """A duration as Go's time.Duration prints it (`1.503s`, `12.4ms`, `2m0s`), as Ollama's stats do."""

    def with_fraction(value: int, unit: int) -> str:
        whole, part = divmod(value, unit)
        digits = len(str(unit)) - 1
        return f"{whole}.{str(part).zfill(digits).rstrip('0')}" if part else str(whole)

    if nanoseconds == 0:
        return "0s"
    if nanoseconds < 1_000:
        return f"{nanoseconds}ns"
    if nanoseconds < 1_000_000:
        return with_fraction(nanoseconds, 1_000) + "µs"
    if nanoseconds < 1_000_000_000:
        return with_fraction(nanoseconds, 1_000_000) + "ms"
    hours, rest = divmod(nanoseconds, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = with_fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def print_stats(final: dict[str, Any], file: TextIO) -> None:
    """`--verbose` / `/set verbose`: Ollama's Metrics.Summary from the last streamed part."""
    total, load = final.get("total_duration", 0), final.get("load_duration", 0)
    prompt_count, prompt_duration = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    eval_count, eval_duration = final.get("eval_count", 0), final.get("eval_duration", 0)
    if total > 0:
        print(f"total duration:       {go_duration(total)}", file=file)
    if load > 0:
        print(f"load duration:        {go_duration(load)}", file=file)
    if prompt_count > 0:
        print(f"prompt eval count:    {prompt_count} token(s)", file=file)
    if prompt_duration > 0:
        print(f"prompt eval duration: {go_duration(prompt_duration)}", file=file)
        print(f"prompt eval rate:     {prompt_count / (prompt_duration / 1e9):.2f} tokens/s", file=file)
    if eval_count > 0:
        print(f"eval count:           {eval_count} token(s)", file=file)
    if eval_duration > 0:
        print(f"eval duration:        {go_duration(eval_duration)}", file=file)
        print(f"eval rate:            {eval_count / (eval_duration / 1e9):.2f} tokens/s", file=file)


class AnswerWriter:
    """Writes streamed text, wrapping words at the terminal's width when asked.

    Ollama prints each character and backtracks over a word that overflows with escape codes; holding
    back the word being written until it ends gives the same lines with plain text only.
    """

    def __init__(self, out: TextIO, wrap: bool) -> None:
        self.out = out
        self.limit = shutil.get_terminal_size().columns - 5 if wrap else 0
        self.column = 0
        self.word = ""

    def write(self, text: str) -> None:
        if self.limit < 5:
            self.out.write(text)
        else:
            for char in text:
                if char in "\r\n":
                    self._end_word()
                    self.out.write(char)
                    self.column = 0
                elif char in " \t":
                    self._end_word()
                    if self.column + 1 > self.limit:
                        self.out.write("\n")
                        self.column = 0
                    else:
                        self.out.write(char)
                        self.column += 1
                else:
                    self.word += char
                    if len(self.word) >= self.limit:  # longer than a line: break it anywhere
                        self._end_word()
        self.out.flush()

    def style(self, code: str) -> None:
        """An escape code: written in place, taking no room on the line."""
        self._end_word()
        self.out.write(code)

    def _end_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.limit:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += len(self.word)
        self.word = ""

    def finish(self) -> None:
        self._end_word()
        self.out.flush()


@dataclass
class Answer:
    content: str
    thinking: str
    final: dict[str, Any]  # the last streamed part: done_reason, counts and durations


def stream_answer(client: Client, path: str, body: dict[str, Any], session: Session) -> Answer | None:
    """Stream one answer to stdout (a spinner on stderr until it starts); None when Ctrl+C stopped it.

    Ctrl+C raises KeyboardInterrupt inside the read; leaving the `with` closes the streamed response,
    which is how the server learns to stop generating.
    """
    from rich.console import Console

    styled = sys.stdout.isatty()
    writer = AnswerWriter(sys.stdout, session.word_wrap and styled)
    content: list[str] = []
    thinking: list[str] = []
    final: dict[str, Any] = {}
    thinking_open = False
    console = Console(stderr=True)
    parts = client.stream(path, body)
    try:
        waiting = console.status("", spinner="dots") if console.is_terminal else contextlib.nullcontext()
        with waiting:
            first = next(parts, None)
        for part in _chain(first, parts) if first is not None else ():
            final = part
            text, thought = _texts(part)
            if thought:
                if not thinking_open:  # Ollama's grey "Thinking..." block
                    writer.style(GREY + BOLD if styled else "")
                    writer.write("Thinking...\n")
                    writer.style(RESET + GREY if styled else "")
                    thinking_open = True
                thinking.append(thought)
                writer.write(thought)
            if text:
                if thinking_open:
                    writer.style(GREY + BOLD if styled else "")
                    writer.write(("" if "".join(thinking).endswith("\n") else "\n") + "...done thinking.\n\n")
                    writer.style(RESET if styled else "")
                    thinking_open = False
                content.append(text)
                writer.write(text)
    except (KeyboardInterrupt, ServerError) as stopped:
        writer.finish()
        if content or thinking or isinstance(stopped, KeyboardInterrupt):
            sys.stdout.write("\n")  # the next prompt starts on a line of its own (after a ^C too)
        sys.stdout.flush()
        if isinstance(stopped, ServerError):
            raise
        return None
    finally:
        parts.close()  # closes the streamed response whatever line Ctrl+C interrupted
    writer.finish()
    # Ollama ends every answer with an empty line.
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    if session.verbose:
        print_stats(final, sys.stderr)
    return Answer("".join(content), "".join(thinking), final)


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Generator[dict[str, Any]]:
    yield first
    yield from rest


def _texts(part: dict[str, Any]) -> tuple[str, str]:
    """(content, thinking) of a chat or a generate part."""
    if "message" in part:
        message = part["message"]
        return message.get("content", ""), message.get("thinking", "")
    return part.get("response", ""), part.get("thinking", "")


# --- the session's commands -----------------------------------------------------------------------


def request_body(session: Session, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": session.model, **fields}
    if session.options:
        body["options"] = session.options
    if session.format:
        body["format"] = session.format
    if session.think is not None:
        body["think"] = session.think
    if session.keep_alive is not None:
        body["keep_alive"] = session.keep_alive
    return body


GO_BOOLEANS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}  # strconv.ParseBool
KIND_WORDS = {"integer": "int", "float32": "float", "boolean": "bool"}  # as FormatParams names them


def parse_parameter(name: str, values: list[str]) -> Any:
    """A typed option value as Ollama's api.FormatParams makes it; ValueError with its message."""
    kind = OPTION_KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}'")
    try:
        if kind == "integer":
            return int(values[0])
        if kind == "float32":
            return float(values[0])
        if kind == "boolean":
            return GO_BOOLEANS[values[0].lower()]
    except (ValueError, KeyError):
        raise ValueError(f"invalid {KIND_WORDS[kind]} value [{' '.join(values)}]") from None
    return list(values)


def go_value(value: Any) -> str:
    """A parameter value as Go's %v prints it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + " ".join(str(item) for item in value) + "]"
    return str(value)


def set_system(session: Session, text: str) -> None:
    """A new system message replaces a system message at the end of the session, else is added."""
    session.system = text
    message = {"role": "system", "content": text}
    if session.messages and session.messages[-1]["role"] == "system":
        session.messages[-1] = message
    else:
        session.messages.append(message)
    print("Set system message.")


def warn_without_thinking(client: Client, model: str) -> None:
    capabilities = client.post("/api/show", {"model": model}).get("capabilities") or []
    if "thinking" not in capabilities:
        print(f'warning: model "{model}" does not support thinking output', file=sys.stderr)


def set_command(client: Client, session: Session, words: list[str]) -> str | None:
    """`/set ...`; returns the text after `/set system \"\"\"` when a multi-line system message starts."""
    if len(words) < 2:
        sys.stderr.write(USAGE_SET + "\n")
        return None
    setting = words[1]
    if setting == "history":
        session.history = True
    elif setting == "nohistory":
        session.history = False
    elif setting in ("wordwrap", "nowordwrap"):
        session.word_wrap = setting == "wordwrap"
        print(f"Set '{setting}' mode.")
    elif setting in ("verbose", "quiet"):
        session.verbose = setting == "verbose"
        print(f"Set '{setting}' mode.")
    elif setting == "think":
        session.think = words[2] if len(words) > 2 else True
        warn_without_thinking(client, session.model)
        print(f"Set 'think' mode to '{words[2]}'." if len(words) > 2 else "Set 'think' mode.")
    elif setting == "nothink":
        session.think = False
        warn_without_thinking(client, session.model)
        print("Set 'nothink' mode.")
    elif setting == "format":
        if len(words) < 3 or words[2] != "json":
            print("Invalid or missing format. For 'json' mode use '/set format json'")
        else:
            session.format = "json"
            print("Set format to 'json' mode.")
    elif setting == "noformat":
        session.format = ""
        print("Disabled format.")
    elif setting == "parameter":
        if len(words) < 4:
            sys.stderr.write(USAGE_PARAMETERS + "\n")
            return None
        name, values = words[2], words[3:]
        try:
            session.options[name] = parse_parameter(name, values)
        except ValueError as exc:
            print(f'Couldn\'t set parameter: "{exc}"')
            return None
        print(f"Set parameter '{name}' to '{', '.join(values)}'")
    elif setting == "system":
        if len(words) < 3:
            sys.stderr.write(USAGE_SET + "\n")
            return None
        text = " ".join(words[2:])  # Ollama joins the words: runs of spaces become one
        if text.startswith(MULTILINE_QUOTES):
            text = text[len(MULTILINE_QUOTES) :]
            if not text.endswith(MULTILINE_QUOTES):
                return text
            text = text[: -len(MULTILINE_QUOTES)]
        set_system(session, text)
    else:
        print(f"Unknown command '/set {setting}'. Type /? for help")
    return None


def show_command(client: Client, session: Session, words: list[str]) -> None:
    if len(words) < 2:
        sys.stderr.write(USAGE_SHOW + "\n")
        return
    body: dict[str, Any] = {"model": session.model}
    if session.system:
        body["system"] = session.system
    if session.options:
        body["options"] = session.options
    info = client.post("/api/show", body)
    topic = words[1]
    if topic == "info":
        print_model_info(info, sys.stderr)
        print(file=sys.stderr)
    elif topic == "license":
        print(info.get("license") or "No license was specified for this model.")
    elif topic == "modelfile":
        print(info.get("modelfile", ""))
    elif topic == "parameters":
        print("Model defined parameters:")
        if info.get("parameters"):
            for parameter in info["parameters"].split("\n"):
                print(f"  {parameter}")
        else:
            print("  No additional parameters were specified for this model.")
        print()
        if session.options:
            print("User defined parameters:")
            for name, value in session.options.items():
                print(f"  {name:<30} {go_value(value)}")
            print()
    elif topic == "system":
        system = session.system or info.get("system", "")
        print(system + "\n" if system else "No system message was specified for this model.")
    elif topic == "template":
        print(info.get("template") or "No prompt template was specified for this model.")
    else:
        print(f"Unknown command '/show {topic}'. Type /? for help")


def help_command(client: Client, session: Session, words: list[str]) -> None:
    topic = words[1] if len(words) > 1 else None
    if topic is None:
        sys.stderr.write(USAGE + "\n")
    elif topic in ("set", "/set"):
        sys.stderr.write(USAGE_SET + "\n")
    elif topic in ("show", "/show"):
        sys.stderr.write(USAGE_SHOW + "\n")
    elif topic in ("shortcut", "shortcuts"):
        sys.stderr.write(USAGE_SHORTCUTS + "\n")


def load_model(client: Client, model: str, keep_alive: str | None) -> None:
    """Ask the server to load the model (with a spinner), as `ollama run` does before the first prompt."""
    from rich.console import Console

    console = Console(stderr=True)
    waiting = console.status("", spinner="dots") if console.is_terminal else contextlib.nullcontext()
    body: dict[str, Any] = {"model": model}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    with waiting:
        client.post("/api/generate", body)


def apply_show(session: Session, info: dict[str, Any]) -> None:
    session.parent_model = info.get("details", {}).get("parent_model", "")
    session.loaded_messages = list(info.get("messages") or [])


def load_command(client: Client, session: Session, words: list[str]) -> None:
    """`/load MODEL`: a new session on another model; the session is kept when the model is unknown."""
    if len(words) != 2:
        print("Usage:\n  /load <modelname>")
        return
    print(f"Loading model '{words[1]}'")
    try:
        info = client.post("/api/show", {"model": words[1]})
    except ServerError as exc:
        if "not found" in str(exc):
            print(f"Couldn't find model '{words[1]}'")
            return
        raise
    load_model(client, words[1], session.keep_alive)  # a model that fails to load keeps the session as it was
    session.model = words[1]
    session.messages = []
    apply_show(session, info)


def save_command(client: Client, session: Session, words: list[str]) -> None:
    """`/save NAME`: a model made of the session (its base, system, parameters, messages) via /api/create."""
    if len(words) != 2:
        print("Usage:\n  /save <modelname>")
        return
    body: dict[str, Any] = {"model": words[1], "from": session.parent_model or session.model}
    if session.system:
        body["system"] = session.system
    if session.options:
        body["parameters"] = session.options
    messages = session.loaded_messages + session.messages
    if messages:
        body["messages"] = messages
    try:
        client.post("/api/create", body)
    except ServerError as exc:
        if "invalid model name" in str(exc):
            print(f"error: The model name '{words[1]}' is invalid")
            return
        raise
    print(f"Created new model '{words[1]}'")


def clear_command(client: Client, session: Session, words: list[str]) -> None:
    """`/clear`: a new conversation that keeps the session's system message."""
    session.messages = [{"role": "system", "content": session.system}] if session.system else []
    print("Cleared session context")


def list_command(client: Client, session: Session, words: list[str]) -> None:
    list_models(client, argparse.Namespace())


# A command returns the start of a multi-line system message when it begins one (`/set system """...`).
Command = Callable[[Client, Session, list[str]], str | None]
COMMANDS: dict[str, Command] = {
    "/?": help_command,
    "/help": help_command,
    "/set": set_command,
    "/show": show_command,
    "/load": load_command,
    "/save": save_command,
    "/clear": clear_command,
    "/list": list_command,
}
EXIT_COMMANDS = ("/bye", "/exit")


# --- the loop -------------------------------------------------------------------------------------


class LineReader:
    """input() with readline's editing and history, a prompt for first lines and one for continuations.

    History is kept across sessions in a file, as Ollama keeps ~/.ollama/history (the last 100 lines,
    saved after each one); `/set nohistory` or OLLAMA_NOHISTORY stop adding to it.
    """

    def __init__(self, session: Session, history_file: Path) -> None:
        self.session = session
        self.history_file = history_file
        if os.environ.get("OLLAMA_NOHISTORY"):
            session.history = False
        if readline is not None:
            if "libedit" not in (readline.__doc__ or ""):
                # Python turns bracketed paste off; on, a pasted block of lines is one message, as in Ollama.
                readline.parse_and_bind("set enable-bracketed-paste on")
            readline.set_history_length(HISTORY_LIMIT)
            with contextlib.suppress(OSError):  # no history yet
                readline.read_history_file(history_file)

    def read(self, continuation: bool) -> str:
        line = input("... " if continuation else ">>> ")
        if readline is None or not line:
            return line
        if not self.session.history:
            readline.remove_history_item(readline.get_current_history_length() - 1)
        else:
            with contextlib.suppress(OSError):  # a read-only home still gets a session
                self.history_file.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(self.history_file)
        return line

    @staticmethod
    def typed_so_far() -> str:
        return readline.get_line_buffer() if readline is not None else ""


def chat_loop(client: Client, session: Session) -> int:
    reader = LineReader(session, Path.home() / ".modelyard" / "history")
    pending: list[str] = []  # the lines of a multi-line message or system message
    multiline: str | None = None  # "prompt" or "system" while inside \"\"\" ... \"\"\"
    while True:
        try:
            line = reader.read(continuation=multiline is not None)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            if not reader.typed_so_far() and multiline is None:
                print(f"\n{EXIT_HINT}")
            else:
                print()
            pending, multiline = [], None
            continue

        if multiline is not None:
            text, closed = _cut_suffix(line, MULTILINE_QUOTES)
            pending.append(text)
            if not closed:
                pending.append("\n")
                continue
            if multiline == "system":
                set_system(session, "".join(pending))
                pending = []
            multiline = None
        elif line.startswith(MULTILINE_QUOTES):
            text, closed = _cut_suffix(line[len(MULTILINE_QUOTES) :], MULTILINE_QUOTES)
            pending.append(text)
            if not closed:
                pending.append("\n")
                multiline = "prompt"
        elif line.startswith("/"):
            words = line.split()
            if words[0] in EXIT_COMMANDS:
                return 0
            command = COMMANDS.get(words[0])
            if command is None:
                print(f"Unknown command '{words[0]}'. Type /? for help")
                continue
            try:
                started = command(client, session, words)
            except ServerError as exc:
                print(f"Error: {exc}", file=sys.stderr)
            except KeyboardInterrupt:  # a slow /show, /load or /save given up
                print()
            else:
                if started is not None:
                    pending, multiline = [started, "\n"] if started else [], "system"
            continue
        else:
            pending.append(line)

        message = "".join(pending)
        if message and multiline is None:
            pending = []
            # The question stays in the session even when Ctrl+C drops its answer, as in Ollama.
            session.messages.append({"role": "user", "content": message})
            try:
                answer = stream_answer(client, "/api/chat", request_body(session, messages=session.messages), session)
            except ServerError as exc:
                # Ollama ends the session here; staying, the message that failed must not fail the next one.
                session.messages.pop()
                print(f"Error: {exc}", file=sys.stderr)
                continue
            if answer is not None:
                reply: dict[str, Any] = {"role": "assistant", "content": answer.content}
                if answer.thinking:
                    reply["thinking"] = answer.thinking
                session.messages.append(reply)


def _cut_suffix(text: str, suffix: str) -> tuple[str, bool]:
    return (text[: -len(suffix)], True) if text.endswith(suffix) else (text, False)


def run_model(client: Client, args: argparse.Namespace) -> int:
    """`modelyard run MODEL [PROMPT...]`: Ollama's rules for choosing between one answer and a session.

    Piped stdin is read and put before the prompt's words; with a prompt, piped stdin or stdout going to
    a file or pipe, the model answers once (through /api/generate, as Ollama does), else a session starts.
    """
    if sys.stdin.isatty():
        # Ctrl+C comes from the user at this terminal: it stops an answer even when whatever started us
        # ignored SIGINT (a script's background job, nohup), which Python would otherwise keep ignoring.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_model(client, args)
    except KeyboardInterrupt:  # while the model loads, or during a one-shot answer's first wait
        print()
        return 130


def _run_model(client: Client, args: argparse.Namespace) -> int:
    session = Session(
        model=args.model,
        format=args.format,
        keep_alive=args.keepalive,
        verbose=args.verbose,
        word_wrap=not args.nowordwrap,
    )
    prompts = list(args.prompt)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)
    prompt = " ".join(prompts)
    info = client.post("/api/show", {"model": args.model})
    apply_show(session, info)
    if prompts or not interactive:
        if not prompt:
            load_model(client, session.model, session.keep_alive)
            return 0
        stream_answer(client, "/api/generate", request_body(session, prompt=prompt), session)
        return 0
    load_model(client, session.model, session.keep_alive)
    for message in session.loaded_messages:  # a saved session shows where it left off
        if message["role"] == "user":
            print(f">>> {message['content']}")
        elif message["role"] == "assistant":
            print(message["content"] + "\n")
    return chat_loop(client, session)
