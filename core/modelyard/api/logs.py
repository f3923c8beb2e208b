"""Request logs: one line per request, with its request id, status, model, tokens and durations.

The outermost middleware makes an `Exchange` for each request and hands it down through a context
variable: the auth check, the inference observer (metrics.py) and the routes below fill in what they
learn (the key's name, the model and backend, token counts, durations), and the middleware writes the
line when the response has been sent, or the client has gone. The request id comes from the client's
`X-Request-Id` when it sends a sensible one, and is returned in `X-Request-Id` either way.

Prompts are not logged unless MODELYARD_LOG_PROMPTS is set. With MODELYARD_LOG_FORMAT=json every log line
of the server is a JSON object (`JsonFormatter`), and a request's fields are keys of its line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from litestar.utils import normalize_path

log = logging.getLogger("modelyard.requests")

# The request being served, for code below the middleware (the observer of inference, the auth check).
CURRENT_EXCHANGE: ContextVar[Exchange | None] = ContextVar("modelyard_exchange", default=None)
_SENSIBLE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class Exchange:
    """What is known of one request and its answer; fields stay None when they do not apply."""

    def __init__(self, method: str, path: str, request_id: str, client: str | None) -> None:
        self.started = time.perf_counter()
        self.method = method
        self.path = path
        self.route: str | None = None  # the route's template (/api/blobs/{digest:str}), once routed
        self.request_id = request_id
        self.client = client
        self.status: int | None = None
        self.key: str | None = None  # the API key's name
        self.model: str | None = None
        self.backend: str | None = None
        self.reason: str | None = None  # how a generation ended: stop, length, error, canceled
        self.prompt_tokens: int | None = None
        self.eval_tokens: int | None = None
        self.ttft: float | None = None  # seconds from arrival to the first token
        self.load_duration: float | None = None
        self.queue_duration: float | None = None
        self.total_duration: float | None = None
        self.prompt: str | None = None  # only with MODELYARD_LOG_PROMPTS
        self.finished: float | None = None  # seconds the whole exchange took

    def fields(self) -> dict[str, Any]:
        """The log line's fields, without the empty ones."""
        names = (
            "request_id method path status duration client key model backend reason prompt_tokens eval_tokens "
            "ttft load_duration queue_duration total_duration prompt"
        ).split()
        values = {name: getattr(self, name, None) for name in names}
        values["duration"] = self.finished
        return {
            name: round(value, 6) if isinstance(value, float) else value
            for name, value in values.items()
            if value is not None
        }


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id when it is a short token (it ends up in log lines), else a new one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _SENSIBLE_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


def observe_middleware(on_finish: list[Callable[[Exchange], None]]) -> Callable[[ASGIApp], ASGIApp]:
    """The outermost middleware: an Exchange per request, X-Request-Id, the log line, then `on_finish`
    (metrics) with the finished exchange."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def observed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            client = scope.get("client")
            request_id = request_id_of(list(scope["headers"]))
            exchange = Exchange(
                cast("HTTPScope", scope)["method"], scope["path"], request_id, client[0] if client else None
            )
            token = CURRENT_EXCHANGE.set(exchange)
            id_header = (b"x-request-id", exchange.request_id.encode())

            async def answer(message: Message) -> None:
                if message["type"] == "http.response.start":
                    exchange.status = message["status"]
                    message = {**message, "headers": [*message.get("headers", []), id_header]}
                await send(message)

            try:
                await app(scope, receive, answer)
            finally:
                CURRENT_EXCHANGE.reset(token)
                exchange.route = scope.get("path_template") or route_template(scope)
                exchange.finished = time.perf_counter() - exchange.started
                if exchange.status is None:
                    exchange.status = 499  # the client left before an answer began (nginx's code)
                write_line(exchange)
                for callback in on_finish:
                    callback(exchange)

        return observed

    return middleware


def route_template(scope: Scope) -> str | None:
    """The template of the route a request was for when it was answered before routing (a 401 of the key
    check, a 403 of the guard, a 408), or None when no route matches it: the router's own lookup, which
    it caches (1,024 paths at most)."""
    app = scope.get("litestar_app")
    if app is None:
        return None
    try:
        template: str = app.asgi_router.handle_routing(normalize_path(scope["path"]), scope.get("method"))[4]
    except Exception:  # NotFoundException, MethodNotAllowedException: the path is no route's
        return None
    return template


def write_line(exchange: Exchange) -> None:
    fields = exchange.fields()
    if not log.isEnabledFor(logging.INFO):
        return
    duration = f"{1000 * (exchange.finished or 0):.1f}ms"
    rest = " ".join(
        f"{name}={json.dumps(value) if isinstance(value, str) and ' ' in value else value}"
        for name, value in fields.items()
        if name not in ("method", "path", "status", "duration")
    )
    # The path is the client's, percent-decoded: quoted when it holds a space or a control character, so
    # that it cannot forge a line of its own or a field.
    path = exchange.path if exchange.path.isprintable() and " " not in exchange.path else json.dumps(exchange.path)
    log.info("%s %s %s %s %s", exchange.method, path, exchange.status, duration, rest, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """MODELYARD_LOG_FORMAT=json: one JSON object a line; a request line carries its fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str) -> None:
    """The server's log: text lines, or JSON lines with MODELYARD_LOG_FORMAT=json."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
