"""Tool-call parsers of each family, fed the outputs those models write, streamed piece by piece.

The outputs are the forms each family's chat template teaches and its models answer with (Qwen 2.5 and
Hermes 3, Llama 3.1/3.2, Mistral 7B v0.3 and Mistral Small 3.2, Gemma 3's tool_code, FunctionGemma), plus
what the bundled SmolLM2 wrote under the tool grammar on llama.cpp.
"""

from __future__ import annotations

import re

import pytest
from support.tools import ADD

from modelyard.errors import BadRequest
from modelyard.runtime.contract import TextDelta, ToolCallEvent
from modelyard.runtime.tools import (
    FUNCTIONGEMMA,
    GEMMA,
    HERMES,
    JSON_CALLS,
    LLAMA3,
    MISTRAL,
    CallSyntax,
    ToolCallParser,
    call_syntax,
    normalize_tool_choice,
    plan_tools,
    tool_constraint,
)
from modelyard.store.bundled import SMOLLM2_TEMPLATE

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    ADD,
]
PARIS = ("get_weather", {"city": "Paris"})

# (family, output, text the user sees, calls)
RECORDED = [
    ("qwen", HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [PARIS]),
    (
        "hermes-two-calls-after-text",
        HERMES,
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
        "Let me check both.\n",
        [PARIS, ("add", {"a": 2, "b": 3})],
    ),
    (
        "smollm2-library-template-list",
        HERMES,
        '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call>',
        "",
        [PARIS],
    ),
    (
        "smollm2-under-grammar",
        HERMES,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris,France"}}\n</tool_call>',
        "",
        [("get_weather", {"city": "Paris,France"})],
    ),
    ("llama3.2-bare-json", LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS]),
    (
        "llama3.1-python-tag",
        LLAMA3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [PARIS],
    ),
    (
        "llama3-arguments-as-a-string",
        LLAMA3,
        '{"name": "add", "parameters": "{\\"a\\": 1, \\"b\\": 2}"}',
        "",
        [("add", {"a": 1, "b": 2})],
    ),
    (
        "mistral-v0.3",
        MISTRAL,
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]',
        "",
        [PARIS, ("add", {"a": 1, "b": 2})],
    ),
    ("mistral-small-3.2", MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "", [PARIS]),
    (
        "gemma3-tool-code",
        GEMMA,
        'I will look it up.\n```tool_code\nprint(get_weather(city="Paris"))\n```',
        "I will look it up.\n",
        [PARIS],
    ),
    ("gemma3-positional", GEMMA, "```tool_code\nadd(2, 3)\n```", "", [("add", {"a": 2, "b": 3})]),
    ("gemma3-json", GEMMA, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS]),
    (
        "functiongemma",
        FUNCTIONGEMMA,
        "<start_function_call>call:get_weather{city:<escape>Paris, France<escape>}<end_function_call>"
        "<start_function_call>call:add{a:1,b:2.5}<end_function_call>",
        "",
        [("get_weather", {"city": "Paris, France"}), ("add", {"a": 1, "b": 2.5})],
    ),
]


def parse(syntax: CallSyntax, output: str, piece: int) -> tuple[str, list[ToolCallEvent]]:
    parser = ToolCallParser(syntax, TOOLS)
    events = []
    for start in range(0, len(output), piece):
        events += parser.feed(output[start : start + piece])
    events += parser.finish()
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    return text, [event for event in events if isinstance(event, ToolCallEvent)]


@pytest.mark.parametrize("piece", [1, 3, 1000], ids=["chars", "threes", "whole"])
@pytest.mark.parametrize(
    ("syntax", "output", "text", "calls"), [case[1:] for case in RECORDED], ids=[c[0] for c in RECORDED]
)
def test_recorded_outputs_give_their_calls(syntax, output, text, calls, piece):
    found_text, found = parse(syntax, output, piece)
    assert found_text == text
    assert [(call.name, call.arguments) for call in found] == calls
    assert [call.index for call in found] == list(range(len(calls)))
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", call.id) for call in found)
    assert len({call.id for call in found}) == len(found)


def test_plain_text_passes_at_once_and_a_possible_marker_is_held():
    parser = ToolCallParser(HERMES, TOOLS)
    assert parser.feed("The answer is ") == [TextDelta("The answer is ")]
    assert parser.feed("<tool") == []  # it may become <tool_call>
    assert parser.feed("box> 4") == [TextDelta("<toolbox> 4")]
    assert parser.finish() == []


def test_a_call_comes_out_only_when_complete():
    parser = ToolCallParser(HERMES, TOOLS)
    assert parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par') == []
    [call] = parser.feed('is"}}')
    assert (call.name, call.arguments) == PARIS
    assert parser.feed("\n</tool_") == []
    assert parser.feed("call>\nDone.") == [TextDelta("Done.")]


@pytest.mark.parametrize(
    ("syntax", "output"),
    [
        (HERMES, '<tool_call>\n{"name": "get_weather", "argu'),  # cut by num_predict
        (HERMES, "<tool_call> is how calls begin"),  # not JSON after the marker
        (LLAMA3, '{"answer": 42}'),  # a JSON answer that names no tool
        (LLAMA3, 'Here: {"name": "get_weather", "parameters": {}}'),  # JSON after text is not a call
        (MISTRAL, "[TOOL_CALLS] nothing"),
        (FUNCTIONGEMMA, "<start_function_call>call:get_weather{city:"),
        (GEMMA, "```tool_code\nimport os\n```"),
    ],
)
def test_what_is_not_a_complete_call_stays_text(syntax, output):
    for piece in (1, 1000):
        text, calls = parse(syntax, output, piece)
        assert calls == [] and text == output


