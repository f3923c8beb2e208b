"""Ollama's browser rules, ahead of every route: CORS for allowed origins, 403 for a disallowed Origin,
and (on a loopback listener) 403 for a foreign Host header, which stops DNS rebinding."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from typing import Any, cast

from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Receive, Scope, Send

from modelyard.config import Settings

# Ollama's defaults: localhost on any port, and app, file and editor webviews.
DEFAULT_ORIGINS = (
    r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?|(app|file|tauri|vscode-webview|vscode-file)://.*"
)
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def origin_pattern(settings: Settings) -> str:
    """A regular expression of the allowed origins: the defaults plus OLLAMA_ORIGINS (globs allowed)."""
    extra = [
        fnmatch.translate(origin).removesuffix(r"\Z").removeprefix("(?s:").removesuffix(")")
        for origin in settings.origins
    ]
    return "|".join([f"(?:{DEFAULT_ORIGINS})", *(f"(?:{pattern})" for pattern in extra)])


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def host_is_allowed(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in ("localhost", socket.gethostname().lower()) or host.endswith(LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_unspecified


def guard_middleware(settings: Settings) -> Any:
    allowed_origin = re.compile(origin_pattern(settings))
    check_host = is_loopback(settings.host)

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            origin = headers.get("origin")
            if (origin is not None and not allowed_origin.fullmatch(origin)) or (
                check_host and not host_is_allowed(headers.get("host", "localhost"))
            ):
                await _answer(send, 403, [])
                return
            if origin is None:
                await app(scope, receive, send)
                return
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if cast("HTTPScope", scope)["method"] == "OPTIONS" and "access-control-request-method" in headers:
                requested = headers.get("access-control-request-headers", "").encode("latin-1")
                preflight = [
                    (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                    (b"access-control-allow-headers", requested),
                    (b"access-control-max-age", b"43200"),
                ]
                await _answer(send, 204, cors + preflight)
                return

            async def with_cors(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
                await send(message)

            await app(scope, receive, with_cors)

        return guarded

    return middleware


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", b"0")],
    }
    await send(start)
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
    await send(body)
