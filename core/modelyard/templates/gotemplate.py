"""Go text/template, the subset that Ollama model templates (a Modelfile's TEMPLATE) use.

Ollama renders a model's TEMPLATE with Go's text/template; this module renders the same templates so that a
Modelfile written for Ollama builds the same prompt here. It follows Go's text/template/parse and exec: a
tokenizer, a recursive-descent parser to a small tree, and an evaluator. Error messages copy Go's.

Data is a dict keyed by Go field names ({"System": ..., "Messages": [{"Role": ..., "Content": ...}]}); a field
also resolves to an attribute (or a method, which is called) of any other object. None stands for Go's nil.
An object whose type has `__go_json__()` stands for a Go type whose String method marshals JSON (Ollama's
api.Tools): it prints, and `json` encodes it, as the JSON of what that method returns.

Where this differs from Go on purpose:
- A missing field or map key gives None, and None prints as an empty string, not Go's "<no value>". Ollama
  passes a Go struct whose fields always exist (unset is "", false or a nil slice), so a field the caller
  left out must render as unset.
- len of None is 0: None mostly stands for a nil slice (.Tools, .ToolCalls), whose length Go reports as 0.
- json keeps a dict's insertion order. Go sorts map keys but keeps struct field order, and a dict may stand
  for either.

Not supported: define, template and block, complex numbers, the html, js, urlquery and call functions, and
Ollama's toTypeScriptType.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec


class GoTemplateError(ValueError):
    """A template that does not parse or does not execute; the message reads like Go's."""


# Go's isSpace: what trim markers remove, and what separates words inside an action.
_SPACES = " \t\r\n"
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})
_WORD = re.compile(r"\w*")
# Go's scanNumber, as loose as it is: converting the literal rejects what this lets through.
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][\da-fA-F_]*(?:\.[\da-fA-F_]*)?(?:[pP][+-]?[\d_]*)?|0[oO][0-7_]*|0[bB][01_]*"
    r"|[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?[\d_]*)?)i?",
    re.ASCII,  # Go's digits are ASCII; its words (_WORD) are not
)
_ESCAPE = re.compile(r"\\(x[\da-fA-F]{2}|[0-7]{3}|u[\da-fA-F]{4}|U[\da-fA-F]{8}|.)", re.DOTALL | re.ASCII)
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_QUOTE_ESCAPES = {value: "\\" + key for key, value in _SIMPLE_ESCAPES.items()} | {'"': '\\"'}
# Go's json.Marshal escapes these so that its output is safe inside HTML.
_JSON_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_PRINTF_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?(.?)", re.DOTALL)
_MISSING = object()  # no value piped in: Go's missingVal
_OPERAND_STARTS = frozenset(
    {"bool", "charconst", "dot", "field", "ident", "number", "nil", "raw", "string", "variable", "lparen"}
)


def _match_end(pattern: re.Pattern[str], source: str, pos: int) -> int:
    """Where `pattern` stops matching at pos; the lexer's patterns may match nothing, so they always match."""
    match = pattern.match(source, pos)
    assert match is not None
    return match.end()


def _line(source: str, pos: int) -> int:
    return source.count("\n", 0, pos) + 1


# Tokens and the lexer


@dataclass(frozen=True, slots=True)
class _Token:
    # kind: text, left and right (the delimiters), space, ident, keyword, field, variable, dot, nil, bool, number,
    # charconst, string, raw, pipe, lparen, rparen, declare (:=), assign (=), char (other ASCII), error, eof
    kind: str
    text: str  # the source text, or the message of an "error" token
    pos: int

    @property
    def end(self) -> int:
        return self.pos + len(self.text)


class _LexError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message, self.pos = message, pos


