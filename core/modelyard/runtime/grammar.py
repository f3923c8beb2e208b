"""A small grammar for outputs that are not JSON (FunctionGemma's calls), written out in the two grammar
languages the engines read: GBNF for llama.cpp and Lark for llguidance (ONNX Runtime GenAI).

JSON Schemas need none of this: each engine has its own JSON Schema converter. A grammar here is a mapping
from rule names (lowercase letters, digits and `-`, valid in both languages) to expressions built from the
few nodes below; `payload` is the rule the engines place between a constraint's prefix and suffix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """These characters, as they are."""

    value: str


@dataclass(frozen=True)
class Chars:
    """`least` to `most` (None: no limit) characters of one class, given as a regex class body (`0-9`)."""

    kind: str
    least: int = 0
    most: int | None = None


@dataclass(frozen=True)
class Rule:
    name: str


@dataclass(frozen=True)
class Sequence:
    items: tuple[Expression, ...]


@dataclass(frozen=True)
class Choice:
    options: tuple[Expression, ...]


@dataclass(frozen=True)
class Optional:
    item: Expression


@dataclass(frozen=True)
class Repeated:
    """The item `least` to `most` times (None: no limit)."""

    item: Expression
    least: int = 0
    most: int | None = None


Expression = Text | Chars | Rule | Sequence | Choice | Optional | Repeated
Grammar = dict[str, Expression]


def gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _bounds(least: int, most: int | None) -> str:
    if (least, most) == (0, None):
        return "*"
    if (least, most) == (1, None):
        return "+"
    return f"{{{least},{'' if most is None else most}}}"


def _render(expression: Expression, literal: Callable[[str], str], chars: Callable[[Chars], str]) -> str:
    match expression:
        case Text(value):
            return literal(value)
        case Chars():
            return chars(expression)
        case Rule(name):
            return name
        case Sequence(items):
            return "(" + " ".join(_render(item, literal, chars) for item in items) + ")"
        case Choice(options):
            return "(" + " | ".join(_render(option, literal, chars) for option in options) + ")"
        case Optional(item):  # in parentheses: a quantifier never follows another
            return "(" + _render(item, literal, chars) + ")?"
        case Repeated(item, least, most):
            return "(" + _render(item, literal, chars) + ")" + _bounds(least, most)
    raise TypeError(f"not a grammar expression: {expression!r}")


def to_gbnf(grammar: Grammar) -> str:
    """GBNF rules (llama.cpp), one per line."""
    return "\n".join(
        f"{name} ::= {_render(body, gbnf_literal, lambda c: f'[{c.kind}]{_bounds(c.least, c.most)}')}"
        for name, body in grammar.items()
    )


def to_lark(grammar: Grammar) -> str:
    """Lark rules (llguidance), one per line; literals are JSON strings, which Lark reads with the same
    escapes, and character runs are regex terminals."""
    return "\n".join(
        f"{name}: {_render(body, json.dumps, lambda c: f'/[{c.kind}]{_bounds(c.least, c.most)}/')}"
        for name, body in grammar.items()
    )
