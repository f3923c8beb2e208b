"""Tool calls: finding them in a model's output, and the grammar that makes a model write one.

Each model family writes its calls in its own syntax (a `CallSyntax`): Hermes and Qwen wrap JSON in
`<tool_call>...</tool_call>`, Llama 3 answers with a bare JSON object (or after `<|python_tag|>`), Mistral
writes `[TOOL_CALLS]` and a JSON list (or `name[ARGS]{...}`), Gemma a ```tool_code``` block of Python calls
or bare JSON, FunctionGemma `<start_function_call>call:name{key:value}<end_function_call>`. The syntax is
chosen by a Modelfile's PARSER (Ollama's `parser` in the config blob) or read from the model's template, as
Ollama does: a family's marker in the text, else the literal a Go template writes after `.ToolCalls`.

`ToolCallParser` reads the output as it streams: text that cannot begin a call passes through at once,
and a call is emitted whole when it is complete, with an id (`call_<random>`), its index, its name and
its arguments as an object. `tool_constraint` turns a `tool_choice` of "required" or a named function into
the contract's `Constraint`: the family's call syntax around JSON whose name is one of the tools and whose
arguments match that tool's parameters.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import string
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from modelyard.errors import BadRequest
from modelyard.runtime import grammar
from modelyard.runtime.contract import Constraint, Done, Event, TextDelta, ToolCallEvent

# Where a thinking block ends, for a format or tool grammar that must let the model think first.
THINKING_END = "</think>"

_ID_ALPHABET = string.ascii_lowercase + string.digits


class CallSyntax(msgspec.Struct, frozen=True, kw_only=True):
    """How one family writes tool calls."""

    name: str
    starts: tuple[str, ...] = ()  # markers that open a call
    end: str = ""  # the marker that closes one (skipped after the call)
    leading_json: bool = False  # an answer that begins with `{` or `[` is a call (no marker)
    body: str = "json"  # "json", "mistral" (JSON or name[ARGS]{...}), "python" or "functiongemma"
    arguments_key: str = "arguments"  # the key the family writes its arguments under
    # The grammar of one forced call: prefix, the call (a one-item JSON list when `as_list`), suffix.
    grammar_prefix: str = ""
    grammar_suffix: str = ""
    as_list: bool = False


HERMES = CallSyntax(
    name="hermes",
    starts=("<tool_call>",),
    end="</tool_call>",
    grammar_prefix="<tool_call>\n",
    grammar_suffix="\n</tool_call>",
)
LLAMA3 = CallSyntax(name="llama3", starts=("<|python_tag|>",), leading_json=True, arguments_key="parameters")
MISTRAL = CallSyntax(
    name="mistral", starts=("[TOOL_CALLS]",), body="mistral", grammar_prefix="[TOOL_CALLS]", as_list=True
)
GEMMA = CallSyntax(
    name="gemma",
    starts=("```tool_code", "```tool_call"),
    end="```",
    leading_json=True,
    body="python",
    arguments_key="parameters",
)
FUNCTIONGEMMA = CallSyntax(
    name="functiongemma",
    starts=("<start_function_call>",),
    end="<end_function_call>",
    body="functiongemma",
    grammar_prefix="<start_function_call>",
    grammar_suffix="<end_function_call>",
)
JSON_CALLS = CallSyntax(name="json", leading_json=True)

FAMILIES = {syntax.name: syntax for syntax in (HERMES, LLAMA3, MISTRAL, GEMMA, FUNCTIONGEMMA, JSON_CALLS)}
# Ollama's parser names (its model/parsers) whose tool syntax is one of ours; "passthrough" parses none.
OLLAMA_PARSERS = {
    "qwen3": "hermes",
    "qwen3-thinking": "hermes",
    "qwen3-vl-instruct": "hermes",
    "qwen3-vl-thinking": "hermes",
    "ministral": "mistral",
    "functiongemma": "functiongemma",
}
PASSTHROUGH = "passthrough"

# `{{ if .ToolCalls }}<tag>...` in a Go template: the first text it writes before the call's JSON.
_GO_TOOL_CALLS = re.compile(r"\{\{-?\s*(?:if|range|with)\b[^}]*\.ToolCalls\b[^}]*-?\}\}(.*?)\{\{", re.DOTALL)


def known_parser(name: str) -> bool:
    return name in FAMILIES or name in OLLAMA_PARSERS or name == PASSTHROUGH


def call_syntax(template: str, parser: str | None = None) -> CallSyntax | None:
    """The syntax a model writes its calls in: the one its PARSER names, else the one its template shows.

    None for Ollama's "passthrough" parser (tool calls are not parsed). A template without any known form
    gets bare JSON, as Ollama's parser tries `{` when it finds no tag.
    """
    if parser:
        if parser == PASSTHROUGH:
            return None
        named = FAMILIES.get(OLLAMA_PARSERS.get(parser, parser))
        if named is not None:
            return named
    if "<start_function_call>" in template:
        return FUNCTIONGEMMA
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and "ipython" in template):
        return LLAMA3
    if "tool_code" in template:
        return GEMMA
    found = _GO_TOOL_CALLS.search(template)
    tag = found.group(1).split("{", 1)[0].strip() if found else ""
    if tag and tag not in "[":  # a tag of the template's own, e.g. "<function_calls>"
        return CallSyntax(name="template", starts=(tag,), grammar_prefix=tag + "\n")
    return JSON_CALLS


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


# --- tool_choice ------------------------------------------------------------------------------------


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [str((tool.get("function") or {}).get("name", "")) for tool in tools or []]


def normalize_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    """A tool_choice in any API's spelling as "auto", "none", "required" or {"name": function}, checked
    against the tools ("any" is Anthropic's "required"; {"type": "function", "function": {"name": ...}} is
    OpenAI's and Ollama's named form)."""
    if choice is None:
        return None
    if isinstance(choice, str):
        value = {"any": "required"}.get(choice, choice)
        if value not in ("auto", "none", "required"):
            raise BadRequest(f'invalid tool_choice: "{choice}" (must be "auto", "none", "required" or a function)')
        if value == "required" and not tools:
            raise BadRequest("tool_choice required needs tools")
        return value
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        if isinstance(name, str) and name:
            if name not in tool_names(tools):
                raise BadRequest(f'tool_choice names "{name}", which is not among the tools')
            return {"name": name}
        if choice.get("type") in ("auto", "none", "required", "any"):
            return normalize_tool_choice(choice["type"], tools)
    raise BadRequest("invalid tool_choice: expected a string or an object naming a function")


def tool_constraint(
    syntax: CallSyntax, tools: list[dict[str, Any]], choice: str | dict[str, Any] | None, after: str = ""
) -> Constraint | None:
    """The grammar of a forced call ("required": any of the tools; a name: that one), or None (auto)."""
    if not (choice == "required" or isinstance(choice, dict)):
        return None
    wanted = choice.get("name") if isinstance(choice, dict) else None
    calls = []
    for tool in tools:
        function = tool.get("function") or {}
        name = function.get("name")
        if not name or (wanted is not None and name != wanted):
            continue
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, syntax.arguments_key: parameters},
                "required": ["name", syntax.arguments_key],
            }
        )
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if syntax.as_list:
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}
    if syntax.body == "functiongemma":
        functiongemma_grammar(schema)  # a name or key its syntax cannot hold is a 400 now, not a 500 later
    return Constraint(
        schema=schema,
        prefix=syntax.grammar_prefix,
        suffix=syntax.grammar_suffix,
        after=after,
        syntax="functiongemma" if syntax.body == "functiongemma" else "json",
    )


# --- the streaming parser ---------------------------------------------------------------------------


class _Incomplete(Exception):
    """The call is not finished yet: wait for more text."""


class _NotACall(Exception):
    """What followed the marker is not a tool call: it is text."""


class ToolCallParser:
    """Output text in, TextDelta and ToolCallEvent out, in order.

    Text that cannot be the beginning of a call is passed on at once; text that could be (a marker's first
    characters) is held until it is clear. A call that never completes, or is not a call after all, comes
    out as the text it was.
    """

    def __init__(self, syntax: CallSyntax, tools: list[dict[str, Any]] | None = None) -> None:
        self.syntax = syntax
        self.tools = {name: tool for name, tool in zip(tool_names(tools), tools or [], strict=True)}
        self._buffer = ""
        self._marker: str | None = None  # the marker of the call being read ("" for a bare JSON call)
        self._seen_text = False  # something other than whitespace came before: no bare JSON call now
        self._after_call = False  # drop the whitespace between calls and after the last one
        self._closing = False  # a call was read: its end marker may follow
        self._count = 0

    def feed(self, text: str) -> list[TextDelta | ToolCallEvent]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[TextDelta | ToolCallEvent]:
        """What is left at the end of the output."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[TextDelta | ToolCallEvent]:
        out: list[TextDelta | ToolCallEvent] = []
        while self._buffer:
            if self._closing:
                stripped = self._buffer.lstrip()
                if stripped.startswith(self.syntax.end):
                    self._buffer, self._closing = stripped[len(self.syntax.end) :], False
                elif self.syntax.end.startswith(stripped) and not final:
                    break  # the end marker may be arriving
                else:
                    self._closing = False
                continue
            if self._marker is None:
                if not self._find_marker(out, final):
                    break
                continue
            try:
                calls, rest = self._take_call(self._buffer, final)
            except _Incomplete:
                if not final:
                    break
                self._text(out, self._marker + self._buffer)
                self._buffer, self._marker = "", None
                break
            except _NotACall:
                untagged = self._marker == ""
                self._text(out, self._marker + self._buffer if untagged else self._marker)
                self._buffer = "" if untagged else self._buffer
                self._marker = None
                self._seen_text = True
                continue
            for name, arguments in calls:
                out.append(ToolCallEvent(name=name, arguments=arguments, id=new_call_id(), index=self._count))
                self._count += 1
            self._buffer, self._marker, self._after_call = rest, None, True
            self._closing = bool(self.syntax.end)
        return out

    def _text(self, out: list[TextDelta | ToolCallEvent], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            self._seen_text = self._seen_text or bool(text.strip())
            out.append(TextDelta(text))

    def _find_marker(self, out: list[TextDelta | ToolCallEvent], final: bool) -> bool:
        """Text up to the next marker goes out; True when a call begins in the buffer."""
        buffer = self._buffer
        if self.syntax.leading_json and not self._seen_text and self._count == 0:
            stripped = buffer.lstrip()
            if not stripped and not final:
                return False  # only whitespace so far: a JSON call may still follow
            if stripped[:1] in ("{", "["):
                self._buffer, self._marker = stripped, ""
                return True
        found = [(buffer.find(marker), marker) for marker in self.syntax.starts if marker in buffer]
        if found:
            position, marker = min(found)
            self._text(out, buffer[:position])
            self._buffer, self._marker = buffer[position + len(marker) :], marker
            return True
        held = 0 if final else _partial_marker(buffer, self.syntax.starts)
        self._text(out, buffer[: len(buffer) - held])
        self._buffer = buffer[len(buffer) - held :]
        return False

    def _take_call(self, buffer: str, final: bool) -> tuple[list[tuple[str, dict[str, Any]]], str]:
        body = self.syntax.body
        if body == "functiongemma":
            content, rest = _until(buffer, self.syntax.end)
            return [_functiongemma_call(content)], rest
        if body == "python" and not buffer.lstrip().startswith(("{", "[")):
            content, rest = _until(buffer, self.syntax.end)
            return _python_calls(content, self.tools), rest
        if body == "mistral" and buffer.lstrip()[:1] not in ("{", "[", ""):
            return _mistral_named_call(buffer)
        end = _json_end(buffer)
        calls = _json_calls(json.loads(buffer[:end]) if _valid_json(buffer[:end]) else None)
        if self._marker == "" and any(name not in self.tools for name, _ in calls):
            raise _NotACall  # bare JSON that names no tool is an answer, not a call
        return calls, buffer[end:]


def _partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could begin a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def _until(buffer: str, end: str) -> tuple[str, str]:
    position = buffer.find(end) if end else -1
    if position < 0:
        raise _Incomplete
    return buffer[:position], buffer[position + len(end) :]


def _json_end(buffer: str) -> int:
    """Where the JSON value at the start of `buffer` (after whitespace) ends; brackets counted outside strings."""
    start = len(buffer) - len(buffer.lstrip())
    if start == len(buffer):
        raise _Incomplete
    if buffer[start] not in "{[":
        raise _NotACall
    depth, in_string, escaped = 0, False, False
    for position in range(start, len(buffer)):
        char = buffer[position]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return position + 1
    raise _Incomplete


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _json_calls(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """Calls from a JSON value: one call object or a list of them, in the shapes families write."""
    items = value if isinstance(value, list) else [value]
    calls = [_json_call(item) for item in items]
    if not calls:
        raise _NotACall
    return calls


def _json_call(item: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict):
        raise _NotACall
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}}
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _NotACall
    arguments = item.get("arguments", item.get("parameters", {}))
    return name, _arguments(arguments)


