"""HTTP plumbing every API shares: body decoding, disconnect detection, streamed answers, the error table,
and the Litestar app class. The CORS and Host guard is guard.py.

Errors map by class to a status (errors.py); the body is Ollama's envelope `{"error": message}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.response import Stream
from litestar.types import ASGIApp, HTTPResponseStartEvent, Send

from modelyard.api.anthropic.errors import error_body as anthropic_error_body
from modelyard.api.ollama.wire import ErrorResponse
from modelyard.api.openai.errors import ErrorBody as OpenAIErrorBody
from modelyard.api.openai.errors import error_detail as openai_error_detail
from modelyard.errors import BadRequest, Canceled, ModelyardError
from modelyard.store.gguf import GGUFError

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
T = TypeVar("T")
Body = TypeVar("Body", bound=msgspec.Struct)

ENCODER = msgspec.json.Encoder()  # stateless, shared by every response


def json_response(body: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(ENCODER.encode(body), status_code=status, media_type=JSON)


def error_response(message: str, status: int) -> Response[bytes]:
    return json_response(ErrorResponse(error=message), status)


def api_of(path: str) -> str:
    """Which API a path belongs to, for its error envelope: "anthropic", "openai" or "ollama"."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    return "ollama"


def error_envelope(path: str, message: str, status: int, exc: BaseException | None = None) -> bytes:
    """The error's body in the envelope of the API its path belongs to: Anthropic's for /v1/messages,
    OpenAI's under /v1/, else Ollama's. The middlewares (keys, limits) answer with it too."""
    api = api_of(path)
    if api == "anthropic":
        return ENCODER.encode(anthropic_error_body(message, status))
    if api == "openai":
        return ENCODER.encode(OpenAIErrorBody(error=openai_error_detail(message, status, exc)))
    return ENCODER.encode(ErrorResponse(error=message))


async def send_error(
    send: Send,
    path: str,
    status: int,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    exc: BaseException | None = None,
) -> None:
    """An error answered by a middleware, ahead of the routes, in the envelope of the path's API."""
    body = error_envelope(path, message, status, exc)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()), *headers],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def api_error_response(
    request: Request[Any, Any, Any], message: str, status: int, exc: BaseException | None = None
) -> Response[bytes]:
    """The error in the envelope of the API its path belongs to (error_envelope)."""
    return Response(error_envelope(request.scope["path"], message, status, exc), status_code=status, media_type=JSON)


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


async def ndjson_lines(
    first: Any, items: AsyncGenerator[Any], as_chunk: Callable[[Any], msgspec.Struct | None] | None = None
) -> AsyncIterator[bytes]:
    """The stream body: one JSON object a line (`as_chunk` turns an item into its chunk, None: no line); an
    error after the first line becomes a last error line."""
    buffer = bytearray()

    async def rest() -> AsyncIterator[Any]:
        yield first
        async for item in items:
            yield item

    try:
        async for item in rest():
            chunk = item if as_chunk is None else as_chunk(item)
            if chunk is not None:
                ENCODER.encode_into(chunk, buffer)
                buffer.extend(b"\n")
                yield bytes(buffer)
    except ModelyardError as exc:
        yield ENCODER.encode(ErrorResponse(error=exc.message)) + b"\n"
    except Exception as exc:
        log.exception("error while streaming")
        yield ENCODER.encode(ErrorResponse(error=str(exc))) + b"\n"
    finally:
        await items.aclose()


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


# --- errors ---------------------------------------------------------------------------------------


def handle_modelyard_error(request: Request[Any, Any, Any], exc: ModelyardError) -> Response[bytes]:
    return api_error_response(request, exc.message, exc.status, exc)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413:  # Litestar's body limit (request_max_body_size)
        limit = request.route_handler.resolve_request_max_body_size()
        return api_error_response(request, f"request body is larger than {limit} bytes (MODELYARD_MAX_BODY_SIZE)", 413)
    if isinstance(exc, NotFoundException):
        return Response("404 page not found", status_code=404, media_type="text/plain")
    if isinstance(exc, MethodNotAllowedException):
        return Response("405 method not allowed", status_code=405, media_type="text/plain")
    return api_error_response(request, exc.detail, exc.status_code)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, GGUFError):
        return api_error_response(request, str(exc), 500)
    log.exception("unhandled error", exc_info=exc)
    return api_error_response(request, str(exc) or type(exc).__name__, 500)


class App(Litestar):
    """Litestar without the plugins it adds whenever pydantic or attrs is installed, and with middleware
    that wraps the router itself (`outer_middleware`, outermost first).

    The app decodes and encodes with msgspec only; the pydantic plugin alone costs about half a second of
    start-up and 20 MB (pydantic is there whenever the `ollama` client is). Litestar's own `middleware`
    runs only once a route has matched; the request log, the metrics, the guard and the key check must
    also see the paths that match none (a 404 must not tell a caller without a key which routes exist).
    """

    def __init__(self, *args: Any, outer_middleware: Sequence[Callable[[ASGIApp], ASGIApp]] = (), **kwargs: Any):
        self.outer_middleware = tuple(outer_middleware)  # read by _create_asgi_handler, during __init__
        super().__init__(*args, **kwargs)

    def _create_asgi_handler(self) -> ASGIApp:
        handler = super()._create_asgi_handler()
        for middleware in reversed(self.outer_middleware):
            handler = middleware(handler)
        return handler

    @staticmethod
    def _get_default_plugins(plugins: list[Any]) -> list[Any]:
        from litestar.plugins.core import MsgspecDIPlugin

        return [*plugins, MsgspecDIPlugin()]
