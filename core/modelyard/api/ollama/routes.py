"""Ollama's REST API: its routes over the inference service, the store and the scheduler.

Generate and chat decode Ollama's request, hand a neutral GenerationRequest to the inference service, and
encode its events (encode.py) as NDJSON chunks or, with `stream: false`, as one joined answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from litestar import Request, Response, delete, get, head, post
from litestar.params import FromPath
from litestar.response import Stream

from modelyard import OLLAMA_API_VERSION
from modelyard.api.http import (
    JSON,
    NDJSON,
    decode_body,
    json_response,
    last_chunk,
    ndjson_lines,
    respond,
    until_disconnect,
)
from modelyard.api.ollama.encode import ChatEncoder, GenerateEncoder
from modelyard.api.ollama.models import describe_loaded, show_model, tags_answer
from modelyard.api.ollama.wire import (
    ChatRequest,
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    PullRequest,
    PushRequest,
    ShowRequest,
    VersionResponse,
)
from modelyard.errors import BadRequest, ModelyardError, NotFound
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.contract import Done, Event
from modelyard.runtime.inference import EmbedRequest as EmbedRequest_
from modelyard.runtime.inference import GenerationRequest, normalized
from modelyard.runtime.options import parse_keep_alive

if TYPE_CHECKING:
    from modelyard.store.registry import Registry

log = logging.getLogger(__name__)


class Encoder(Protocol):
    def chunk(self, event: Event) -> msgspec.Struct | None: ...

    def final(self, done: Done) -> msgspec.Struct: ...

    def answer(self, aggregate: Aggregate) -> msgspec.Struct: ...


async def respond_events(
    request: Request[Any, Any, Any], events: AsyncGenerator[Event], stream: bool, encoder: Encoder
) -> Response[Any]:
    """A streamed or a joined answer from the events of one generation.

    The first event is awaited here, so an error before it (bad input, unknown model, a failed load) gets
    its real status; it also starts the generator, whose `finally` then runs however the client leaves.
    """
    try:
        first = await until_disconnect(request, anext(events))
    except StopAsyncIteration:
        raise ModelyardError("no response was produced") from None
    if isinstance(first, Done) and first.reason in ("load", "unload"):
        await events.aclose()  # Ollama answers a load or unload with one JSON object even when streaming
        return json_response(encoder.final(first))
    if stream:
        return Stream(ndjson_lines(first, events, encoder.chunk), media_type=NDJSON)
    try:
        return json_response(encoder.answer(await until_disconnect(request, Aggregate.collect(first, events))))
    finally:
        await events.aclose()


def services(request: Request[Any, Any, Any]) -> Any:
    return request.app.state


def registry(request: Request[Any, Any, Any]) -> Registry:
    """The app's registry client, made on the first pull or push: httpx costs start-up time and memory."""
    state = services(request)
    if state.get("registry") is None:
        from modelyard.store.registry import Registry

        state.registry = Registry(state.store, prune=not state.settings.noprune)
    return state.registry


@get("/", media_type="text/plain; charset=utf-8")
async def root() -> str:
    return "Ollama is running"


@head("/")
async def root_head() -> Response[None]:
    return Response(None, media_type="text/plain; charset=utf-8")


@get("/api/version")
async def version() -> Response[bytes]:
    return json_response(VersionResponse(version=OLLAMA_API_VERSION))


@head("/api/version")
async def version_head() -> Response[None]:
    return Response(None, media_type=JSON)


@post("/api/generate", status_code=200)
async def generate(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, GenerateRequest)
    keep_alive = parse_keep_alive(body.keep_alive)  # Ollama checks it before anything else
    requested = body.model or ""
    events = services(request).inference.generate(
        GenerationRequest(
            model=requested,
            started=started,
            prompt=body.prompt or "",
            system=body.system,
            template=body.template,
            raw=bool(body.raw),
            suffix=body.suffix or "",
            context=body.context,
            images=body.images or [],
            options=body.options,
            format=body.format,
            think=body.think,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs,
            keep_alive=keep_alive,
            truncate=body.truncate is not False,
        )
    )
    encoder = GenerateEncoder(requested, services(request).clock)
    return await respond_events(request, events, body.stream is not False, encoder)


@post("/api/chat", status_code=200)
async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, ChatRequest)
    keep_alive = parse_keep_alive(body.keep_alive)
    requested = body.model or ""
    events = services(request).inference.chat(
        GenerationRequest(
            model=requested,
            started=started,
            messages=body.messages or [],
            options=body.options,
            format=body.format,
            tools=body.tools,
            tool_choice=body.tool_choice,
            think=body.think,
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs,
            keep_alive=keep_alive,
            truncate=body.truncate is not False,
        )
    )
    encoder = ChatEncoder(requested, services(request).clock)
    return await respond_events(request, events, body.stream is not False, encoder)


