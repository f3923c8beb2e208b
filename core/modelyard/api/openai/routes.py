"""OpenAI's API under /v1, over the same inference service as the Ollama API.

Each route decodes OpenAI's request into a neutral `GenerationRequest` (OpenAI's fields mapped onto
Ollama's options as Ollama maps them; Ollama's `options`, `num_ctx` included, honoured too), and encodes
the service's events as server-sent events ending in `data: [DONE]`, or, with `stream: false`, as one
object made from the runtime's Aggregate. Errors use OpenAI's envelope (errors.py; api/http.py picks it
for every path under /v1/).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from modelyard.api.http import decode_body, json_response, until_disconnect
from modelyard.api.openai.encode import ChatEncoder, CompletionEncoder
from modelyard.api.openai.errors import ErrorBody, OpenAIError, error_detail
from modelyard.api.openai.reasoning import think_value
from modelyard.api.openai.responses import responses
from modelyard.api.openai.wire import (
    ChatCompletionRequest,
    ChatMessage,
    ChatToolCall,
    CompletionRequest,
    EmbeddingList,
    EmbeddingObject,
    EmbeddingsRequest,
    EmbeddingsUsage,
    ModelList,
    ModelObject,
    SamplingFields,
)
from modelyard.errors import BadRequest, ModelyardError, NotFound
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.contract import Event, ModelView
from modelyard.runtime.inference import EmbedRequest, GenerationRequest, normalized
from modelyard.runtime.messages import Message, ToolCall, ToolCallFunction
from modelyard.runtime.options import parse_keep_alive
from modelyard.store.local import StoredModel
from modelyard.store.names import ModelName, strip_source

log = logging.getLogger(__name__)

SSE = "text/event-stream"
ENCODER = msgspec.json.Encoder()


def services(request: Request[Any, Any, Any]) -> Any:
    return request.app.state


# --- requests into neutral ones -----------------------------------------------------------------------


def check_supported(body: SamplingFields) -> None:
    """Fields that would change the answer and cannot be honoured: OpenAI's 400 naming the field."""
    if body.n is not None and body.n != 1:
        raise OpenAIError(
            f"n={body.n} is not supported: modelyard returns one choice per request (n=1)",
            param="n",
            code="unsupported_value",
        )
    if body.logit_bias:
        raise OpenAIError("logit_bias is not supported", param="logit_bias", code="unsupported_parameter")


def sampling_options(body: SamplingFields, max_tokens: int | None) -> dict[str, Any]:
    """Ollama's options from OpenAI's fields: Ollama's `options` first, OpenAI's own fields over them.

    As in Ollama, temperature and top_p default to OpenAI's 1.0 (over the model's PARAMETERs).
    """
    options: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, **(body.options or {})}
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    fields = {
        "num_predict": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        "stop": stop,
    }
    options.update({key: value for key, value in fields.items() if value is not None})
    return options


def response_format(body: ChatCompletionRequest) -> Any:
    """`response_format` as the runtime's format: "json", a JSON Schema, or None (enforced by grammar)."""
    requested = body.response_format
    if requested is None or requested.type == "text":
        return None
    if requested.type == "json_object":
        return "json"
    if requested.type == "json_schema":
        schema = (requested.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise OpenAIError(
                "response_format json_schema needs a JSON Schema object in json_schema.schema",
                param="response_format",
            )
        return schema
    raise OpenAIError(
        f"Invalid value for 'response_format.type' = {requested.type}. "
        "Supported values: ['text', 'json_object', 'json_schema'].",
        param="response_format",
        code="invalid_value",
    )


def tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """OpenAI's tool_choice as the runtime's: "auto", "none", "required" or {"name": function}."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise OpenAIError("tool_choice must name a function", param="tool_choice")
        return {"name": name}
    return choice


def content_parts(message: ChatMessage, index: int) -> tuple[str, list[str]]:
    """A message's text and its base64 images (OpenAI's content parts: text and image_url data URLs)."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
                raise OpenAIError(
                    "image URLs are not currently supported, please use base64 encoded data instead",
                    param=f"messages[{index}].content",
                )
            images.append(url.split(";base64,", 1)[1])
        else:
            raise OpenAIError(f"unsupported content part type: {kind!r}", param=f"messages[{index}].content")
    return "\n".join(texts), images


