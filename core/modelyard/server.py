"""The Litestar app: Ollama's routes, its error bodies and its NDJSON streaming."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, delete, get, head, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.params import FromPath
from litestar.response import Stream

from modelyard import OLLAMA_API_VERSION, __version__
from modelyard.api.guard import guard_middleware
from modelyard.api.ollama.models import describe_loaded, show_model, tags_answer
from modelyard.api.ollama.wire import (
    ChatRequest,
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    ErrorResponse,
    GenerateRequest,
    PullRequest,
    PushRequest,
    ShowRequest,
    VersionResponse,
)
from modelyard.config import Settings
from modelyard.errors import BadRequest, Canceled, ModelyardError
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.inference import Inference, merge_chat, merge_generate
from modelyard.runtime.plugins import Backends, build_plugin_manager
from modelyard.runtime.scheduler import Scheduler
from modelyard.store.bundled import install_bundled_models
from modelyard.store.formats import Formats
from modelyard.store.gguf import GGUFError
from modelyard.store.local import ModelStore
from modelyard.store.manage import Management

if TYPE_CHECKING:
    from modelyard.store.registry import Registry

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
T = TypeVar("T")
Body = TypeVar("Body", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()


def json_response(body: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type=JSON)


def error_response(message: str, status: int) -> Response[bytes]:
    return json_response(ErrorResponse(error=message), status)


async def decode_body(request: Request[Any, Any, Any], body_type: type[Body]) -> Body:
    """The request body as `body_type`, whatever its Content-Type, with Ollama's 400s."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("missing request body")
    if raw.strip() == b"null":  # Go decodes a literal null into an empty request
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(str(exc)) from exc
    except RecursionError:  # msgspec's depth limit, reached by any field, even one we ignore
        raise BadRequest("request body is nested too deeply") from None


async def until_disconnect(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the ASGI `http.disconnect`)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    raise Canceled("request canceled")


async def ndjson_lines(first: msgspec.Struct, chunks: AsyncGenerator[msgspec.Struct]) -> AsyncIterator[bytes]:
    """The stream body: one JSON object a line; an error after the first line becomes a last error line."""
    buffer = bytearray()
    try:
        _encoder.encode_into(first, buffer)
        buffer.extend(b"\n")
        yield bytes(buffer)
        async for chunk in chunks:
            _encoder.encode_into(chunk, buffer)
            buffer.extend(b"\n")
            yield bytes(buffer)
    except ModelyardError as exc:
        yield _encoder.encode(ErrorResponse(error=exc.message)) + b"\n"
    except Exception as exc:
        log.exception("error while streaming")
        yield _encoder.encode(ErrorResponse(error=str(exc))) + b"\n"
    finally:
        await chunks.aclose()


async def respond(
    request: Request[Any, Any, Any],
    chunks: AsyncGenerator[Body],
    stream: bool,
    merge: Callable[[list[Body]], Body],
) -> Response[Any]:
    """A streamed or a single answer from the chunks of one request.

    The first chunk is awaited here, so an error before it (bad input, unknown model, a failed load) gets
    its real status; it also starts the generator, whose `finally` then runs however the client leaves.
    """
    try:
        first = await until_disconnect(request, anext(chunks))
    except StopAsyncIteration:
        raise ModelyardError("no response was produced") from None
    if stream and getattr(first, "done_reason", None) in ("load", "unload"):
        await chunks.aclose()  # Ollama answers a load or unload with one JSON object even when streaming
        return json_response(first)
    if stream:
        return Stream(ndjson_lines(first, chunks), media_type=NDJSON)

    async def collect() -> list[Body]:
        collected = [first]
        async for chunk in chunks:
            collected.append(chunk)
        return collected

    try:
        return json_response(merge(await until_disconnect(request, collect())))
    finally:
        await chunks.aclose()


def last_chunk(chunks: list[Body]) -> Body:
    """`stream: false` on pull, push and create: the final status only."""
    return chunks[-1]