def test_the_template_names_the_family():
    assert call_syntax(SMOLLM2_TEMPLATE) is HERMES
    qwen = '{%- if tools %}...<tools>{{ tool | tojson }}</tools>... <tool_call>\\n{"name": <function-name>}'
    assert call_syntax(qwen) is HERMES
    llama = '<|start_header_id|>ipython<|end_header_id|>{{- \'{"name": \' }}..."parameters"'
    assert call_syntax(llama) is LLAMA3
    assert call_syntax("{%- if message.tool_calls %}[TOOL_CALLS][{{ ... }}]") is MISTRAL
    assert call_syntax("<start_function_call>call:{{ name }}") is FUNCTIONGEMMA
    assert call_syntax("```tool_code\n{{ ... }}```") is GEMMA
    assert call_syntax("{{ .Prompt }}") is JSON_CALLS  # no known form: bare JSON, as Ollama tries "{"
    # A Go template's own tag: the first text it writes after .ToolCalls (Ollama's parseTag).
    own = call_syntax('{{ if .ToolCalls }}<functioncall> {{ range .ToolCalls }}{"name": "{{ .Function.Name }}"')
    assert own.starts == ("<functioncall>",) and own.grammar_prefix == "<functioncall>\n"


def test_a_modelfile_parser_names_the_family_over_the_template():
    assert call_syntax(SMOLLM2_TEMPLATE, "mistral") is MISTRAL
    assert call_syntax("", "qwen3") is HERMES  # Ollama's parser names map onto ours
    assert call_syntax("", "functiongemma") is FUNCTIONGEMMA
    assert call_syntax(SMOLLM2_TEMPLATE, "passthrough") is None
    assert call_syntax(SMOLLM2_TEMPLATE, "harmony") is HERMES  # one we do not know: the template decides


@pytest.mark.parametrize(
    ("choice", "wanted"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("any", "required"),  # Anthropic's
        ({"type": "any"}, "required"),
        ({"type": "tool", "name": "add"}, {"name": "add"}),  # Anthropic's
        ({"type": "function", "function": {"name": "add"}}, {"name": "add"}),  # OpenAI chat's
        ({"type": "function", "name": "add"}, {"name": "add"}),  # OpenAI responses'
    ],
)
def test_tool_choice_spellings(choice, wanted):
    assert normalize_tool_choice(choice, TOOLS) == wanted


@pytest.mark.parametrize(
    ("choice", "tools", "message"),
    [
        ("sometimes", TOOLS, 'invalid tool_choice: "sometimes"'),
        ("required", None, "tool_choice required needs tools"),
        ({"name": "launch"}, TOOLS, 'tool_choice names "launch", which is not among the tools'),
        (3, TOOLS, "invalid tool_choice"),
    ],
)
def test_bad_tool_choices_are_400s(choice, tools, message):
    with pytest.raises(BadRequest, match=re.escape(message)):
        normalize_tool_choice(choice, tools)


def test_the_constraint_of_a_forced_call():
    required = tool_constraint(HERMES, TOOLS, "required")
    assert required.prefix == "<tool_call>\n" and required.suffix == "\n</tool_call>" and required.after == ""
    names = [option["properties"]["name"]["const"] for option in required.schema["anyOf"]]
    assert names == ["get_weather", "add"]
    assert required.schema["anyOf"][1]["properties"]["arguments"] == TOOLS[1]["function"]["parameters"]
    named = tool_constraint(LLAMA3, TOOLS, {"name": "add"}, after="</think>")
    assert named.schema["properties"]["name"] == {"const": "add"} and "parameters" in named.schema["properties"]
    assert named.after == "</think>" and named.prefix == ""
    mistral = tool_constraint(MISTRAL, TOOLS, {"name": "add"})
    assert mistral.prefix == "[TOOL_CALLS]" and mistral.schema["type"] == "array" and mistral.schema["maxItems"] == 1
    assert tool_constraint(HERMES, TOOLS, "auto") is None
    functiongemma = tool_constraint(FUNCTIONGEMMA, TOOLS, "required")  # not JSON: the core's grammar of it
    assert functiongemma.syntax == "functiongemma" and required.syntax == "json"
    assert (functiongemma.prefix, functiongemma.suffix) == ("<start_function_call>", "<end_function_call>")


def test_the_plan_of_a_request():
    none = plan_tools(TOOLS, "none", None, thinking=False, template=SMOLLM2_TEMPLATE, parser=None)
    assert none.offered is None and none.parser() is None and none.constraint is None
    auto = plan_tools(TOOLS, None, None, thinking=False, template=SMOLLM2_TEMPLATE, parser=None)
    assert auto.offered == TOOLS and auto.parser() is not None and auto.constraint is None
    forced = plan_tools(TOOLS, "required", {"type": "object"}, thinking=False, template=SMOLLM2_TEMPLATE, parser=None)
    assert forced.constraint.prefix == "<tool_call>\n"  # the forced call takes the place of the format
    formatted = plan_tools(None, None, "json", thinking=False, template="", parser=None)
    assert formatted.constraint.schema == "json" and formatted.constraint.after == ""
    thinking = plan_tools(None, None, "json", thinking=True, template="", parser=None)
    assert thinking.constraint.after == "</think>"  # the format applies after the thinking block
    remote = plan_tools(TOOLS, "required", None, thinking=False, template=SMOLLM2_TEMPLATE, parser=None, parse=False)
    assert remote.offered == TOOLS and remote.parser() is None and remote.constraint is None