class _Lexer:
    """Splits a template into tokens. A lexical error ends the list as an "error" token, so that the
    parser reports whichever error comes first in the text, as Go's does."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        try:
            self.lex_text()
        except _LexError as error:
            self.tokens.append(_Token("error", error.message, error.pos))
        return self.tokens

    def emit(self, kind: str, text: str, pos: int) -> int:
        self.tokens.append(_Token(kind, text, pos))
        return pos + len(text)

    def lex_text(self) -> None:
        source, pos, trim_leading = self.source, 0, False
        while True:
            start = source.find("{{", pos)
            text = source[pos : len(source) if start < 0 else start]
            if trim_leading:
                stripped = text.lstrip(_SPACES)
                pos, text = pos + len(text) - len(stripped), stripped
            # "{{- " trims the text before it; "{{-3}}" is a number.
            trim_trailing = start >= 0 and bool(re.match(r"-[ \t\r\n]", source[start + 2 : start + 4]))
            if trim_trailing:
                text = text.rstrip(_SPACES)
            if text:
                self.emit("text", text, pos)
            if start < 0:
                self.emit("eof", "", len(source))
                return
            pos = start + (4 if trim_trailing else 2)
            if source.startswith("/*", pos):
                close = source.find("*/", pos + 2)
                if close < 0:
                    raise _LexError("unclosed comment", pos)
                delimiter = self.right_delimiter(close + 2)
                if delimiter is None:
                    raise _LexError("comment ends before closing delimiter", close + 2)
                pos, trim_leading = delimiter
            else:
                self.emit("left", "{{", start)
                pos, trim_leading = self.lex_action(pos)

    def right_delimiter(self, pos: int) -> tuple[int, bool] | None:
        """Where "}}" or " -}}" at pos ends and whether it trims the following text; None if neither is there."""
        if self.source.startswith("}}", pos):
            return pos + 2, False
        if re.match(r"[ \t\r\n]-}}", self.source[pos : pos + 4]):
            return pos + 4, True
        return None

    def at_terminator(self, pos: int) -> bool:
        """Whether a word may end at pos: Go splits .A.B there and rejects "$x+2"."""
        source = self.source
        return pos >= len(source) or source[pos] in _SPACES + ".,|:()" or source.startswith("}}", pos)

    def lex_action(self, pos: int) -> tuple[int, bool]:
        source, depth = self.source, 0
        while (delimiter := self.right_delimiter(pos)) is None:
            if pos >= len(source):
                raise _LexError("unclosed action", pos)
            char = source[pos]
            if char in _SPACES:
                end = pos
                while end < len(source) and source[end] in _SPACES:
                    end += 1
                if source.startswith("-}}", end):
                    end -= 1  # this space belongs to the " -}}" trim marker
                pos = self.emit("space", source[pos:end], pos) if end > pos else end
            elif source.startswith(":=", pos):
                pos = self.emit("declare", ":=", pos)
            elif char == ":":
                raise _LexError("expected :=", pos)
            elif char in "=|()":
                depth += {"(": 1, ")": -1}.get(char, 0)
                if depth < 0:
                    raise _LexError("unexpected right paren U+0029 ')'", pos)
                pos = self.emit({"=": "assign", "|": "pipe", "(": "lparen", ")": "rparen"}[char], char, pos)
            elif char in "\"'":
                pos = self.emit("string" if char == '"' else "charconst", self.quoted(pos), pos)
            elif char == "`":
                end = source.find("`", pos + 1)
                if end < 0:
                    raise _LexError("unterminated raw quoted string", pos)
                pos = self.emit("raw", source[pos : end + 1], pos)
            elif char == "$" or (char == "." and not "0" <= source[pos + 1 : pos + 2] <= "9"):
                pos = self.lex_word(pos + 1, start=pos)
            elif char in "+-." or "0" <= char <= "9":
                end = _match_end(_NUMBER, source, pos)
                if _match_end(_WORD, source, end) > end:
                    raise _LexError(f"bad number syntax: {_go_quote(source[pos : end + 1])}", pos)
                pos = self.emit("number", source[pos:end], pos)
            elif _match_end(_WORD, source, pos) > pos:
                pos = self.lex_word(pos, start=pos)
            elif " " < char <= "~":
                pos = self.emit("char", char, pos)
            else:
                raise _LexError(f"unrecognized character in action: {_describe_char(char)}", pos)
        if depth:
            raise _LexError("unclosed left paren", pos)
        self.emit("right", "}}", delimiter[0] - 2)
        return delimiter

    def quoted(self, pos: int) -> str:
        source, quote, end = self.source, self.source[pos], pos + 1
        while end < len(source) and source[end] not in (quote, "\n"):
            end += 2 if source[end] == "\\" and source[end + 1 : end + 2] not in ("", "\n") else 1
        if end >= len(source) or source[end] != quote:
            what = "quoted string" if quote == '"' else "character constant"
            raise _LexError(f"unterminated {what}", pos)
        return source[pos : end + 1]

    def lex_word(self, pos: int, start: int) -> int:
        """An identifier, keyword, .Field or $variable; pos is past the leading "." or "$"."""
        end = _match_end(_WORD, self.source, pos)
        if not self.at_terminator(end):
            raise _LexError(f"bad character {_describe_char(self.source[end])}", end)
        word = self.source[start:end]
        if word[0] in ".$":
            kind = "dot" if word == "." else "field" if word[0] == "." else "variable"
        elif word in _KEYWORDS:
            kind = "keyword"
        else:
            kind = "bool" if word in ("true", "false") else "nil" if word == "nil" else "ident"
        return self.emit(kind, word, start)


def _describe_char(char: str) -> str:
    """Go's %#U."""
    return f"U+{ord(char):04X}" + (f" '{char}'" if char.isprintable() else "")


def _describe(token: _Token) -> str:
    """A token in a parse error, as Go's item.String."""
    if token.kind in ("eof", "error"):
        return token.text or "EOF"
    if token.kind in ("keyword", "dot", "nil"):
        return f"<{token.text}>"
    return _go_quote(token.text[:10]) + ("..." if len(token.text) > 10 else "")


# The tree: operands carry their source position and text for error messages.


@dataclass(frozen=True, slots=True)
class _Literal:
    pos: int
    text: str
    value: str | int | float | bool | None  # None for nil