# --- routes ---------------------------------------------------------------------------------------


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
    chunks = services(request).inference.generate(body, started)
    return await respond(request, chunks, body.stream is not False, merge_generate)


@post("/api/chat", status_code=200)
async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
    started = time.perf_counter_ns()
    body = await decode_body(request, ChatRequest)
    chunks = services(request).inference.chat(body, started)
    return await respond(request, chunks, body.stream is not False, merge_chat)


@get("/api/tags")
async def tags(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = services(request)
    # Clients poll this every few seconds: the encoded answer is reused while nothing changed.
    state.tags_answer = await tags_answer(ModelCatalog(state.store, state.backends), state.get("tags_answer"))
    return Response(state.tags_answer.body, media_type=JSON)


@head("/api/tags")
async def tags_head() -> Response[None]:
    return Response(None, media_type=JSON)


@post("/api/show", status_code=200)
async def show(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await decode_body(request, ShowRequest)
    state = services(request)
    catalog = ModelCatalog(state.store, state.backends)
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


# --- errors ---------------------------------------------------------------------------------------


def handle_modelyard_error(_: Request[Any, Any, Any], exc: ModelyardError) -> Response[bytes]:
    return error_response(exc.message, exc.status)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413:  # Litestar's body limit (request_max_body_size)
        limit = request.route_handler.resolve_request_max_body_size()
        return error_response(f"request body is larger than {limit} bytes (MODELYARD_MAX_BODY_SIZE)", 413)
    if isinstance(exc, NotFoundException):
        return Response("404 page not found", status_code=404, media_type="text/plain")
    if isinstance(exc, MethodNotAllowedException):
        return Response("405 method not allowed", status_code=405, media_type="text/plain")
    return error_response(exc.detail, exc.status_code)


def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, GGUFError):
        return error_response(str(exc), 500)
    log.exception("unhandled error", exc_info=exc)
    return error_response(str(exc) or type(exc).__name__, 500)


# --- the app --------------------------------------------------------------------------------------


class App(Litestar):
    """Litestar without the plugins it adds whenever pydantic or attrs is installed.

    The app decodes and encodes with msgspec only; the pydantic plugin alone costs about half a second of
    start-up and 20 MB (pydantic is there whenever the `ollama` client is).
    """

    @staticmethod
    def _get_default_plugins(plugins: list[Any]) -> list[Any]:
        from litestar.plugins.core import MsgspecDIPlugin

        return [*plugins, MsgspecDIPlugin()]


def create_app(settings: Settings | None = None, extra_plugins: tuple[object, ...] = ()) -> Litestar:
    """A server with its own store, backends and scheduler (no module state: tests make many)."""
    settings = settings or Settings.from_env()
    manager = build_plugin_manager(extra_plugins, trace=settings.trace_hooks)
    store = ModelStore(settings.models, Formats.discover(manager))
    backends = Backends.discover(manager, settings.backends)
    scheduler = Scheduler(settings.keep_alive)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await asyncio.to_thread(install_bundled_models, store, settings.bundled_models)
        log.info(
            "modelyard %s: models in %s, backends: %s",
            __version__,
            store.root,
            ", ".join(b.name for b in backends.backends) or "none",
        )
        try:
            yield
        finally:
            await scheduler.close()
            await backends.close()

    return App(
        route_handlers=[
            root,
            root_head,
            version,
            version_head,
            generate,
            chat,
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
        ],
        exception_handlers={
            ModelyardError: handle_modelyard_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=[lifespan],
        middleware=[guard_middleware(settings)],
        state=State(
            {
                "settings": settings,
                "store": store,
                "backends": backends,
                "scheduler": scheduler,
                "inference": Inference(ModelCatalog(store, backends), backends, scheduler, settings.context_length),
                "management": Management(store, backends, scheduler, prune=not settings.noprune),
                "registry": None,  # see registry()
                "plugin_manager": manager,
            }
        ),
        openapi_config=None,
        request_max_body_size=settings.max_body_size,  # /api/blobs sets its own: none
        debug=False,
    )
