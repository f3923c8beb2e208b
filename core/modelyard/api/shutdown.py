"""Graceful shutdown on SIGTERM and SIGINT.

uvicorn stops accepting connections at the signal and waits for the running requests. From the signal
on, `Drain` gives them MODELYARD_SHUTDOWN_TIMEOUT seconds: a generation still running then ends with
a last `{"error": "server is shutting down"}` line (or a 503 before its first chunk), a request still
waiting for its model gets 503, and the lifespan then unloads every model (`Scheduler.close`). uvicorn's
own timeout, a few seconds later, only cancels what is stuck between two tokens. A second SIGINT quits
at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
BACKSTOP = 5.0  # seconds uvicorn waits after the deadline before it cancels what is left


class Drain:
    """The shutdown deadline, once a signal has come."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.deadline: float | None = None  # time.monotonic() when the running requests are cut off
        self._expired = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @property
    def expired(self) -> bool:
        return self._expired.is_set()

    def begin(self) -> None:
        """Start the clock (on the event loop); a second call changes nothing."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.grace
        log.info("shutting down: running requests have %g s to finish", self.grace)
        asyncio.get_running_loop().call_later(self.grace, self._expired.set)

    async def wait_expired(self) -> None:
        await self._expired.wait()


def serve_gracefully(app: Any, drain: Drain, header_timeout: float, **config: Any) -> None:
    """uvicorn.run, with the drain started by the first SIGTERM or SIGINT, and the header and write
    deadlines (api/limits.py; the write deadline is the app's setting)."""
    import uvicorn

    from modelyard.api.limits import deadline_protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                try:
                    loop = asyncio.get_running_loop()  # the handler runs on the loop's thread, between steps
                except RuntimeError:
                    pass  # before the loop runs: nothing to drain
                else:
                    loop.call_soon_threadsafe(drain.begin)
            super().handle_exit(sig, frame)

    grace = math.ceil(drain.grace + BACKSTOP)
    http = deadline_protocol(header_timeout, app.state.settings.write_timeout)
    Server(uvicorn.Config(app, http=http, timeout_graceful_shutdown=grace, **config)).run()
