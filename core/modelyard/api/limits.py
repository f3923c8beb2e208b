"""Slow clients: a connection must send a request's headers within MODELYARD_HEADER_TIMEOUT seconds,
counted from when it opened or from the end of the previous answer (uvicorn has no such limit: a client
trickling a header a byte at a time would hold its connection forever). Idle keep-alive connections
close after MODELYARD_IDLE_TIMEOUT seconds (uvicorn's timeout_keep_alive). Bodies are bounded by
MODELYARD_MAX_BODY_SIZE (api/http.py), request rates per key by the keys file (auth.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol (the one it uses here: httptools is not installed) with the header deadline."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            # Still waiting for a whole request line and headers (h11 leaves its state IDLE until then).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection from %s: no request headers within %g s", self.client, seconds)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
