"""The core's small grammar (runtime/grammar.py) and FunctionGemma's call grammar built with it.

What the grammar means is checked here without an engine: it is expanded into a Python regex (the rules form
no cycle), and random walks through it give calls that FunctionGemma's parser must read back into arguments
that match their tool's schema. tests/tools and tests/onnx run the GBNF and Lark spellings on real engines.
"""

from __future__ import annotations

import random
import re

import jsonschema
import pytest

from modelyard.errors import BadRequest
from modelyard.runtime import grammar
from modelyard.runtime.contract import ToolCallEvent
from modelyard.runtime.tools import FUNCTIONGEMMA, ToolCallParser, functiongemma_grammar, tool_constraint


def regex(rules: grammar.Grammar, expression: grammar.Expression) -> str:
    match expression:
        case grammar.Text(value):
            return re.escape(value)
        case grammar.Chars(kind, least, most):
            return f"[{kind}]{{{least},{'' if most is None else most}}}"
        case grammar.Rule(name):
            return regex(rules, rules[name])
        case grammar.Sequence(items):
            return "(?:" + "".join(regex(rules, item) for item in items) + ")"
        case grammar.Choice(options):
            return "(?:" + "|".join(regex(rules, option) for option in options) + ")"
        case grammar.Optional(item):
            return "(?:" + regex(rules, item) + ")?"
        case grammar.Repeated(item, least, most):
            return "(?:" + regex(rules, item) + f"){{{least},{'' if most is None else most}}}"
    raise TypeError(expression)


def sample(rules: grammar.Grammar, expression: grammar.Expression, rng: random.Random) -> str:
    """One random string of the grammar (characters from a set that holds the syntax's own delimiters)."""
    match expression:
        case grammar.Text(value):
            return value
        case grammar.Chars(kind, least, most):
            alphabet = "0123456789" if kind == "0-9" else "ab ,:{}[]\n0-9\"'true"
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(least, most if most is not None else 8)))
        case grammar.Rule(name):
            return sample(rules, rules[name], rng)
        case grammar.Sequence(items):
            return "".join(sample(rules, item, rng) for item in items)
        case grammar.Choice(options):
            return sample(rules, rng.choice(options), rng)
        case grammar.Optional(item):
            return sample(rules, item, rng) if rng.random() < 0.5 else ""
        case grammar.Repeated(item, least, most):
            count = rng.randint(least, most if most is not None else least + 3)
            return "".join(sample(rules, item, rng) for _ in range(count))
    raise TypeError(expression)


def tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


BOOK = tool(
    "book",
    {
        "type": "object",
        "properties": {
            "note": {"type": "string", "maxLength": 12},
            "city": {"type": "string", "minLength": 1, "maxLength": 20},
            "nights": {"type": "integer"},
            "budget": {"type": "number"},
            "breakfast": {"type": "boolean"},
            "room": {"enum": ["single", "double", 3]},
            # null and 1e+20 would come back as strings, {"k": 1} as another object: left out.
            "mode": {"enum": [None, 1e20, {"k": 1}, "fast", 2.5]},
            "pair": {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
            "guests": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
            "dates": {
                "type": "object",
                "properties": {"start": {"type": "string"}, "end": {"type": "string"}},
                "required": ["start"],
            },
        },
        "required": ["city", "nights"],
    },
)
PING = tool("ping", {"type": "object", "properties": {}})
OPTIONAL = tool("opt", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})


def call_pattern(tools: list[dict], choice="required") -> re.Pattern[str]:
    rules = functiongemma_grammar(tool_constraint(FUNCTIONGEMMA, tools, choice).schema)
    return re.compile(regex(rules, rules["payload"]), re.DOTALL)


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("call:opt{}", True),
        ("call:opt{a:1}", True),
        ("call:opt{b:-2}", True),
        ("call:opt{a:1,b:2}", True),
        ("call:opt{b:2,a:1}", False),  # the schema's order
        ("call:opt{,b:2}", False),
        ("call:opt{a:1,}", False),
        ("call:opt{a:x}", False),
    ],
)
def test_optional_keys_are_separated_by_commas_only_between(text, allowed):
    assert bool(call_pattern([OPTIONAL]).fullmatch(text)) is allowed


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("call:book{city:<escape>Rome<escape>,nights:2}", True),
        ("call:book{note:<escape>hi<escape>,city:<escape>Rome<escape>,nights:2,room:3}", True),
        ("call:book{city:<escape>Rome<escape>,nights:2,budget:-1.5,breakfast:true,room:<escape>double<escape>}", True),
        ("call:book{city:<escape>Rome<escape>,nights:2,guests:[<escape>Ann<escape>,<escape>Bo<escape>]}", True),
        ("call:book{city:<escape>Rome<escape>,nights:2,dates:{start:<escape>x<escape>}}", True),
        ("call:book{city:<escape>Rome<escape>,nights:2,guests:[]}", True),
        (
            "call:book{city:<escape>Rome<escape>,nights:2,guests:[<escape>A<escape>,<escape>B<escape>,<escape>C<escape>]}",
            False,
        ),
        ("call:book{city:<escape>Rome<escape>}", False),  # nights is required
        ("call:book{city:<escape><escape>,nights:2}", False),  # minLength 1
        ("call:book{city:<escape>a<b<escape>,nights:2}", False),  # no < in a string
        ("call:book{city:<escape>Rome<escape>,nights:2,room:<escape>triple<escape>}", False),
        ("call:book{city:<escape>Rome<escape>,nights:2,dates:{end:<escape>x<escape>}}", False),
        ("call:book{city:<escape>" + "r" * 21 + "<escape>,nights:2}", False),  # maxLength 20
        ("call:ping{}", False),  # not among the forced choice
    ],
)
def test_a_named_call_follows_its_schema(text, allowed):
    assert bool(call_pattern([BOOK, PING], {"name": "book"}).fullmatch(text)) is allowed


