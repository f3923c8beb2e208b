"""POST /v1/responses, stateless, as Ollama serves it: text in, text out, streamed as OpenAI's named events.

`input` (a string or message items with input_text parts), `instructions`, `max_output_tokens`,
`temperature`, `top_p`, `text.format` (json_object, json_schema) and function `tools` become a neutral chat
request; `previous_response_id` and `conversation` need stored state and are refused.
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

from modelyard.api.http import JSON, decode_body, until_disconnect
from modelyard.api.openai.errors import OpenAIError, error_detail
from modelyard.api.openai.reasoning import think_value
from modelyard.errors import ModelyardError
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Event, TextDelta, ThinkingDelta, ToolCallEvent
from modelyard.runtime.inference import GenerationRequest
from modelyard.runtime.messages import Message
from modelyard.runtime.options import parse_keep_alive

log = logging.getLogger(__name__)
ENCODER = msgspec.json.Encoder()


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "json_schema", "schema": ...}}
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "auto", "none", "required", {"type": "function", "name"}
    previous_response_id: str | None = None
    conversation: Any = None
    options: dict[str, Any] | None = None  # Ollama's options, honoured as on chat
    keep_alive: Any = msgspec.UNSET
    reasoning: dict[str, Any] | None = None  # {"effort": ..., "summary": ...}: effort becomes `think`


def item_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError("content must be a string or a list of parts", param=param)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
            raise OpenAIError("only text parts are supported", param=param, code="unsupported_value")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def input_messages(body: ResponsesRequest) -> list[Message]:
    messages = [Message(role="system", content=body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*messages, Message(role="user", content=body.input)]
    for index, item in enumerate(body.input or []):
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else str(item.get("role", "user"))
            messages.append(Message(role=role, content=item_text(item.get("content", ""), f"input[{index}].content")))
        elif kind == "function_call_output":
            messages.append(Message(role="tool", content=str(item.get("output", ""))))
        else:
            message = f"unsupported input item type {kind!r}"
            raise OpenAIError(message, param=f"input[{index}]", code="unsupported_value")
    return messages


def text_format(body: ResponsesRequest) -> Any:
    requested = (body.text or {}).get("format") or {}
    kind = requested.get("type", "text")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        if not isinstance(requested.get("schema"), dict):
            raise OpenAIError("text.format json_schema needs a schema object", param="text.format")
        return requested["schema"]
    return None


def function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise OpenAIError("only function tools are supported", param=f"tools[{index}]", code="unsupported_value")
        function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
        converted.append({"type": "function", "function": function})
    return converted


class ResponseEncoder:
    """The response object, and the named events of its stream (each with a sequence number)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"resp_{secrets.token_hex(12)}"
        self.message_id = f"msg_{secrets.token_hex(12)}"
        self.created_at = int(time.time())
        self.sequence = 0
        self.text: list[str] = []
        self.calls: list[ToolCallEvent] = []
        self.opened = False
        # The thinking is a reasoning item before the message, its text the summary (as Ollama sends it).
        self.reasoning_id = f"rs_{secrets.token_hex(12)}"
        self.reasoning: list[str] = []
        self.reasoning_open = False

    @property
    def message_index(self) -> int:
        return 1 if self.reasoning else 0

    def reasoning_item(self) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": "".join(self.reasoning)}]
        return {"type": "reasoning", "id": self.reasoning_id, "summary": summary}

    def response(self, status: str, done: Done | None = None) -> dict[str, Any]:
        output: list[dict[str, Any]] = [self.reasoning_item()] if self.reasoning else []
        if self.text or (done is not None and not self.calls):
            content = [{"type": "output_text", "text": "".join(self.text), "annotations": []}]
            message = {"type": "message", "id": self.message_id, "status": "completed", "role": "assistant"}
            output.append({**message, "content": content})
        for call in self.calls:
            call_id = call.id or f"call_{secrets.token_hex(8)}"
            arguments = json.dumps(call.arguments)
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{call_id}",
                    "call_id": call_id,
                    "name": call.name,
                    "arguments": arguments,
                    "status": "completed",
                }  # fmt: skip
            )
        incomplete = done is not None and done.reason == "length"
        usage = None
        if done is not None:
            total = done.prompt_eval_count + done.eval_count
            usage = {"input_tokens": done.prompt_eval_count, "output_tokens": done.eval_count, "total_tokens": total}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "model": self.model,
            "output": output,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None,
            "usage": usage,
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + ENCODER.encode(body) + b"\n\n"

    def start(self) -> list[bytes]:
        pending = self.response("in_progress")
        return [self.event("response.created", response=pending), self.event("response.in_progress", response=pending)]

    def _open(self) -> list[bytes]:
        frames = self._close_reasoning()
        self.opened = True
        item = {"type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        index = self.message_index
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        return [
            *frames,
            self.event("response.output_item.added", output_index=index, item=item),
            self.event("response.content_part.added", part=part, **where),
        ]

    def _reasoning_frames(self, text: str) -> list[bytes]:
        frames = []
        where = {"item_id": self.reasoning_id, "output_index": 0, "summary_index": 0}
        if not self.reasoning_open:
            self.reasoning_open = True
            item = {"type": "reasoning", "id": self.reasoning_id, "summary": []}
            frames += [
                self.event("response.output_item.added", output_index=0, item=item),
                self.event("response.reasoning_summary_part.added", part={"type": "summary_text", "text": ""}, **where),
            ]
        self.reasoning.append(text)
        return [*frames, self.event("response.reasoning_summary_text.delta", delta=text, **where)]

    def _close_reasoning(self) -> list[bytes]:
        if not self.reasoning_open:
            return []
        self.reasoning_open = False
        item = self.reasoning_item()
        where = {"item_id": self.reasoning_id, "output_index": 0, "summary_index": 0}
        return [
            self.event("response.reasoning_summary_text.done", text=item["summary"][0]["text"], **where),
            self.event("response.reasoning_summary_part.done", part=item["summary"][0], **where),
            self.event("response.output_item.done", output_index=0, item=item),
        ]

    def frames(self, item: Event) -> list[bytes]:
        if isinstance(item, ThinkingDelta) and not self.opened:  # thinking after the answer began is dropped
            return self._reasoning_frames(item.text)
        if isinstance(item, TextDelta):
            frames = [] if self.opened else self._open()
            self.text.append(item.text)
            where = {"item_id": self.message_id, "output_index": self.message_index, "content_index": 0}
            return [*frames, self.event("response.output_text.delta", delta=item.text, **where)]
        if isinstance(item, ToolCallEvent):
            self.calls.append(item)
            return []
        if not isinstance(item, Done):
            return []
        frames = [] if self.opened else self._open()
        final = self.response("completed", item)
        where = {"item_id": self.message_id, "output_index": self.message_index, "content_index": 0}
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": []}
        frames += [
            self.event("response.output_text.done", text=text, **where),
            self.event("response.content_part.done", part=part, **where),
            self.event(
                "response.output_item.done", output_index=self.message_index, item=final["output"][self.message_index]
            ),
        ]
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return [*frames, self.event(kind, response=final)]

    def answer(self, aggregate: Aggregate) -> dict[str, Any]:
        assert aggregate.done is not None
        self.text = [aggregate.text]
        self.reasoning = [aggregate.thinking] if aggregate.thinking else []
        self.calls = aggregate.tool_calls
        return self.response("completed", aggregate.done)


async def named_events(first: Event, events: AsyncGenerator[Event], encoder: ResponseEncoder) -> AsyncIterator[bytes]:
    try:
        for frame in encoder.start():
            yield frame
        for frame in encoder.frames(first):
            yield frame
        async for item in events:
            for frame in encoder.frames(item):
                yield frame
    except ModelyardError as exc:
        detail = error_detail(exc.message, exc.status, exc)
        yield encoder.event("error", message=detail.message, code=detail.code, param=detail.param)
    except Exception as exc:
        log.exception("error while streaming")
        yield encoder.event("error", message=str(exc) or type(exc).__name__, code=None, param=None)
    finally:
        await events.aclose()


@post("/v1/responses", status_code=200)
async def responses(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, ResponsesRequest)
    if body.previous_response_id or body.conversation:
        raise OpenAIError(
            "stored responses are not supported: send the whole conversation in input",
            param="previous_response_id" if body.previous_response_id else "conversation",
            code="unsupported_parameter",
        )
    if not body.model:
        raise OpenAIError("you must provide a model parameter", param="model")
    messages = input_messages(body)
    if not any(message.role != "system" for message in messages):
        raise OpenAIError("input is required", param="input")
    options: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, **(body.options or {})}
    fields = {"num_predict": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p}
    options.update({key: value for key, value in fields.items() if value is not None})
    events = request.app.state.inference.chat(
        GenerationRequest(
            model=body.model,
            started=started,
            messages=messages,
            options=options,
            format=text_format(body),
            tools=function_tools(body.tools),
            tool_choice=body.tool_choice,
            keep_alive=parse_keep_alive(body.keep_alive),
            think=think_value(None, body.reasoning),
        )
    )
    try:
        first = await until_disconnect(request, anext(events))
    except StopAsyncIteration:
        raise ModelyardError("no response was produced") from None
    encoder = ResponseEncoder(body.model)
    if body.stream:
        stream = named_events(first, events, encoder)
        return Stream(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        aggregate = await until_disconnect(request, Aggregate.collect(first, events))
        return Response(ENCODER.encode(encoder.answer(aggregate)), media_type=JSON)
    finally:
        await events.aclose()