def _arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise _NotACall from None
    if arguments is None:
        return {}
    if not isinstance(arguments, dict):
        raise _NotACall
    return arguments


def _mistral_named_call(buffer: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Mistral's newer form: `name[ARGS]{...}`."""
    name, rest = _until(buffer, "[ARGS]")
    name = name.strip()
    if not re.fullmatch(r"[\w.\-]+", name):
        raise _NotACall
    end = _json_end(rest)
    try:
        arguments = json.loads(rest[:end])
    except ValueError:
        raise _NotACall from None
    return [(name, _arguments(arguments))], rest[end:]


def _python_calls(source: str, tools: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Gemma's ```tool_code``` block: Python calls (`get_weather(city="Paris")`, maybe inside print())."""
    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        raise _NotACall from None
    calls = []
    for statement in tree.body:
        node = statement.value if isinstance(statement, ast.Expr) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" and node.args:
            node = node.args[0]
        if not isinstance(node, ast.Call):
            raise _NotACall
        name = ast.unparse(node.func)
        parameters = list(((tools.get(name) or {}).get("function") or {}).get("parameters", {}).get("properties", {}))
        try:
            arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords if keyword.arg}
            for position, value in enumerate(node.args):  # positional: in the order the schema lists them
                key = parameters[position] if position < len(parameters) else f"arg{position}"
                arguments[key] = ast.literal_eval(value)
        except ValueError:
            raise _NotACall from None
        calls.append((name, arguments))
    if not calls:
        raise _NotACall
    return calls


def _functiongemma_call(content: str) -> tuple[str, dict[str, Any]]:
    """`call:name{key:value,...}`, strings between `<escape>` marks (Ollama's functiongemma parser)."""
    found = re.fullmatch(r"\s*call:([^{\s]+)\{(.*)\}\s*", content, re.DOTALL)
    if not found:
        raise _NotACall
    return found.group(1), _functiongemma_object(found.group(2))


def _functiongemma_split(text: str) -> list[str]:
    """Comma-separated parts, commas inside brackets or `<escape>` strings kept."""
    parts, current, depth, escaped, position = [], "", 0, False, 0
    while position < len(text):
        if text.startswith("<escape>", position):
            escaped = not escaped
            current += "<escape>"
            position += len("<escape>")
            continue
        char = text[position]
        if not escaped and char in "{[":
            depth += 1
        elif not escaped and char in "}]":
            depth -= 1
        if not escaped and char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
        position += 1
    if current:
        parts.append(current)
    return parts


def _functiongemma_object(text: str) -> dict[str, Any]:
    result = {}
    for part in _functiongemma_split(text):
        key, colon, value = part.partition(":")
        if colon:
            result[key.strip()] = _functiongemma_value(value)
    return result


def _functiongemma_value(value: str) -> Any:
    if value.startswith("<escape>") and value.endswith("<escape>") and len(value) >= 16:
        return value[len("<escape>") : -len("<escape>")]
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*(?:[eE][-+]?\d+)?", value):
        return float(value)
    if value.startswith("[") and value.endswith("]"):
        return [_functiongemma_value(item) for item in _functiongemma_split(value[1:-1])]
    if value.startswith("{") and value.endswith("}"):
        return _functiongemma_object(value[1:-1])
    return value


class _FunctionGemmaGrammar:
    """The grammar of one FunctionGemma call, `call:name{key:value,...}`, from the calls' schema that
    `tool_constraint` builds (one call object, or anyOf of them): keys in the schema's order, strings
    between `<escape>` marks (without `<`, so a string cannot end early), numbers and booleans bare, lists
    in brackets, objects in braces (`{}` when the schema lists no properties). Other schemas (anyOf,
    null...) take a string. Only what the parser reads back is allowed: enum values that do not survive
    the round trip are left out, and a name or key holding the syntax's own delimiters is a 400."""

    def __init__(self) -> None:
        self.rules: grammar.Grammar = {}

    def build(self, schema: dict[str, Any]) -> grammar.Grammar:
        calls = schema.get("anyOf", [schema])
        options = []
        for call in calls:
            properties = call["properties"]
            name = _functiongemma_name(properties["name"]["const"], "tool name")
            options.append(grammar.Sequence((grammar.Text(f"call:{name}"), self.object(properties["arguments"]))))
        self.rules = {"payload": grammar.Choice(tuple(options)), **self.rules}
        return self.rules

    def rule(self, expression: grammar.Expression) -> grammar.Rule:
        name = f"fg-{len(self.rules)}"
        self.rules[name] = expression
        return grammar.Rule(name)

    def value(self, schema: Any) -> grammar.Expression:
        schema = schema if isinstance(schema, dict) else {}
        kind = schema.get("type")
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            literals = [_functiongemma_literal(value) for value in values] if isinstance(values, list) else []
            kept = [text for text, value in zip(literals, values or [], strict=False) if _reads_back(text, value)]
            if kept:
                return grammar.Choice(tuple(grammar.Text(text) for text in kept))
            schema, kind = {}, None  # nothing the parser reads back as given: a string
        if kind == "integer":
            return grammar.Sequence((grammar.Optional(grammar.Text("-")), grammar.Chars("0-9", 1, 16)))
        if kind == "number":
            fraction = grammar.Optional(grammar.Sequence((grammar.Text("."), grammar.Chars("0-9", 1, 16))))
            return grammar.Sequence((grammar.Optional(grammar.Text("-")), grammar.Chars("0-9", 1, 16), fraction))
        if kind == "boolean":
            return grammar.Choice((grammar.Text("true"), grammar.Text("false")))
        if kind == "array":
            least, most = _bounds(schema.get("minItems"), schema.get("maxItems"))
            if most == 0:
                return grammar.Text("[]")
            item = self.rule(self.value(schema.get("items")))
            items: grammar.Expression = item
            if most != 1:  # llguidance refuses a repeat of at most 0
                more = grammar.Sequence((grammar.Text(","), item))
                items = grammar.Sequence(
                    (item, grammar.Repeated(more, max(least - 1, 0), None if most is None else most - 1))
                )
            return grammar.Sequence((grammar.Text("["), items if least else grammar.Optional(items), grammar.Text("]")))
        if kind == "object":
            return self.object(schema)
        text = grammar.Chars("^<", *_bounds(schema.get("minLength"), schema.get("maxLength")))
        return grammar.Sequence((grammar.Text("<escape>"), text, grammar.Text("<escape>")))

    def object(self, schema: Any) -> grammar.Rule:
        """`{key:value,...}`: the required keys always, the others optional, commas only between."""
        schema = schema if isinstance(schema, dict) else {}
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        pairs = [
            (
                grammar.Sequence((grammar.Text(f"{_functiongemma_name(key, 'argument name')}:"), self.value(value))),
                key in required,
            )
            for key, value in properties.items()
        ]
        first_required = next((index for index, (_, needed) in enumerate(pairs) if needed), None)
        if first_required is None:  # all optional: none, or any one and then those after it
            starts = [
                grammar.Sequence(
                    (
                        pair,
                        *(
                            grammar.Optional(grammar.Sequence((grammar.Text(","), later)))
                            for later, _ in pairs[index + 1 :]
                        ),
                    )
                )
                for index, (pair, _) in enumerate(pairs)
            ]
            body: list[grammar.Expression] = [grammar.Optional(grammar.Choice(tuple(starts)))] if starts else []
        else:
            body = [grammar.Optional(grammar.Sequence((pair, grammar.Text(",")))) for pair, _ in pairs[:first_required]]
            body.append(pairs[first_required][0])
            for pair, needed in pairs[first_required + 1 :]:
                after_comma = grammar.Sequence((grammar.Text(","), pair))
                body.append(after_comma if needed else grammar.Optional(after_comma))
        return self.rule(grammar.Sequence((grammar.Text("{"), *body, grammar.Text("}"))))


def functiongemma_grammar(schema: dict[str, Any]) -> grammar.Grammar:
    """The grammar of a FunctionGemma call for a Constraint's calls schema; its `payload` rule is the call."""
    return _FunctionGemmaGrammar().build(schema)


def _bounds(least: Any, most: Any) -> tuple[int, int | None]:
    """A schema's minLength/maxLength (or minItems/maxItems) as counts: a missing or invalid bound is none,
    and a maximum below the minimum is raised to it."""

    def count(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    low, high = count(least) or 0, count(most)
    return low, None if high is None else max(high, low)


# What a FunctionGemma name or key may hold: none of the call syntax's own delimiters, no spaces.
_FUNCTIONGEMMA_NAME = re.compile(r"[^:,{}\[\]<\s]+")


def _functiongemma_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _FUNCTIONGEMMA_NAME.fullmatch(name):
        raise BadRequest(
            f"tool_choice cannot be enforced for this model: FunctionGemma's call syntax cannot hold the "
            f"{what} {json.dumps(name)} (no spaces or any of : , {{ }} [ ] <)"
        )
    return name


def _reads_back(text: str, value: Any) -> bool:
    """Whether FunctionGemma's parser reads `text` back as `value`, of the same type."""
    parsed = _functiongemma_value(text)
    return type(parsed) is type(value) and parsed == value


def _functiongemma_literal(value: Any) -> str:
    if isinstance(value, str):
        return f"<escape>{value}<escape>"
    return json.dumps(value)


# --- what the inference service does with a request's tools ------------------------------------------


class ToolPlan(msgspec.Struct, kw_only=True):
    """A request's tools as the service uses them: those the template is given, the parser of the output
    (None: calls are not parsed) and the constraint the engine enforces (format, forced call, thinking)."""

    offered: list[dict[str, Any]] | None = None
    choice: str | dict[str, Any] | None = None  # "auto", "none", "required" or {"name": function}
    syntax: CallSyntax | None = None
    constraint: Constraint | None = None

    def parser(self) -> ToolCallParser | None:
        return ToolCallParser(self.syntax, self.offered) if self.syntax is not None and self.offered else None


def plan_tools(
    tools: list[dict[str, Any]] | None,
    choice: Any,
    format_: Any,
    thinking: bool,
    template: str,
    parser: str | None,
    parse: bool = True,
) -> ToolPlan:
    """`tool_choice` "none" offers no tools and parses none; "required" or a name adds the grammar of a call
    (which takes the place of `format`); a format alone is enforced from the first token, or after the
    thinking block when the model thinks. `parse` false (a model on another server) leaves parsing there."""
    choice = normalize_tool_choice(choice, tools)
    after = THINKING_END if thinking else ""
    offered = tools or None if choice != "none" else None
    syntax = call_syntax(template, parser) if offered and parse else None
    constraint = tool_constraint(syntax, offered, choice, after) if syntax is not None and offered else None
    if constraint is None and format_ is not None:
        constraint = Constraint(schema=format_, after=after)
    return ToolPlan(offered=offered, choice=choice, syntax=syntax, constraint=constraint)


async def parse_tool_calls(events: AsyncIterator[Event], parser: ToolCallParser) -> AsyncGenerator[Event]:
    """The engine's events with its text read for tool calls (other events pass as they are; what the
    parser still holds comes out before Done)."""
    async for event in events:
        if type(event) is TextDelta:
            for parsed in parser.feed(event.text):
                yield parsed
        else:
            if type(event) is Done:
                for parsed in parser.finish():
                    yield parsed
            yield event
