"""The Go text/template renderer against outputs derived by hand from Go's semantics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import types

import pytest

from modelyard.templates.gotemplate import GoTemplate, GoTemplateError

CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>"""

LLAMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- if and (eq .Role "assistant") $last }}{{ else if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""


def render(source: str, data: object = None) -> str:
    return GoTemplate(source).render({} if data is None else data)


def render_error(source: str, data: object = None) -> str:
    with pytest.raises(GoTemplateError) as caught:
        render(source, data)
    return str(caught.value)


# Real templates


def test_chatml_prompt_template():
    data = {"System": "You are terse.", "Prompt": "Hi", "Response": ""}
    assert render(CHATML, data) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>"
    )


def test_chatml_without_system_drops_the_block():
    data = {"System": "", "Prompt": "Hi", "Response": "Hello"}
    assert render(CHATML, data) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>"


def test_llama3_messages_template_ends_with_the_assistant_header():
    messages = [{"Role": "system", "Content": "Be brief."}, {"Role": "user", "Content": "Hi"}]
    assert render(LLAMA3, {"Messages": messages}) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_messages_template_continues_a_last_assistant_message():
    messages = [{"Role": "user", "Content": "Hi"}, {"Role": "assistant", "Content": "Hel"}]
    assert render(LLAMA3, {"Messages": messages}) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHel"
    )


def test_tool_call_template_with_json():
    source = (
        "{{- range .Messages }}{{ if .ToolCalls }}{{ range .ToolCalls }}"
        '<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}</tool_call>'
        "{{ end }}{{ else }}{{ .Content }}{{ end }}\n{{ end }}"
    )
    call = {"Function": {"Name": "get_weather", "Arguments": {"city": "Paris", "days": 2}}}
    messages = [{"Role": "user", "Content": "Weather?"}, {"Role": "assistant", "Content": "", "ToolCalls": [call]}]
    assert render(source, {"Messages": messages}) == (
        'Weather?\n<tool_call>{"name": "get_weather", "arguments": {"city":"Paris","days":2}}</tool_call>\n'
    )


# Text, trimming and comments


def test_text_without_actions_is_copied():
    assert render("plain {text} }} here\n") == "plain {text} }} here\n"
    assert render("") == ""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a  {{- .X -}}  b", "axb"),
        ("a \n\t{{- .X }} \n b", "ax \n b"),
        ("a {{ .X -}} \n\n b", "a xb"),
        ("{{ .X }}\n{{- .X }}", "xx"),
        ("a {{-3}} b", "a -3 b"),  # "{{-" without a space after it is a negative number
        ("a {{ 3 -}}\n b", "a 3b"),
        ("a {{/* note */}} b", "a  b"),
        ("a {{- /* note\n spanning lines */ -}} b", "ab"),
        ("{{ .X\n}}", "x"),  # newlines may separate words inside an action
    ],
)
def test_trimming_and_comments(source, expected):
    assert render(source, {"X": "x"}) == expected


# Control structures


@pytest.mark.parametrize(("n", "expected"), [(1, "one"), (2, "two"), (3, "many")])
def test_if_else_if_chain(n, expected):
    source = "{{ if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else }}many{{ end }}"
    assert render(source, {"N": n}) == expected


@pytest.mark.parametrize("value", [False, 0, 0.0, "", [], {}, None])
def test_go_falsy_values(value):
    assert render("{{ if .V }}yes{{ else }}no{{ end }}", {"V": value}) == "no"


@pytest.mark.parametrize("value", [True, 1, -0.5, "x", [0], {"k": 0}, types.SimpleNamespace()])
def test_go_truthy_values(value):
    assert render("{{ if .V }}yes{{ else }}no{{ end }}", {"V": value}) == "yes"


def test_with_sets_dot_and_else_with():
    source = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    assert render(source, {"A": "1", "B": "2"}) == "a=1"
    assert render(source, {"A": "", "B": "2"}) == "b=2"
    assert render(source, {}) == "none"