@dataclass(frozen=True, slots=True)
class _Dot:
    pos: int
    text: str = "."


@dataclass(frozen=True, slots=True)
class _Field:
    """.A.B: fields of dot."""

    pos: int
    text: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Variable:
    """$x, or $x.A.B."""

    pos: int
    text: str
    name: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Function:
    pos: int
    text: str  # the function's name


@dataclass(frozen=True, slots=True)
class _Chain:
    """(pipeline).A.B: fields of another operand's value."""

    pos: int
    text: str
    operand: Any
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Command:
    pos: int
    text: str
    args: tuple[Any, ...]


@dataclass(slots=True)
class _Pipeline:
    pos: int
    text: str = ""
    decls: list[str] = field(default_factory=list)  # variables declared (:=) or assigned (=)
    is_assign: bool = False
    commands: list[_Command] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Action:
    pipeline: _Pipeline


@dataclass(frozen=True, slots=True)
class _Control:
    keyword: str  # "if", "with" or "range"
    pipeline: _Pipeline
    body: list[Any]
    else_body: list[Any] | None


@dataclass(frozen=True, slots=True)
class _LoopJump:
    keyword: str  # "break" or "continue"


@dataclass(frozen=True, slots=True)
class _Closer:
    """{{end}} or {{else}}: ends a list of nodes and never reaches the tree."""

    keyword: str

    def __str__(self) -> str:
        return "{{" + self.keyword + "}}"