@post("/api/embed", status_code=200)
async def embed(request: Request[Any, Any, Any]) -> Response[bytes]:
    started = time.perf_counter_ns()
    body = await decode_body(request, EmbedRequest)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.model:
        raise NotFound("model '' not found")
    given = body.input
    if given is None or given == "":
        inputs: list[str] = []
    elif isinstance(given, str):
        inputs = [given]
    elif isinstance(given, list) and all(isinstance(item, str) for item in given):
        inputs = given
    else:
        raise BadRequest("invalid input type")
    if body.dimensions is not None and body.dimensions < 0:
        raise BadRequest("dimensions must be a positive number")
    result = await until_disconnect(
        request,
        services(request).inference.embed(
            EmbedRequest_(
                model=body.model,
                started=started,
                inputs=inputs,
                truncate=body.truncate is not False,
                options=body.options,
                keep_alive=keep_alive,
            )
        ),
    )
    vectors = [normalized(vector, body.dimensions) for vector in result.vectors]
    return json_response(
        EmbedResponse(
            model=body.model,
            embeddings=vectors,
            total_duration=result.total_duration,
            load_duration=result.load_duration,
            prompt_eval_count=result.prompt_eval_count,
        )
    )


@post("/api/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The legacy endpoint: one prompt, its vector as the engine gives it (not normalised)."""
    started = time.perf_counter_ns()
    body = await decode_body(request, EmbeddingRequest)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.model:
        raise BadRequest("model is required")
    request_ = EmbedRequest_(
        model=body.model,
        started=started,
        inputs=[body.prompt] if body.prompt else [],
        options=body.options,
        keep_alive=keep_alive,
    )
    result = await until_disconnect(request, services(request).inference.embed(request_))
    return json_response(EmbeddingResponse(embedding=result.vectors[0] if result.vectors else []))


@get("/api/tags")
async def tags(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = services(request)
    # Clients poll this every few seconds: the encoded answer is reused while nothing changed.
    state.tags_answer = await tags_answer(state.catalog, state.get("tags_answer"))
    return Response(state.tags_answer.body, media_type=JSON)


@head("/api/tags")
async def tags_head() -> Response[None]:
    return Response(None, media_type=JSON)


@post("/api/show", status_code=200)
async def show(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await decode_body(request, ShowRequest)
    catalog = services(request).catalog
    return json_response(await asyncio.to_thread(show_model, catalog, body.model or body.name, bool(body.verbose)))


@post("/api/create", status_code=200)
async def create(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await decode_body(request, CreateRequest)
    chunks = services(request).management.create(body)
    return await respond(request, chunks, body.stream is not False, last_chunk)


@post("/api/pull", status_code=200)
async def pull(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await decode_body(request, PullRequest)
    chunks = registry(request).pull(body.model or body.name, bool(body.insecure))
    return await respond(request, chunks, body.stream is not False, last_chunk)


@post("/api/push", status_code=200)
async def push(request: Request[Any, Any, Any]) -> Response[Any]:
    body = await decode_body(request, PushRequest)
    chunks = registry(request).push(body.model or body.name, bool(body.insecure))
    return await respond(request, chunks, body.stream is not False, last_chunk)


@post("/api/copy", status_code=200)
async def copy(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await decode_body(request, CopyRequest)
    await asyncio.to_thread(services(request).management.copy, body.source, body.destination)
    return Response(b"", media_type=JSON)


@delete("/api/delete", status_code=200)
async def delete_model(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await decode_body(request, DeleteRequest)
    await services(request).management.delete(body.model or body.name)
    return Response(b"", media_type=JSON)


@head("/api/blobs/{digest:str}")
async def blob_head(request: Request[Any, Any, Any], digest: FromPath[str]) -> Response[None]:
    exists = await asyncio.to_thread(services(request).management.blob_exists, digest)
    return Response(None, status_code=200 if exists else 404, media_type=JSON)


@post("/api/blobs/{digest:str}", status_code=201, request_max_body_size=None)  # models are large
async def blob_upload(request: Request[Any, Any, Any], digest: FromPath[str]) -> Response[bytes]:
    created = await services(request).management.receive_blob(digest, request.stream())
    return Response(b"", status_code=201 if created else 200, media_type=JSON)


@get("/api/ps")
async def ps(request: Request[Any, Any, Any]) -> Response[bytes]:
    return json_response(describe_loaded(services(request).scheduler))


ROUTES = [
    root,
    root_head,
    version,
    version_head,
    generate,
    chat,
    embed,
    embeddings,
    tags,
    tags_head,
    show,
    ps,
    create,
    pull,
    push,
    copy,
    delete_model,
    blob_head,
    blob_upload,
]