def tool_call_in(call: ChatToolCall, param: str) -> ToolCall:
    """An earlier answer's tool call, its JSON-text arguments parsed into the object the runtime keeps."""
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise OpenAIError("invalid tool call arguments", param=param) from None
    if not isinstance(arguments, dict):
        raise OpenAIError("invalid tool call arguments", param=param)
    function = ToolCallFunction(name=call.function.name, arguments=arguments)
    return ToolCall(id=call.id or msgspec.UNSET, function=function)


def runtime_messages(messages: list[ChatMessage]) -> list[Message]:
    """OpenAI's messages as the runtime's (Ollama's shape): tool-call arguments parsed, tool results named."""
    tool_names: dict[str, str] = {}  # tool_call_id -> function name, for the tool messages that answer
    converted = []
    for index, message in enumerate(messages):
        text, images = content_parts(message, index)
        role = "system" if message.role == "developer" else message.role
        result = Message(role=role, content=text)
        if images:
            result.images = images
        if message.reasoning:
            result.thinking = message.reasoning
        if message.tool_calls:
            result.tool_calls = [tool_call_in(call, f"messages[{index}].tool_calls") for call in message.tool_calls]
            tool_names.update({call.id: call.function.name for call in message.tool_calls if call.id})
        if role == "tool":
            name = tool_names.get(message.tool_call_id or "") or message.name
            if name:
                result.tool_name = name
            if message.tool_call_id:
                result.tool_call_id = message.tool_call_id
        converted.append(result)
    return converted


# --- answers ---------------------------------------------------------------------------------------


def frame(body: msgspec.Struct) -> bytes:
    return b"data: " + ENCODER.encode(body) + b"\n\n"


async def server_sent_events(
    first: Event,
    events: AsyncGenerator[Event],
    chunks: Callable[[Event], list[Any]],
    opening: msgspec.Struct | None,
) -> AsyncIterator[bytes]:
    """The stream body: `data: {chunk}` events, then `data: [DONE]`; an error after the response opened
    becomes a last `data: {"error": ...}` event (the SDK raises it), without [DONE]."""
    try:
        if opening is not None:
            yield frame(opening)
        for chunk in chunks(first):
            yield frame(chunk)
        async for event in events:
            for chunk in chunks(event):
                yield frame(chunk)
        yield b"data: [DONE]\n\n"
    except ModelyardError as exc:
        yield frame(ErrorBody(error=error_detail(exc.message, exc.status, exc)))
    except Exception as exc:
        log.exception("error while streaming")
        yield frame(ErrorBody(error=error_detail(str(exc) or type(exc).__name__, 500)))
    finally:
        await events.aclose()


async def respond(
    request: Request[Any, Any, Any],
    events: AsyncGenerator[Event],
    stream: bool,
    encoder: ChatEncoder | CompletionEncoder,
) -> Response[Any]:
    """Server-sent events or one object. The first event is awaited before the response opens, so an
    error before it (an unknown model, a bad option, a failed load) keeps its status."""
    try:
        first = await until_disconnect(request, anext(events))
    except StopAsyncIteration:
        raise ModelyardError("no response was produced") from None
    if stream:
        opening = encoder.opening() if isinstance(encoder, ChatEncoder) else None
        body = server_sent_events(first, events, encoder.chunks, opening)
        return Stream(body, media_type=SSE, headers={"Cache-Control": "no-cache"})
    try:
        return json_response(encoder.answer(await until_disconnect(request, Aggregate.collect(first, events))))
    finally:
        await events.aclose()