class _Parser:
    """Recursive descent over the tokens, a port of Go's parse.Tree (spaces are tokens, as in Go)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _Lexer(source).run()
        self.index = self.furthest = 0
        self.variables = ["$"]  # in scope now: Go rejects an undefined variable when parsing
        self.range_depth = 0

    def error(self, message: str, pos: int | None = None) -> GoTemplateError:
        pos = self.tokens[self.furthest].pos if pos is None else pos
        return GoTemplateError(f"template: :{_line(self.source, pos)}: {message}")

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == "error":
            raise self.error(token.text, token.pos)
        self.furthest = max(self.furthest, self.index)
        self.index += 1
        return token

    def next_non_space(self) -> _Token:
        while (token := self.next()).kind == "space":
            pass
        return token

    def peek(self) -> _Token:
        token = self.next()
        self.index -= 1
        return token

    def peek_non_space(self) -> _Token:
        token = self.next_non_space()
        self.index -= 1
        return token

    def unexpected(self, token: _Token, context: str) -> GoTemplateError:
        return self.error(f"unexpected {_describe(token)} in {context}")

    def parse(self) -> list[Any]:
        nodes = []
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Closer):
                raise self.error(f"unexpected {node}")
            nodes.append(node)
        return nodes

    def item_list(self) -> tuple[list[Any], _Closer]:
        nodes: list[Any] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Closer):
                return nodes, node
            nodes.append(node)
        raise self.error("unexpected EOF")

    def text_or_action(self) -> Any:
        token = self.next_non_space()
        if token.kind == "text":
            return _Text(token.text)
        if token.kind == "left":
            return self.action()
        raise self.unexpected(token, "input")

    def action(self) -> Any:
        token = self.next_non_space()
        if token.kind != "keyword":
            self.index -= 1
            return _Action(self.pipeline("command", "right"))
        keyword = token.text
        if keyword in ("if", "with", "range"):
            return self.control(keyword)
        if keyword == "else":
            # "{{else if" and "{{else with" leave the keyword for control() to read.
            if (following := self.peek_non_space()).kind != "keyword" or following.text not in ("if", "with"):
                self.expect_right(keyword)
            return _Closer(keyword)
        if keyword == "end":
            self.expect_right(keyword)
            return _Closer(keyword)
        if keyword in ("break", "continue"):
            self.expect_right("{{" + keyword + "}}")
            if not self.range_depth:
                raise self.error("{{" + keyword + "}} outside {{range}}")
            return _LoopJump(keyword)
        raise self.error("{{" + keyword + "}} is not supported")  # define, template, block

    def expect_right(self, context: str) -> None:
        if (token := self.next_non_space()).kind != "right":
            raise self.unexpected(token, context)

    def control(self, keyword: str) -> _Control:
        scope = len(self.variables)
        pipeline = self.pipeline(keyword, "right")
        self.range_depth += keyword == "range"
        body, closer = self.item_list()
        self.range_depth -= keyword == "range"
        else_body = None
        if closer.keyword == "else":
            # {{if a}}x{{else if b}}y{{end}} is {{if a}}x{{else}}{{if b}}y{{end}}{{end}} with one {{end}}.
            following = self.peek()
            if keyword in ("if", "with") and following.kind == "keyword" and following.text == keyword:
                self.next()
                else_body = [self.control(keyword)]
            else:
                else_body, closer = self.item_list()
                if closer.keyword != "end":
                    raise self.error(f"expected end; found {closer}")
        del self.variables[scope:]
        return _Control(keyword, pipeline, body, else_body)

    def pipeline(self, context: str, end: str) -> _Pipeline:
        pipeline = _Pipeline(self.peek_non_space().pos)
        self.declarations(pipeline, context)
        while (token := self.next_non_space()).kind != end:
            if token.kind not in _OPERAND_STARTS:
                raise self.unexpected(token, context)
            self.index -= 1
            pipeline.commands.append(self.command())
        if not pipeline.commands:
            raise self.error(f"missing value for {context}")
        for stage, command in enumerate(pipeline.commands[1:], start=2):
            if isinstance(command.args[0], (_Literal, _Dot)):
                raise self.error(f"non executable command in pipeline stage {stage}")
        # Go's PipeNode.String, for error messages.
        declared = ", ".join(pipeline.decls) + (" = " if pipeline.is_assign else " := ") if pipeline.decls else ""
        pipeline.text = declared + " | ".join(command.text for command in pipeline.commands)
        return pipeline

    def declarations(self, pipeline: _Pipeline, context: str) -> None:
        """$x := ..., $x = ..., and range's $i, $v := ...; in "$x foo" the variable is an operand."""
        while self.peek_non_space().kind == "variable":
            start = self.index
            variable = self.next_non_space()
            following = self.peek_non_space()
            if following.kind not in ("declare", "assign") and following.text != ",":
                self.index = start
                return
            self.next_non_space()
            pipeline.decls.append(variable.text)
            self.variables.append(variable.text)
            if following.kind != "char":
                pipeline.is_assign = following.kind == "assign"
                return
            if context != "range" or len(pipeline.decls) > 1:
                raise self.error(f"too many declarations in {context}")
            if self.peek_non_space().kind not in ("variable", "right", "rparen"):
                raise self.error("range can only initialize variables")

    def command(self) -> _Command:
        args = []
        while True:
            self.peek_non_space()
            if (operand := self.operand()) is not None:
                args.append(operand)
            token = self.next()
            if token.kind == "space":
                continue
            if token.kind in ("right", "rparen"):
                self.index -= 1
            elif token.kind != "pipe":
                raise self.unexpected(token, "operand")
            break
        if not args:
            raise self.error("empty command")
        return _Command(args[0].pos, " ".join(arg.text for arg in args), tuple(args))

    def operand(self) -> Any:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        names = []
        while self.peek().kind == "field":
            names.append(self.next().text[1:])
        text = self.source[node.pos : self.tokens[self.index - 1].end]
        if isinstance(node, (_Literal, _Dot)):
            raise self.error(f"unexpected . after term {_go_quote(node.text)}")
        if isinstance(node, _Field):
            return _Field(node.pos, text, node.names + tuple(names))
        if isinstance(node, _Variable):
            return _Variable(node.pos, text, node.name, tuple(names))
        return _Chain(node.pos, text, node, tuple(names))

    def term(self) -> Any:
        token = self.next_non_space()
        kind, text, pos = token.kind, token.text, token.pos
        if kind == "ident":
            if text not in _FUNCTIONS:
                raise self.error(f"function {_go_quote(text)} not defined")
            return _Function(pos, text)
        if kind == "variable":
            if text not in self.variables:
                raise self.error(f"undefined variable {_go_quote(text)}")
            return _Variable(pos, text, text)
        if kind == "lparen":
            pipeline = self.pipeline("parenthesized pipeline", "rparen")
            pipeline.pos, pipeline.text = pos, f"({pipeline.text})"
            return pipeline
        match kind:
            case "dot":
                return _Dot(pos)
            case "nil":
                return _Literal(pos, text, None)
            case "field":
                return _Field(pos, text, (text[1:],))
            case "bool":
                return _Literal(pos, text, text == "true")
            case "string" | "raw" | "number" | "charconst":
                return _Literal(pos, text, self.constant(token))
        self.index -= 1
        return None

    def constant(self, token: _Token) -> str | int | float:
        try:
            value = _parse_number(token.text) if token.kind == "number" else _unquote(token.text)
        except ValueError as error:
            message = f"illegal number syntax: {_go_quote(token.text)}" if token.kind == "number" else str(error)
            raise self.error(message) from None
        if token.kind != "charconst":
            return value
        assert isinstance(value, str)  # a character constant unquotes to text
        if len(value) != 1:
            raise self.error(f"malformed character constant: {token.text}")
        return ord(value)


def _unquote(literal: str) -> str:
    """The value of a Go string or character literal; ValueError("invalid syntax") as strconv.Unquote."""
    quote, body = literal[0], literal[1:-1]
    if quote == "`":
        return body.replace("\r", "")
    decoded, position = bytearray(), 0
    for match in _ESCAPE.finditer(body):
        decoded += body[position : match.start()].encode()
        escape, position = match.group(1), match.end()
        if len(escape) == 1:
            if escape not in _SIMPLE_ESCAPES and escape != quote:
                raise ValueError("invalid syntax")
            decoded += _SIMPLE_ESCAPES.get(escape, escape).encode()
        elif escape[0] in "uU":
            decoded += chr(int(escape[1:], 16)).encode()
        else:  # \x41 or \101: a raw byte, as in Go
            byte = int(escape[1:], 16) if escape[0] == "x" else int(escape, 8)
            if byte > 255:
                raise ValueError("invalid syntax")
            decoded.append(byte)
    decoded += body[position:].encode()
    return decoded.decode("utf-8", errors="replace")