def test_every_call_the_grammar_allows_parses_back_into_valid_arguments():
    tools = [BOOK, PING, OPTIONAL]
    schemas = {item["function"]["name"]: item["function"]["parameters"] for item in tools}
    rules = functiongemma_grammar(tool_constraint(FUNCTIONGEMMA, tools, "required").schema)
    rng = random.Random(7)
    names = set()
    for _ in range(300):
        text = "<start_function_call>" + sample(rules, rules["payload"], rng) + "<end_function_call>"
        parser = ToolCallParser(FUNCTIONGEMMA, tools)
        [call] = [event for event in [*parser.feed(text), *parser.finish()] if isinstance(event, ToolCallEvent)]
        jsonschema.validate(call.arguments, schemas[call.name])
        names.add(call.name)
    assert names == set(schemas)


def test_only_enum_values_that_read_back_are_allowed():
    pattern = call_pattern([BOOK], {"name": "book"})
    base = "call:book{city:<escape>Rome<escape>,nights:2,"
    assert pattern.fullmatch(base + "mode:<escape>fast<escape>}") and pattern.fullmatch(base + "mode:2.5}")
    for written in ("null", "1e+20", '{"k": 1}'):
        assert not pattern.fullmatch(base + f"mode:{written}}}")


def test_a_list_of_at_most_one_is_spelled_without_an_empty_repeat():
    """llguidance refuses `{0,0}` (GBNF takes it): a list of at most one item has no repeat at all."""
    rules = functiongemma_grammar(tool_constraint(FUNCTIONGEMMA, [BOOK], "required").schema)
    assert "{0,0}" not in grammar.to_lark(rules) and "{0,0}" not in grammar.to_gbnf(rules)
    pattern = call_pattern([BOOK], "required")
    base = "call:book{city:<escape>Rome<escape>,nights:2,"
    assert pattern.fullmatch(base + "pair:[]}") and pattern.fullmatch(base + "pair:[7]}")
    assert not pattern.fullmatch(base + "pair:[7,8]}")


def test_bounds_below_their_minimum_are_raised_to_it():
    odd = tool("odd", {"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 1}}})
    pattern = call_pattern([odd])
    assert pattern.fullmatch("call:odd{s:<escape>abc<escape>}") and not pattern.fullmatch(
        "call:odd{s:<escape>a<escape>}"
    )


@pytest.mark.parametrize(
    "tools",
    [
        [tool("f", {"type": "object", "properties": {"a:b": {"type": "integer"}}})],
        [tool("f", {"type": "object", "properties": {"x,y": {"type": "integer"}}})],
        [tool("my tool", {"type": "object", "properties": {}})],
    ],
)
def test_names_the_syntax_cannot_hold_are_a_400(tools):
    with pytest.raises(BadRequest, match="FunctionGemma's call syntax cannot hold"):
        tool_constraint(FUNCTIONGEMMA, tools, "required")


def test_gbnf_and_lark_spellings():
    rules: grammar.Grammar = {
        "payload": grammar.Sequence(
            (
                grammar.Text('say "hi"\n'),
                grammar.Optional(grammar.Chars("0-9", 1, 3)),
                grammar.Repeated(grammar.Rule("more")),
                grammar.Repeated(grammar.Text(","), 1, 2),
            )
        ),
        "more": grammar.Choice((grammar.Text("\\"), grammar.Chars("^<"))),
    }
    assert grammar.to_gbnf(rules) == (
        'payload ::= ("say \\"hi\\"\\n" ([0-9]{1,3})? (more)* (","){1,2})\nmore ::= ("\\\\" | [^<]*)'
    )
    assert grammar.to_lark(rules) == (
        'payload: ("say \\"hi\\"\\n" (/[0-9]{1,3}/)? (more)* (","){1,2})\nmore: ("\\\\" | /[^<]*/)'
    )