def test_range_with_index_element_and_root():
    source = "{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}={{ .Content }}/{{ len $.Messages }};{{ end }}"
    messages = [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}]
    assert render(source, {"Messages": messages}) == "0:user=a/2;1:assistant=b/2;"


def test_range_with_one_variable_gets_the_element():
    assert render("{{ range $v := .L }}{{ $v }}{{ end }}", {"L": ["x", "y"]}) == "xy"


def test_range_else_runs_for_empty_and_missing_lists():
    source = "{{ range .L }}{{ . }}{{ else }}empty{{ end }}"
    assert render(source, {"L": []}) == "empty"
    assert render(source, {}) == "empty"


def test_range_over_a_map_is_in_key_order():
    assert render("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}) == "a=1 b=2 "


def test_range_over_an_integer():
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"


def test_break_and_continue():
    source = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert render(source, {"L": [1, 2, 3, 4, 5]}) == "13"


def test_range_cannot_iterate_over_a_string():
    assert render_error("{{ range .S }}{{ end }}", {"S": "abc"}).endswith("range can't iterate over abc")


# Variables


def test_variables_declare_and_assign():
    assert render('{{ $x := "a" }}{{ $x }}{{ $x = "b" }}{{ $x }}') == "ab"


def test_assignment_in_a_range_body_updates_the_outer_variable():
    assert render("{{ $last := 0 }}{{ range .L }}{{ $last = . }}{{ end }}{{ $last }}", {"L": [1, 2, 3]}) == "3"


def test_variables_declared_in_a_block_end_with_it():
    message = render_error("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}")
    assert message == 'template: :1: undefined variable "$x"'


def test_dollar_is_the_root_inside_with():
    assert render("{{ with .A }}{{ $.B }}{{ end }}", {"A": "a", "B": "b"}) == "b"


# Functions and pipelines


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ eq .Role "user" "system" }}', "true"),
        ('{{ eq .Role "user" "tool" }}', "false"),
        ('{{ ne .Role "user" }}', "true"),
        ("{{ eq .Missing nil }}", "true"),
        ("{{ eq .L nil }}", "false"),
        ('{{ eq .Missing "x" }}', "false"),
        ("{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 2 3 }}", "true true false false"),
        ('{{ lt "a" "b" }}', "true"),
        ('{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" }} {{ or 0 3 }}', "0 2  3"),
        ('{{ or .Missing "default" }}', "default"),
        ("{{ and false (index .L 99) }}", "false"),  # and stops at the first false argument
        ("{{ not 0 }} {{ not .Role }}", "true false"),
    ],
)
def test_logic_and_comparison(source, expected):
    assert render(source, {"Role": "system", "L": [1]}) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ len .L }} {{ len .M }} {{ len .S }} {{ len .Missing }}", "3 1 6 0"),  # Go counts a string's bytes
        ("{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice .L }}", "[b c] [b] [a b c]"),
        ('{{ slice "hello" 1 3 }}', "el"),
        ('{{ index .L 2 }} {{ index .M "k" }} {{ index .N 0 "k" }} {{ index .M "nope" }}', "c v v "),
        ('{{ index "ab" 1 }}', "98"),  # a string indexes to a byte
        ("{{ len (slice .L 1) }}", "2"),
        ("{{ (index .N 0).k }}", "v"),
    ],
)
def test_len_slice_index(source, expected):
    data = {"L": ["a", "b", "c"], "M": {"k": "v"}, "N": [{"k": "v"}], "S": "héllo"}
    assert render(source, data) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ .Name | printf "%s!" }}', "x!"),
        ('{{ "a" | eq "a" }}', "true"),
        ("{{ .L | len }}", "2"),
        ('{{ .Name | print "<" | printf "%s>" }}', "<x>"),
        ("{{ $n := .L | len }}{{ $n }}", "2"),
    ],
)
def test_pipelines(source, expected):
    assert render(source, {"Name": "x", "L": [1, 2]}) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ printf "%s=%d %v %q %05.2f" "a" 3 true "x\\"y" 3.14159 }}', 'a=3 true "x\\"y" 03.14'),
        ('{{ printf "%5s|%-5s|%x|%c|%t" "ab" "ab" 255 65 false }}', "   ab|ab   |ff|A|false"),
        ('{{ printf "%v %v %v" .L .M nil }}', "[1 a] map[a:1 b:2] <nil>"),
        ('{{ printf "%g %v %v" 0.1 1e6 1.5 }}', "0.1 1e+06 1.5"),
        ('{{ printf "%d %d" 1 }}', "1 %!d(MISSING)"),
        ('{{ printf "%d" 1 2 }}', "1%!(EXTRA int=2)"),
        ('{{ printf "%d" "x" }}', "%!d(string=x)"),
        ('{{ printf "100%%" }}', "100%"),
        ('{{ print 1 2 "a" 3 }}', "1 2a3"),
        ('{{ println 1 "a" }}', "1 a\n"),
    ],
)
def test_print_functions(source, expected):
    assert render(source, {"L": [1, "a"], "M": {"b": 2, "a": 1}}) == expected