def _parse_number(text: str) -> int | float:
    """A Go number literal; a fraction or exponent makes it a float, as Go treats untyped constants."""
    digits = text.lstrip("+-").lower()
    if digits.endswith("i"):
        raise ValueError("complex numbers are not supported")
    if digits.startswith("0x"):
        return float.fromhex(text) if "." in digits or "p" in digits else int(text, 0)
    if "." in digits or "e" in digits:
        return float(text)
    if re.fullmatch(r"0[0-7_]+", digits):
        return int(text, 8)  # Go still reads 017 as octal
    return int(text, 0)


# Execution


class _JumpSignal(Exception):
    def __init__(self, keyword: str) -> None:
        super().__init__(keyword)
        self.keyword = keyword


class _CallError(Exception):
    """A builtin function's failure; the executor adds where it happened."""


@dataclass(slots=True)
class _Binding:
    name: str
    value: Any


class _Executor:
    """Walks the tree for one render, as Go's exec.state: a stack of variables and the output so far."""

    def __init__(self, source: str, data: Any) -> None:
        self.source = source
        self.bindings = [_Binding("$", data)]
        self.output: list[str] = []

    def error(self, node: Any, message: str) -> GoTemplateError:
        line_start = self.source.rfind("\n", 0, node.pos) + 1
        column = len(self.source[line_start : node.pos].encode())
        context = node.text if len(node.text) <= 20 else node.text[:20] + "..."
        return GoTemplateError(
            f'template: :{_line(self.source, node.pos)}:{column}: executing "" at <{context}>: {message}'
        )

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            match node:
                case _Text():
                    self.output.append(node.text)
                case _Action():
                    value = self.pipeline(node.pipeline, dot)
                    if not node.pipeline.decls:
                        self.output.append("" if value is None else _format_value(value))
                case _Control():
                    self.control(node, dot)
                case _LoopJump():
                    raise _JumpSignal(node.keyword)

    def control(self, node: _Control, dot: Any) -> None:
        scope = len(self.bindings)
        try:
            value = self.pipeline(node.pipeline, dot)
            if node.keyword == "range":
                self.walk_range(node, dot, value)
            elif _truth(value):
                self.walk(node.body, value if node.keyword == "with" else dot)
            elif node.else_body is not None:
                self.walk(node.else_body, dot)
        finally:
            del self.bindings[scope:]

    def walk_range(self, node: _Control, dot: Any, value: Any) -> None:
        decls, scope, iterated = node.pipeline.decls, len(self.bindings), False
        for index, element in self.iterate(node.pipeline, value):
            iterated = True
            if node.pipeline.is_assign:
                for name, item in zip(decls, (index, element) if len(decls) > 1 else (element,), strict=False):
                    self.binding(node.pipeline, name).value = item
            elif decls:
                # The pipeline pushed the declared variables: the element on top, the index under it.
                self.bindings[-1].value = element
                if len(decls) > 1:
                    self.bindings[-2].value = index
            try:
                self.walk(node.body, element)
            except _JumpSignal as jump:
                if jump.keyword == "break":
                    break
            finally:
                del self.bindings[scope:]
        if not iterated and node.else_body is not None:
            self.walk(node.else_body, dot)

    def iterate(self, pipeline: _Pipeline, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, (list, tuple)):
            return enumerate(value)
        if isinstance(value, dict):
            return ((key, value[key]) for key in _sorted_keys(value))
        if isinstance(value, int) and not isinstance(value, bool):
            if len(pipeline.decls) > 1:
                raise self.error(pipeline, f"can't use {value} to iterate over more than one variable")
            return ((number, number) for number in range(value))
        raise self.error(pipeline, f"range can't iterate over {_format_value(value)}")

    def pipeline(self, pipeline: _Pipeline, dot: Any) -> Any:
        value = _MISSING
        for command in pipeline.commands:
            value = self.command(command, dot, value)
        for name in pipeline.decls:
            if pipeline.is_assign:
                self.binding(pipeline, name).value = value
            else:
                self.bindings.append(_Binding(name, value))
        return value

    def command(self, command: _Command, dot: Any, final: Any) -> Any:
        """One command; final is the previous command's value, which Go passes as the last argument."""
        first, args = command.args[0], command.args[1:]
        match first:
            case _Field():
                return self.fields(dot, first, dot, args, final)
            case _Chain():
                return self.fields(self.argument(first.operand, dot), first, dot, args, final)
            case _Variable() if first.names:
                return self.fields(self.lookup(first), first, dot, args, final)
            case _Function():
                return self.call(first, command, dot, args, final)
        if args or final is not _MISSING:
            raise self.error(first, f"can't give argument to non-function {first.text}")
        if isinstance(first, _Literal) and first.value is None:
            raise self.error(first, "nil is not a command")
        return self.argument(first, dot)

    def argument(self, node: Any, dot: Any) -> Any:
        match node:
            case _Literal():
                return node.value
            case _Dot():
                return dot
            case _Field():
                return self.fields(dot, node, dot, (), _MISSING)
            case _Variable():
                return self.fields(self.lookup(node), node, dot, (), _MISSING)
            case _Chain():
                return self.fields(self.argument(node.operand, dot), node, dot, (), _MISSING)
            case _Pipeline():
                return self.pipeline(node, dot)
        return self.call(node, node, dot, (), _MISSING)  # a _Function

    def fields(self, receiver: Any, node: Any, dot: Any, args: tuple[Any, ...], final: Any) -> Any:
        """node.names looked up in turn from receiver; only the last one may be a method with arguments."""
        for position, name in enumerate(node.names):
            last = position == len(node.names) - 1
            receiver = self.field(receiver, name, node, dot, args if last else (), final if last else _MISSING)
        return receiver

    def field(self, receiver: Any, name: str, node: Any, dot: Any, args: tuple[Any, ...], final: Any) -> Any:
        has_args = bool(args) or final is not _MISSING
        if receiver is None:
            return None  # Go gives the zero value for a field of nil
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(node, f"{name} is not a method but has arguments")
            return receiver.get(name)
        if isinstance(receiver, (str, int, float, list, tuple)) or name.startswith("_"):
            raise self.error(node, f"can't evaluate field {name} in type {_go_type(receiver)}")
        attribute = getattr(receiver, name, None)
        if not callable(attribute):
            if has_args:
                raise self.error(node, f"{name} has arguments but cannot be invoked as function")
            return attribute
        values = [self.argument(arg, dot) for arg in args] + ([] if final is _MISSING else [final])
        try:
            return attribute(*values)
        except Exception as exc:  # Go's exec reports a failing method as the template's error
            raise self.error(node, f"error calling {name}: {exc}") from exc

    def binding(self, node: Any, name: str) -> _Binding:
        """The innermost variable called name: an inner declaration hides an outer one."""
        for binding in reversed(self.bindings):
            if binding.name == name:
                return binding
        raise self.error(node, f"undefined variable: {name}")

    def lookup(self, node: _Variable) -> Any:
        return self.binding(node, node.name).value

    def call(self, function: _Function, command: Any, dot: Any, args: tuple[Any, ...], final: Any) -> Any:
        name = function.text
        implementation, least, most = _FUNCTIONS[name]
        count = len(args) + (final is not _MISSING)
        if count < least or (most is not None and count > most):
            want = str(least) if least == most else f"at least {least}"
            raise self.error(function, f"wrong number of args for {name}: want {want} got {count}")
        if implementation is None:
            # and, or: stop at the first argument that decides, as Go does since 1.18.
            value = None
            for arg in args:
                if _truth(value := self.argument(arg, dot)) == (name == "or"):
                    return value
            return value if final is _MISSING else final
        values = [self.argument(arg, dot) for arg in args] + ([] if final is _MISSING else [final])
        try:
            return implementation(*values)
        except _CallError as error:
            raise self.error(command, f"error calling {name}: {error}") from None


