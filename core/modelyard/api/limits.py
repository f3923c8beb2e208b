"""Slow clients.

- Headers: a connection must send a request's headers within MODELYARD_HEADER_TIMEOUT seconds, counted
  from when it opened or from the end of the previous answer (uvicorn has no such limit: a client
  trickling a header a byte at a time would hold its connection forever).
- Bodies: a request's body must arrive within MODELYARD_BODY_TIMEOUT seconds of its headers, else 408
  and the connection is closed. A blob upload (/api/blobs, gigabytes on a slow link) may take as long
  as it needs, but may not stall: the same number of seconds bounds each wait for its next bytes.
- Readers: a client that stops reading an answer (the socket's buffers full, uvicorn's writes paused)
  for MODELYARD_WRITE_TIMEOUT seconds has its connection aborted: the stream ends as if the client had
  left, and its place on the model is freed.
- Idle keep-alive connections close after MODELYARD_IDLE_TIMEOUT seconds (uvicorn's timeout_keep_alive).

Bodies are bounded in size by MODELYARD_MAX_BODY_SIZE (api/http.py), request rates per key by the keys
file (auth.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from modelyard.api.http import send_error
from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)
UPLOADS = "/api/blobs/"  # bodies bounded by their stalls, not their whole time


class BodyTimeout(ModelyardError):
    """The request's body did not arrive in time (HTTP 408; the connection is closed after the answer)."""

    status = 408


def body_timeout_middleware(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """408 for a body that has not arrived MODELYARD_BODY_TIMEOUT seconds after the headers (for an
    upload: that long without a byte). Raised from inside a route, the error handlers answer it in the
    route's envelope; raised before routing (the key check reads bodies too), this middleware does."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or seconds <= 0:
                await app(scope, receive, send)
                return
            loop = asyncio.get_running_loop()
            path: str = scope.get("path", "")
            stall_only = path.startswith(UPLOADS)
            deadline = loop.time() + seconds
            body_done = False
            timed_out = False
            started = False

            async def timed_receive() -> ReceiveMessage:
                nonlocal body_done, timed_out
                if body_done:
                    return await receive()  # after the body: only the wait for the client's disconnect
                wait = seconds if stall_only else max(0.0, deadline - loop.time())
                try:
                    message = await asyncio.wait_for(receive(), wait)
                except TimeoutError:
                    timed_out = True
                    raise BodyTimeout(
                        f"request body not received within {seconds:g} s (MODELYARD_BODY_TIMEOUT)"
                    ) from None
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_done = True
                return message

            async def closing_send(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    if timed_out:  # the rest of the body may still come: no next request on this connection
                        message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                await send(message)

            try:
                await app(scope, timed_receive, closing_send)
            except BodyTimeout as exc:
                if started:
                    raise
                await send_error(send, path, exc.status, exc.message, [(b"connection", b"close")])

        return bounded

    return middleware


def deadline_protocol(header_timeout: float, write_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol (the one it uses here: httptools is not installed) with the header deadline
    and the write deadline."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Deadlines(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        write_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            # Still waiting for a whole request line and headers (h11 leaves its state IDLE until then).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection from %s: no request headers within %g s", self.client, header_timeout)
                self.transport.close()

        def _reader_too_slow(self) -> None:
            self.write_timer = None
            log.info("aborting a connection to %s: it read nothing of its answer for %g s", self.client, write_timeout)
            # abort, not close: close would wait, forever, for the buffered answer to be read.
            self.transport.abort()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def pause_writing(self) -> None:
            """The transport's buffer is full: the client reads slower than the answer is written."""
            super().pause_writing()
            if self.write_timer is None and write_timeout > 0:
                self.write_timer = self.loop.call_later(write_timeout, self._reader_too_slow)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None
            super().connection_lost(exc)

    return Deadlines