def test_json_is_compact_html_safe_and_formats_numbers_like_go():
    tools = [{"name": "f", "params": {"a": 1.0, "b": 0.5, "c": 1e21, "d": 1e-7, "e": "<&>", "f": None, "g": True}}]
    assert render("{{ json .Tools }}", {"Tools": tools}) == (
        '[{"name":"f","params":{"a":1,"b":0.5,"c":1e+21,"d":1e-7,"e":"\\u003c\\u0026\\u003e","f":null,"g":true}}]'
    )


def test_json_of_a_dataclass_and_of_unicode():
    @dataclasses.dataclass
    class Tool:
        name: str
        note: str

    assert render("{{ json .T }}", {"T": Tool("f", "é\n")}) == '{"name":"f","note":"é\\n"}'


def test_json_prints_nothing_for_values_go_cannot_marshal():
    assert render("[{{ json .V }}]", {"V": float("nan")}) == "[]"


def test_current_date_is_todays_iso_date_and_ignores_its_format():
    days = {dt.date.today()}
    rendered = render('{{ currentDate }}|{{ currentDate "ignored" }}|{{ yesterdayDate }}')
    days.add(dt.date.today())  # the day may turn during the render
    assert rendered in {f"{day}|{day}|{day - dt.timedelta(days=1)}" for day in days}


# Literals and printing


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ "a\\tb\\u00e9\\x41" }}', "a\tbéA"),
        ("{{ `raw\\n` }}", "raw\\n"),
        ("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 1_000 }}", "42 -7 31 1000"),
        ("{{ 1.5 }} {{ 1.0 }} {{ 1e6 }} {{ 123456.0 }} {{ 0.00001 }}", "1.5 1 1e+06 123456 1e-05"),
        ("{{ 'a' }} {{ '\\n' }}", "97 10"),
        ("{{ true }} {{ false }}", "true false"),
        ("{{ print nil }}", "<nil>"),
        ("{{ .L }} {{ .M }}", "[a 1 true] map[a:1 b:[x]]"),
        ("[{{ .Missing }}][{{ .Missing.Deeper }}]", "[][]"),
        ("{{ . }}", "map[L:[a 1 true] M:map[a:1 b:[x]]]"),
    ],
)
def test_literals_and_printing(source, expected):
    assert render(source, {"L": ["a", 1, True], "M": {"b": ["x"], "a": 1}}) == expected


def test_fields_resolve_on_objects_and_call_methods():
    class Message:
        Role = "user"

        def Greet(self, name: str) -> str:  # capitalised, as Go templates name methods
            return f"hi {name}"

    data = {"Messages": [Message()], "Who": "bob"}
    assert render("{{ range .Messages }}{{ .Role }} {{ .Greet $.Who }}{{ end }}", data) == "user hi bob"


# Errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ .X ", "template: :1: unclosed action"),
        ("{{ if .X }}", "template: :1: unexpected EOF"),
        ("{{ end }}", "template: :1: unexpected {{end}}"),
        ("{{ else }}", "template: :1: unexpected {{else}}"),
        ("{{ html .X }}", 'template: :1: function "html" not defined'),
        ("a\n{{ if }}", "template: :2: missing value for if"),
        ("{{ }}", "template: :1: missing value for command"),
        ('{{ .X | "a" }}', "template: :1: non executable command in pipeline stage 2"),
        ('{{ "a""b" }}', 'template: :1: unexpected "\\"b\\"" in operand'),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        ("{{/* x */ }}", "template: :1: comment ends before closing delimiter"),
        ("{{/* x }}", "template: :1: unclosed comment"),
        ('\n\n{{ "abc }}', "template: :3: unterminated quoted string"),
        ("{{ (1 }}", "template: :1: unclosed left paren"),
        ("{{ 3x }}", 'template: :1: bad number syntax: "3x"'),
        ("{{ .X=1 }}", "template: :1: bad character U+003D '='"),
        ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "template: :1: expected end; found {{else}}"),
        ("{{ range $i, $v, $w := .X }}{{ end }}", "template: :1: too many declarations in range"),
        ('{{ "x".Y }}', 'template: :1: unexpected . after term "\\"x\\""'),
        ('{{ "\\q" }}', "template: :1: invalid syntax"),
        ('{{ define "x" }}{{ end }}', "template: :1: {{define}} is not supported"),
    ],
)
def test_syntax_errors_read_like_go(source, message):
    with pytest.raises(GoTemplateError) as caught:
        GoTemplate(source)
    assert str(caught.value) == message


def test_syntax_error_is_a_value_error():
    with pytest.raises(ValueError):
        GoTemplate("{{ if }}")


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("{{ index .L 5 }}", "<index .L 5>: error calling index: index out of range: 5"),
        ("{{ len 3 }}", "<len 3>: error calling len: len of type int"),
        ('{{ eq 1 "a" }}', '<eq 1 "a">: error calling eq: incompatible types for comparison'),
        ("{{ eq 1 1.0 }}", "<eq 1 1.0>: error calling eq: incompatible types for comparison"),
        ("{{ eq .L .L }}", "<eq .L .L>: error calling eq: non-comparable type []interface {}"),
        ("{{ lt true false }}", "<lt true false>: error calling lt: invalid type for comparison"),
        ("{{ .S.X }}", "<.S.X>: can't evaluate field X in type string"),
        ("{{ not }}", "<not>: wrong number of args for not: want 1 got 0"),
        ("{{ and }}", "<and>: wrong number of args for and: want at least 1 got 0"),
        ("{{ nil }}", "<nil>: nil is not a command"),
        ('{{ "a" 1 }}', '<"a">: can\'t give argument to non-function "a"'),
        ("{{ .M.k 1 }}", "<.M.k>: k is not a method but has arguments"),
        ("{{ slice .L 1 0 }}", "<slice .L 1 0>: error calling slice: invalid slice index: 1 > 0"),
        ("{{ printf 1 }}", "<printf 1>: error calling printf: wrong type for value; expected string; got int"),
    ],
)
def test_execution_errors_read_like_go(source, where):
    expected = f'template: :1:3: executing "" at {where}'
    assert render_error(source, {"L": [1], "S": "s", "M": {"k": "v"}}) == expected


def test_execution_errors_give_line_and_byte_column():
    message = render_error("{{/* é */}}\né {{ len 3 }}")
    assert message.startswith('template: :2:6: executing "" at <len 3>: ')  # "é {{ " is six bytes
