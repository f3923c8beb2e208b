"""Prompts from Ollama's Go templates (a Modelfile TEMPLATE, or generate's `template` field).

Ollama gives a template `.System`, `.Prompt`, `.Response`, `.Suffix`, `.Messages`, `.Tools` and the think
fields. A template that reads `.Messages` renders once with the whole conversation; an older one that only
knows `.System`/`.Prompt`/`.Response` renders once per user turn, earlier answers filled in, as Ollama does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import InternalError
from .gotemplate import GoTemplate, GoTemplateError
from .wire import Message


def _go_message(message: Message) -> dict[str, Any]:
    calls = [
        {"ID": call.id or "", "Function": {"Index": call.function.index, "Name": call.function.name, "Arguments": call.function.arguments}}
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


def _go_tools(tools: list[dict[str, Any]] | None) -> list[Any] | None:
    """Tools as Go structs would print: field access by Go name, `json` gives the wire JSON."""
    return [_GoObject(tool) for tool in tools] if tools else None


class _GoObject:
    """A JSON object seen through Go field names (`.Function.Name` reads `function.name`)."""

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
        value = self._value.get(snake)
        return _GoObject(value) if isinstance(value, dict) else value

    def __str__(self) -> str:
        return msgspec.json.encode(self._value).decode()


def render_go_template(
    source: str, messages: list[Message], tools: list[dict[str, Any]] | None = None, suffix: str = ""
) -> str:
    try:
        template = GoTemplate(source)
    except GoTemplateError as exc:
        raise InternalError(str(exc)) from exc
    base = {"Response": "", "Suffix": suffix, "Tools": _go_tools(tools), "Think": False, "ThinkLevel": "", "IsThinkSet": False}
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    try:
        if ".Messages" in source:
            last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
            return template.render({**base, "System": system, "Prompt": last_user, "Messages": [_go_message(m) for m in messages]})
        # A template without .Messages: one rendering per user turn, earlier answers filled in.
        turns: list[tuple[str, str]] = []
        for message in messages:
            if message.role == "user":
                turns.append((message.content, ""))
            elif message.role == "assistant" and turns and not turns[-1][1]:
                turns[-1] = (turns[-1][0], message.content)
        if not turns:
            turns = [("", "")]
        parts = []
        for index, (prompt, response) in enumerate(turns):
            last = index == len(turns) - 1
            parts.append(
                template.render({**base, "System": system if index == 0 else "", "Prompt": prompt, "Response": "" if last else response, "Messages": None})
            )
        return "".join(parts)
    except GoTemplateError as exc:
        raise InternalError(str(exc)) from exc