# Values: Go's truth, printing and JSON


def _truth(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, list, tuple, dict)) or value is None:
        return bool(value)
    return True  # structs and non-nil pointers are true in Go


def _go_type(value: Any) -> str:
    """The Go type name that a Python value stands for, in error messages."""
    go_types = (
        (bool, "bool"), (int, "int"), (float, "float64"), (str, "string"),
        ((list, tuple), "[]interface {}"), (dict, "map[string]interface {}"),
    )  # fmt: skip
    for python_type, go_type in go_types:
        if isinstance(value, python_type):
            return go_type
    return "<nil>" if value is None else type(value).__name__


def _sorted_keys(mapping: dict[Any, Any]) -> list[Any]:
    try:
        return sorted(mapping)  # Go sorts maps when printing and ranging
    except TypeError:
        return list(mapping)


def _format_value(value: Any) -> str:
    """Go's %v."""
    if value is None:
        return "<nil>"
    if hasattr(type(value), "__go_json__"):
        return _to_json(value)  # a type whose String method marshals JSON (Ollama's api.Tools, api.Tool)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(map(_format_value, value)) + "]"
    if isinstance(value, dict):
        pairs = (f"{_format_value(key)}:{_format_value(value[key])}" for key in _sorted_keys(value))
        return "map[" + " ".join(pairs) + "]"
    return str(value)