# --- routes ----------------------------------------------------------------------------------------


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, ChatCompletionRequest)
    check_supported(body)
    if not body.messages:
        raise OpenAIError("[] is too short - 'messages'", param="messages")
    if not body.model:
        raise OpenAIError("you must provide a model parameter", param="model")
    events = services(request).inference.chat(
        GenerationRequest(
            model=body.model,
            started=started,
            messages=runtime_messages(body.messages),
            options=sampling_options(body, body.max_completion_tokens or body.max_tokens),
            format=response_format(body),
            tools=body.tools or None,
            tool_choice=tool_choice(body.tool_choice),
            think=think_value(body.reasoning_effort, body.reasoning),
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs,
            keep_alive=parse_keep_alive(body.keep_alive),
        )
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(request, events, bool(body.stream), ChatEncoder(body.model, include_usage))


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, CompletionRequest)
    check_supported(body)
    if body.best_of is not None and body.best_of != 1:
        raise OpenAIError("best_of is not supported (one completion per request)", param="best_of")
    if body.echo:
        raise OpenAIError("echo is not supported", param="echo", code="unsupported_parameter")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) > 1:
            raise OpenAIError("one prompt per request is supported", param="prompt", code="unsupported_value")
        prompt = prompt[0] if prompt else ""
    if not body.model:
        raise OpenAIError("you must provide a model parameter", param="model")
    logprobs = body.logprobs
    if logprobs is not None and not 0 <= logprobs <= 5:  # OpenAI's bound for completions
        raise OpenAIError("logprobs must be between 0 and 5", param="logprobs", code="invalid_value")
    events = services(request).inference.generate(
        GenerationRequest(
            model=body.model,
            started=started,
            prompt=prompt or "",
            suffix=body.suffix or "",
            options=sampling_options(body, body.max_tokens),
            logprobs=logprobs is not None,
            top_logprobs=logprobs or None,
            keep_alive=parse_keep_alive(body.keep_alive),
        )
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    encoder = CompletionEncoder(body.model, include_usage, top_logprobs=bool(logprobs))
    return await respond(request, events, bool(body.stream), encoder)


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes]:
    started = time.perf_counter_ns()
    body = await decode_body(request, EmbeddingsRequest)
    if not body.model:
        raise OpenAIError("you must provide a model parameter", param="model")
    given = body.input
    if isinstance(given, str):
        inputs = [given]
    elif isinstance(given, list) and given and all(isinstance(item, str) for item in given):
        inputs = given
    else:
        raise OpenAIError("invalid input: give a string or a list of strings", param="input")
    encoding = (body.encoding_format or "float").lower()
    if encoding not in ("float", "base64"):
        raise OpenAIError(
            f"Invalid value for 'encoding_format' = {body.encoding_format}. Supported values: ['float', 'base64'].",
            param="encoding_format",
            code="invalid_value",
        )
    if body.dimensions is not None and body.dimensions < 1:
        raise OpenAIError("dimensions must be at least 1", param="dimensions", code="invalid_value")
    embed_request = EmbedRequest(
        model=body.model,
        started=started,
        inputs=inputs,
        options=body.options,
        keep_alive=parse_keep_alive(body.keep_alive),
    )
    result = await until_disconnect(request, services(request).inference.embed(embed_request))
    data = []
    for index, vector in enumerate(result.vectors):
        values = normalized(vector, body.dimensions)
        encoded: list[float] | str = values
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append(EmbeddingObject(embedding=encoded, index=index))
    usage = EmbeddingsUsage(prompt_tokens=result.prompt_eval_count, total_tokens=result.prompt_eval_count)
    return json_response(EmbeddingList(data=data, model=body.model, usage=usage))


def model_object(catalog: ModelCatalog, requested: str) -> ModelObject | None:
    found = catalog.lookup(requested)
    if found is None:
        return None
    name = ModelName.parse(strip_source(requested))
    created = int(found.modified_at.timestamp()) if isinstance(found, StoredModel) else 0  # offered: no file
    view = found.view if isinstance(found, StoredModel) else found
    return ModelObject(id=requested, created=created, owned_by=name.namespace, **_remote_fields(view))


def _remote_fields(view: ModelView) -> dict[str, str]:
    return {} if view.remote is None else {"remote_model": view.remote.model, "remote_host": view.remote.host}


def list_models(catalog: ModelCatalog) -> ModelList:
    listed = [
        ModelObject(
            id=model.name.display,
            created=int(model.modified_at.timestamp()),
            owned_by=model.name.namespace,
            **_remote_fields(model.view),
        )
        for model in catalog.store.list()
    ]
    for view in catalog.offered():
        name = ModelName.parse(view.name)
        listed.append(ModelObject(id=name.display, created=0, owned_by=view.source, **_remote_fields(view)))
    return ModelList(data=listed)


@get("/v1/models")
async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
    return json_response(await asyncio.to_thread(list_models, services(request).catalog))


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[bytes]:
    requested = model.lstrip("/")
    try:
        found = await asyncio.to_thread(model_object, services(request).catalog, requested)
    except BadRequest:  # a name no model could have
        found = None
    if found is None:
        raise NotFound(f"model '{requested}' not found")
    return json_response(found)


ROUTES = [chat_completions, completions, embeddings, responses, models, retrieve_model]
