"""OpenAI's reasoning fields as Ollama reads them: `reasoning_effort` (chat) and `reasoning.effort` (chat and
responses) become the runtime's `think`."""

from __future__ import annotations

from typing import Any

from modelyard.api.openai.errors import OpenAIError

# reasoning_effort as Ollama maps it onto `think`.
REASONING_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_value(effort: str | None, reasoning: dict[str, Any] | None = None) -> bool | str | None:
    """`think` from `reasoning_effort`, or else `reasoning.effort`; None when neither is given."""
    param = "reasoning_effort"
    if effort is None and reasoning is not None:
        effort, param = reasoning.get("effort"), "reasoning.effort"
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in REASONING_EFFORTS:
        raise OpenAIError(f"invalid reasoning value: {effort!r}", param=param, code="invalid_value")
    return REASONING_EFFORTS[effort]