def _format_float(value: float, *, for_json: bool = False) -> str:
    """Go's shortest float: %v switches to an exponent from 1e+06 up, json.Marshal from 1e+21 up."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # the value is 0.<digits> times 10**point
    negative = "-" if sign else ""
    if value and (point - 1 < (-6 if for_json else -4) or point - 1 >= (21 if for_json else 6)):
        power = f"{point - 1:+03d}"
        if for_json and -10 < point - 1 < 0:
            power = f"-{1 - point}"  # json writes 1e-7 where fmt writes 1e-07
        return f"{negative}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{power}"
    if point <= 0:
        return f"{negative}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return negative + digits + "0" * (point - len(digits))
    return f"{negative}{digits[:point]}.{digits[point:]}"


def _go_quote(text: str) -> str:
    """Go's strconv.Quote."""
    parts = []
    for char in text:
        code = ord(char)
        if char in _QUOTE_ESCAPES:
            parts.append(_QUOTE_ESCAPES[char])
        elif char.isprintable():
            parts.append(char)
        elif code < 0x80:
            parts.append(f"\\x{code:02x}")
        elif code < 0x10000:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return '"' + "".join(parts) + '"'


def _to_json(value: Any) -> str:
    """Go's json.Marshal: compact, HTML-safe; ValueError where Go's fails (NaN, infinities, unknown types)."""
    if value is None:
        return "null"
    if hasattr(type(value), "__go_json__"):
        return _to_json(value.__go_json__())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"json: unsupported value: {value}")
        return _format_float(value, for_json=True)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).translate(_JSON_HTML_ESCAPES)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_to_json(str(key))}:{_to_json(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_to_json, value)) + "]"
    try:
        return _to_json(msgspec.to_builtins(value))  # Structs and dataclasses
    except TypeError as exc:
        raise ValueError(f"json: unsupported type: {type(value).__name__}") from exc


def _json(value: Any) -> str:
    try:
        return _to_json(value)
    except ValueError:
        return ""  # Ollama's json ignores json.Marshal's error and prints nothing


# Builtin functions


def _length(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())  # Go counts bytes
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise _CallError(f"len of type {_go_type(value)}")


def _index_argument(key: Any, size: int) -> int:
    if key is None:
        raise _CallError("cannot index slice/array with nil")
    if not isinstance(key, int) or isinstance(key, bool):
        raise _CallError(f"cannot index slice/array with type {_go_type(key)}")
    if not 0 <= key <= size:
        raise _CallError(f"index out of range: {key}")
    return key


def _index(item: Any, *keys: Any) -> Any:
    if item is None:
        raise _CallError("index of untyped nil")
    for key in keys:
        if isinstance(item, (list, tuple, str)):
            sequence = item.encode() if isinstance(item, str) else item  # a string indexes to a byte
            if _index_argument(key, len(sequence)) == len(sequence):
                raise _CallError(f"index out of range: {key}")
            item = sequence[key]
        elif isinstance(item, dict):
            try:
                item = item.get(key)  # a missing key gives nil, like Go's zero value
            except TypeError:
                raise _CallError(f"value has type {_go_type(key)}; should be string") from None
        elif item is None:
            raise _CallError("index of nil pointer")
        else:
            raise _CallError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    sequence: bytes | list[Any] | tuple[Any, ...]
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _CallError("cannot 3-index slice a string")
        sequence = item.encode()
    elif isinstance(item, (list, tuple)):
        sequence = item
    else:
        raise _CallError(f"can't slice item of type {_go_type(item)}")
    bounds = [0, len(sequence), len(sequence)]
    for position, index in enumerate(indexes):
        bounds[position] = _index_argument(index, len(sequence))
    for low, high in ((bounds[0], bounds[1]), (bounds[1], bounds[2])):
        if low > high:
            raise _CallError(f"invalid slice index: {low} > {high}")
    result = sequence[bounds[0] : bounds[1]]
    return result.decode("utf-8", errors="replace") if isinstance(result, bytes) else result


def _basic_kind(value: Any) -> str | None:
    """The kind that Go's comparisons work on, or None for nil, lists, maps and objects."""
    kind = _go_type(value)
    return kind if kind in ("bool", "int", "float64", "string") else None


def _eq(first: Any, *others: Any) -> bool:
    """eq a b c is a == b or a == c; like Go, values of different basic kinds do not compare."""
    if not others:
        raise _CallError("missing argument for comparison")
    for other in others:
        if first is None or other is None:
            equal = first is other  # nil equals only nil
        elif _basic_kind(first) != _basic_kind(other):
            raise _CallError("incompatible types for comparison")
        elif isinstance(first, (list, tuple, dict)) or isinstance(other, (list, tuple, dict)):
            raise _CallError(f"non-comparable type {_go_type(first)}")
        else:
            equal = first == other
        if equal:
            return True
    return False


def _lt(first: Any, second: Any) -> bool:
    first_kind, second_kind = _basic_kind(first), _basic_kind(second)
    if first_kind is None or second_kind is None:
        raise _CallError("invalid type for comparison")
    if first_kind != second_kind:
        raise _CallError("incompatible types for comparison")
    if first_kind == "bool":
        raise _CallError("invalid type for comparison")
    return first < second


def _sprint(*values: Any) -> str:
    """Go's fmt.Sprint: a space between operands when neither is a string."""
    parts = []
    for position, value in enumerate(values):
        if position and not isinstance(value, str) and not isinstance(values[position - 1], str):
            parts.append(" ")
        parts.append(_format_value(value))
    return "".join(parts)


