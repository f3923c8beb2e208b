"""POST /v1/messages in Anthropic's format, over the same inference service as the other APIs.

The request becomes a neutral chat `GenerationRequest`; the events become one `message` or Anthropic's
named server-sent events (`message_start`, `content_block_start`, `content_block_delta`,
`content_block_stop`, `message_delta`, `message_stop`). The API key (`x-api-key`) and `anthropic-version`
headers are accepted and not checked, as Ollama does.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from modelyard.api.anthropic.errors import error_body
from modelyard.api.anthropic.wire import InputMessage, Message, MessagesRequest, Usage
from modelyard.api.http import decode_body, json_response, until_disconnect
from modelyard.errors import BadRequest, ModelyardError
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Event, TextDelta, ThinkingDelta, ToolCallEvent
from modelyard.runtime.inference import GenerationRequest
from modelyard.runtime.messages import Message as RuntimeMessage
from modelyard.runtime.messages import ToolCall, ToolCallFunction

log = logging.getLogger(__name__)
ENCODER = msgspec.json.Encoder()


def stop_reason(done: Done, tool_use: bool) -> str:
    if tool_use and done.reason == "stop":
        return "tool_use"
    if done.reason == "stop" and done.stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if done.reason == "length" else "end_turn"


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n".join(str(block.get("text", "")) for block in system if block.get("type") == "text")


def runtime_messages(body: MessagesRequest) -> list[RuntimeMessage]:
    """Anthropic's messages as the runtime's: text joined, base64 images kept, tool use and results mapped."""
    converted: list[RuntimeMessage] = []
    if system := system_text(body.system):
        converted.append(RuntimeMessage(role="system", content=system))
    tool_names: dict[str, str] = {}
    for index, message in enumerate(body.messages or []):
        converted.extend(message_blocks(message, index, tool_names))
    return converted


def message_blocks(message: InputMessage, index: int, tool_names: dict[str, str]) -> list[RuntimeMessage]:
    if isinstance(message.content, str):
        return [RuntimeMessage(role=message.role, content=message.content)]
    texts: list[str] = []
    images: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    results: list[RuntimeMessage] = []
    for block in message.content:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") != "base64":
                raise BadRequest(f"messages.{index}: only base64 images are supported")
            images.append(str(source.get("data", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            name = str(block.get("name", ""))
            tool_names[str(block.get("id", ""))] = name
            calls.append(
                ToolCall(
                    id=str(block.get("id", "")),
                    function=ToolCallFunction(name=name, arguments=block.get("input") or {}),
                )
            )
        elif kind == "tool_result":
            content = block.get("content", "")
            if isinstance(content, list):
                content = "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
            result = RuntimeMessage(role="tool", content=str(content), tool_call_id=str(block.get("tool_use_id", "")))
            if tool_name := tool_names.get(str(block.get("tool_use_id", ""))):
                result.tool_name = tool_name
            results.append(result)
        else:
            raise BadRequest(f"messages.{index}: unsupported content block type {kind!r}")
    converted = list(results)
    if texts or images or thinking or calls or not results:
        message_out = RuntimeMessage(role=message.role, content="\n".join(texts))
        if images:
            message_out.images = images
        if thinking:
            message_out.thinking = "\n".join(thinking)
        if calls:
            message_out.tool_calls = calls
        converted.append(message_out)
    return converted


def runtime_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic's tools ({name, description, input_schema}) as function tools."""
    if not tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def event(name: str, body: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + ENCODER.encode(body) + b"\n\n"


class MessageEncoder:
    """Anthropic's named stream events from neutral events: one content block per run of text, thinking,
    or per tool call."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"msg_{secrets.token_hex(12)}"
        self.index = -1
        self.open_kind: str | None = None
        self.tool_use = False

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + event("ping", {"type": "ping"})

    def _close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self.index += 1
        self.open_kind = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [*frames, event("content_block_start", start)]

    def frames(self, item: Event) -> list[bytes]:
        if isinstance(item, TextDelta | ThinkingDelta):
            kind = "text" if isinstance(item, TextDelta) else "thinking"
            frames = [] if self.open_kind == kind else self._open(kind, {"type": kind, kind: ""})
            delta = (
                {"type": "text_delta", "text": item.text}
                if kind == "text"
                else {"type": "thinking_delta", "thinking": item.text}
            )
            return [
                *frames,
                event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}),
            ]
        if isinstance(item, ToolCallEvent):
            self.tool_use = True
            block = {
                "type": "tool_use",
                "id": item.id or f"toolu_{secrets.token_hex(8)}",
                "name": item.name,
                "input": {},
            }
            delta = {"type": "input_json_delta", "partial_json": json.dumps(item.arguments)}
            frames = self._open("tool_use", block)
            frames.append(
                event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
            )
            return [*frames, *self._close()]
        if isinstance(item, Done):
            ending: dict[str, Any] = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(item, self.tool_use), "stop_sequence": item.stop_sequence},
                "usage": {"input_tokens": item.prompt_eval_count, "output_tokens": item.eval_count},
            }
            return [*self._close(), event("message_delta", ending), event("message_stop", {"type": "message_stop"})]
        return []  # log probabilities have no place here

    def answer(self, aggregate: Aggregate) -> Message:
        assert aggregate.done is not None
        content: list[dict[str, Any]] = []
        if aggregate.thinking:
            content.append({"type": "thinking", "thinking": aggregate.thinking, "signature": ""})
        if aggregate.text or not aggregate.tool_calls:
            content.append({"type": "text", "text": aggregate.text})
        for call in aggregate.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id or f"toolu_{secrets.token_hex(8)}",
                    "name": call.name,
                    "input": call.arguments,
                }
            )
        return Message(
            id=self.id,
            model=self.model,
            content=content,
            stop_reason=stop_reason(aggregate.done, bool(aggregate.tool_calls)),
            stop_sequence=aggregate.done.stop_sequence,
            usage=Usage(input_tokens=aggregate.done.prompt_eval_count, output_tokens=aggregate.done.eval_count),
        )


async def named_events(first: Event, events: AsyncGenerator[Event], encoder: MessageEncoder) -> AsyncIterator[bytes]:
    """The stream body; an error after it opened becomes Anthropic's `error` event."""
    try:
        yield encoder.start()
        for frame in encoder.frames(first):
            yield frame
        async for item in events:
            for frame in encoder.frames(item):
                yield frame
    except ModelyardError as exc:
        yield event("error", msgspec.to_builtins(error_body(exc.message, exc.status)))
    except Exception as exc:
        log.exception("error while streaming")
        yield event("error", msgspec.to_builtins(error_body(str(exc) or type(exc).__name__, 500)))
    finally:
        await events.aclose()


@post("/v1/messages", status_code=200)
async def messages(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, MessagesRequest)
    if not body.model:
        raise BadRequest("model: field required")
    if body.max_tokens is None:
        raise BadRequest("max_tokens: field required")
    if body.max_tokens < 1:
        raise BadRequest("max_tokens: must be at least 1")
    if not body.messages:
        raise BadRequest("messages: at least one message is required")
    options: dict[str, Any] = {"num_predict": body.max_tokens}
    fields = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k, "stop": body.stop_sequences}
    options.update({key: value for key, value in fields.items() if value is not None})
    thinking = body.thinking or {}
    events = request.app.state.inference.chat(
        GenerationRequest(
            model=body.model,
            started=started,
            messages=runtime_messages(body),
            options=options,
            tools=runtime_tools(body.tools),
            tool_choice=body.tool_choice,  # {"type": "auto" | "any" | "none" | "tool", "name": ...}
            think={"enabled": True, "disabled": False}.get(str(thinking.get("type"))),
            think_optional=True,  # as Ollama: a model that cannot think answers without, not with a 400
        )
    )
    try:
        first = await until_disconnect(request, anext(events))
    except StopAsyncIteration:
        raise ModelyardError("no response was produced") from None
    encoder = MessageEncoder(body.model)
    if body.stream:
        return Stream(
            named_events(first, events, encoder), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    try:
        return json_response(encoder.answer(await until_disconnect(request, Aggregate.collect(first, events))))
    finally:
        await events.aclose()


ROUTES = [messages]
