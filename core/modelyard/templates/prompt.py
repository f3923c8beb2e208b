"""Prompts from Ollama's Go templates (a Modelfile TEMPLATE, or generate's `template` field).

Ollama gives a template `.System`, `.Prompt`, `.Response`, `.Suffix`, `.Messages`, `.Tools` and the think
fields. A template that reads `.Messages` renders once with the whole conversation (consecutive messages of
one role merged, as Ollama's collate does); an older one that only knows `.System`/`.Prompt`/`.Response`
renders once per turn, earlier answers filled in, and the last turn is cut after `{{ .Response }}`, so a
conversation that ends with an assistant message is continued rather than answered anew.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from modelyard.errors import InternalError
from modelyard.runtime.contract import INSERT, THINKING, TOOLS
from modelyard.runtime.messages import Message
from modelyard.runtime.thinking import template_tags
from modelyard.templates.gotemplate import GoTemplate, GoTemplateError

if TYPE_CHECKING:
    from modelyard.runtime.contract import Backend, ModelView

# Ollama's template.Vars: identifiers a template reads, whatever their letter case.
_IDENTIFIER = re.compile(r"\.(\w+)")


def template_fields(source: str) -> set[str]:
    """Lower-cased names of the fields a Go template reads (`.Messages` -> "messages")."""
    return {name.lower() for name in _IDENTIFIER.findall(source)}


def template_capabilities(source: str) -> set[str]:
    """What Ollama derives from a model's Go template: tools from `.Tools`, insert from `.Suffix`, thinking
    from `.Think` or a pair of thinking tags (runtime/thinking.py)."""
    fields = template_fields(source)
    found = {capability for capability, field in ((TOOLS, "tools"), (INSERT, "suffix")) if field in fields}
    if template_tags(source) is not None:
        found.add(THINKING)
    return found


def model_capabilities(model: ModelView, backend: Backend) -> frozenset[str]:
    """The backend's capabilities for the model, with tools and insert decided by the model's Go template when
    it has one: that template builds the prompt, so it decides what the prompt can carry. Thinking comes from
    the template too, or from a backend whose engine separates thinking itself."""
    found = set(backend.capabilities(model))
    if model.template is not None:
        found = (found - {TOOLS, INSERT}) | template_capabilities(model.template)
    return frozenset(found)


class GoStruct:
    """A JSON object seen through Go field names (`.Function.Name` reads `function.name`).

    It prints as its JSON, as Ollama's api.Tool and tool call arguments do (their String methods marshal).
    """

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
        value = self._value.get(snake)
        return GoStruct(value) if isinstance(value, dict) else value

    def __go_json__(self) -> dict[str, Any]:
        return self._value


class GoMap(dict):
    """Tool call arguments: a Go `map[string]any` (range, index, len work) that prints as its JSON."""

    def __go_json__(self) -> dict[str, Any]:
        return dict(self)


class GoList(list):
    """A list that prints as JSON, as Ollama's api.Tools does (`<tools>{{ .Tools }}</tools>`)."""

    def __go_json__(self) -> list[Any]:
        return list(self)


def _go_message(message: Message) -> dict[str, Any]:
    calls = [
        {
            "ID": call.id or "",
            "Function": {
                "Index": call.function.index,
                "Name": call.function.name,
                "Arguments": GoMap(call.function.arguments or {}),
            },
        }
        for call in (message.tool_calls or [])
    ]
    return {
        "Role": message.role,
        "Content": message.content,
        "Thinking": message.thinking or "",
        "Images": message.images or None,
        "ToolCalls": calls or None,
        "ToolName": message.tool_name or "",
        "ToolCallID": message.tool_call_id or "",
    }


def _go_tools(tools: list[dict[str, Any]] | None) -> GoList | None:
    return GoList(GoStruct(tool) for tool in tools) if tools else None


def collate(messages: list[Message]) -> tuple[str, list[Message]]:
    """Ollama's collate: the system messages joined, and consecutive messages of one role (tool results
    apart) merged into one."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role and message.role != "tool":
            previous = merged[-1]
            merged[-1] = msgspec.structs.replace(
                previous,
                content=previous.content + "\n\n" + message.content,
                images=(previous.images or []) + (message.images or []) or UNSET,
                tool_calls=(previous.tool_calls or []) + (message.tool_calls or []) or UNSET,
            )
        else:
            merged.append(message)
    return system, merged


def render_go_template(
    source: str,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    suffix: str = "",
    *,
    think: bool | str | None = None,
    think_set: bool | str | None = None,
) -> str:
    """`think` is the value in force (a level counts as true); `think_set` what the request said, for
    `.IsThinkSet` (false when the model's default applies)."""
    try:
        template = GoTemplate(source)
    except GoTemplateError as exc:
        raise InternalError(str(exc)) from exc
    base = {
        "Response": "",
        "Suffix": suffix,
        "Tools": _go_tools(tools),
        "Think": think not in (None, False),
        "ThinkLevel": think if isinstance(think, str) else "",
        "IsThinkSet": think_set is not None,
    }
    system, collated = collate(messages)
    fields = template_fields(source)
    try:
        if "messages" in fields:
            last_user = next((m.content for m in reversed(collated) if m.role == "user"), "")
            return template.render(
                {**base, "System": system, "Prompt": last_user, "Messages": [_go_message(m) for m in collated]}
            )
        return _render_turns(template, "response" in fields, collated, base)
    except GoTemplateError as exc:
        raise InternalError(str(exc)) from exc


def _render_turns(template: GoTemplate, reads_response: bool, messages: list[Message], base: dict[str, Any]) -> str:
    """A template without .Messages, as Ollama's Execute runs it: one rendering per finished turn, then the
    last turn with everything after {{ .Response }} cut (Ollama appends that action to a template that lacks it)."""
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def render_turn() -> None:
        parts.append(template.render({**base, **turn, "Messages": None}) + ("" if reads_response else turn["Response"]))
        turn.update(System="", Prompt="", Response="")

    for message in messages:
        if message.role == "system":
            if turn["Prompt"] or turn["Response"]:
                render_turn()
            turn["System"] = message.content
        elif message.role == "user":
            if turn["Response"]:
                render_turn()
            turn["Prompt"] = message.content
        elif message.role == "assistant":
            turn["Response"] = message.content
    if reads_response:
        parts.append(template.cut_after_field("Response").render({**base, **turn, "Messages": None}))
    else:
        parts.append(template.render({**base, **turn, "Response": "", "Messages": None}) + turn["Response"])
    return "".join(parts)