def _sprintf(format_: Any, *values: Any) -> str:
    """Go's fmt.Sprintf for the verbs templates use: %v %s %q %d %t %x %X %o %c %e %f %g."""
    if not isinstance(format_, str):
        raise _CallError(f"wrong type for value; expected string; got {_go_type(format_)}")
    used = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal used
        flags, width, precision, verb = match.groups()
        if verb == "%":
            return "%"
        if not verb:
            return "%!(NOVERB)"
        if used == len(values):
            return f"%!{verb}(MISSING)"
        used += 1
        return _format_verb(verb, flags, width, precision, values[used - 1])

    text = _PRINTF_VERB.sub(substitute, format_)
    if used < len(values):
        extra = ("<nil>" if value is None else f"{_go_type(value)}={_format_value(value)}" for value in values[used:])
        text += f"%!(EXTRA {', '.join(extra)})"
    return text


def _format_verb(verb: str, flags: str, width: str, precision: str | None, value: Any) -> str:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_float = isinstance(value, float)
    if is_int and verb in "dxXo" or is_float and (verb in "eEfF" or verb in "gG" and precision is not None):
        return f"%{flags}{width}{'' if precision is None else '.' + (precision or '0')}{verb}" % value
    if verb == "v" or verb == "s" and not (value is None or isinstance(value, (bool, int, float))):
        text = _format_value(value)[: None if precision is None else int(precision or 0)]
    elif verb in "gG" and is_float:
        text = _format_float(value).upper() if verb == "G" else _format_float(value)
    elif verb in "xX" and isinstance(value, str):
        text = value.encode().hex().upper() if verb == "X" else value.encode().hex()
    elif verb == "q" and isinstance(value, str):
        text = _go_quote(value)
    elif verb == "t" and isinstance(value, bool) or verb == "c" and is_int:
        text = _format_value(value) if verb == "t" else chr(value)
    else:
        return f"%!{verb}(<nil>)" if value is None else f"%!{verb}({_go_type(value)}={_format_value(value)})"
    if "-" in flags:
        return text.ljust(int(width or 0))
    return text.rjust(int(width or 0), "0" if "0" in flags else " ")


# name: (implementation, fewest arguments, most arguments or None). and/or have no implementation: the
# executor evaluates their arguments lazily. Ollama's date functions ignore their format argument.
_FUNCTIONS: dict[str, tuple[Any, int, int | None]] = {
    "and": (None, 1, None),
    "or": (None, 1, None),
    "not": (lambda value: not _truth(value), 1, 1),
    "eq": (_eq, 1, None),
    "ne": (lambda first, second: not _eq(first, second), 2, 2),
    "lt": (_lt, 2, 2),
    "le": (lambda first, second: _lt(first, second) or _eq(first, second), 2, 2),
    "gt": (lambda first, second: not (_lt(first, second) or _eq(first, second)), 2, 2),
    "ge": (lambda first, second: not _lt(first, second), 2, 2),
    "len": (_length, 1, 1),
    "index": (_index, 1, None),
    "slice": (_slice, 1, None),
    "print": (_sprint, 0, None),
    "printf": (_sprintf, 1, None),
    "println": (lambda *values: " ".join(map(_format_value, values)) + "\n", 0, None),
    "json": (_json, 1, 1),
    "currentDate": (lambda *_format: dt.date.today().isoformat(), 0, None),
    "yesterdayDate": (lambda *_format: (dt.date.today() - dt.timedelta(days=1)).isoformat(), 0, None),
}


class GoTemplate:
    """A parsed Go template; render it any number of times."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = _Parser(source).parse()

    def render(self, data: dict[str, Any]) -> str:
        """The template executed with data as both dot and $."""
        executor = _Executor(self.source, data)
        executor.walk(self.nodes, data)
        return "".join(executor.output)

    def cut_after_field(self, name: str) -> GoTemplate:
        """A copy that ends with the first action that reads `.<name>`: what follows it, in tree order, is gone.

        Ollama renders the last turn of a template without `.Messages` this way, cut after
        `{{ .Response }}`, so that a conversation ending with an assistant message is left open.
        Conditions of if/with/range are not searched, as Ollama's deleteNode does not search them.
        """
        cut = False

        def reads(pipeline: _Pipeline) -> bool:
            return any(
                isinstance(arg, _Field) and name in arg.names for command in pipeline.commands for arg in command.args
            )

        def walk(nodes: list[Any]) -> list[Any]:
            nonlocal cut
            kept = []
            for node in nodes:
                if cut:
                    break
                if isinstance(node, _Action) and reads(node.pipeline):
                    cut = True
                elif isinstance(node, _Control):
                    body = walk(node.body)
                    else_body = None if node.else_body is None else walk(node.else_body)
                    node = _Control(node.keyword, node.pipeline, body, else_body)
                kept.append(node)
            return kept

        copy = GoTemplate.__new__(GoTemplate)
        copy.source = self.source
        copy.nodes = walk(self.nodes)
        return copy
