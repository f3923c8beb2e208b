"""Loaded models: loading on demand, one request at a time per model, keep_alive expiry.

Requests for one model queue on its slot (FIFO); a request whose load-time options differ from the
loaded model's waits its turn, then reloads it. An idle model is unloaded when its keep_alive expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from modelyard.runtime.contract import Backend, LoadedModel, LoadSpec, ModelView
from modelyard.runtime.options import Options

log = logging.getLogger(__name__)

# Go's time.Duration maximum: what Ollama reports as the expiry of a model kept forever.
FOREVER = dt.timedelta(microseconds=(2**63 - 1) // 1000)


def expiry_after(now: dt.datetime, seconds: float) -> dt.datetime:
    """`now` plus a keep_alive, capped at FOREVER (a longer one would overflow datetime)."""
    if not seconds < FOREVER.total_seconds():  # also math.inf
        return now + FOREVER
    return now + dt.timedelta(seconds=seconds)


class Runner:
    """A model in memory."""

    def __init__(
        self, model: ModelView, backend: Backend, loaded: LoadedModel, spec: LoadSpec, keep_alive: float
    ) -> None:
        self.model = model
        self.backend = backend
        self.loaded = loaded
        self.spec = spec
        self.keep_alive = keep_alive
        self.expires_at: dt.datetime | None = None  # None while a request uses it
        self.expiry: asyncio.TimerHandle | None = None


class Lease:
    """The right to use one loaded model until `release()`."""

    def __init__(self, scheduler: Scheduler, runner: Runner, load_duration: int) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.load_duration = load_duration
        self.queue_duration = 0  # ns waiting for the model's turn
        self._released = False

    @property
    def model(self) -> LoadedModel:
        return self.runner.loaded

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self.scheduler._release(self.runner)


class Scheduler:
    def __init__(self, default_keep_alive: float) -> None:
        self.default_keep_alive = default_keep_alive
        self.runners: dict[str, Runner] = {}
        self.slots: dict[str, asyncio.Lock] = {}

    @staticmethod
    def _key(model: ModelView) -> str:
        return model.name

    def _slot(self, key: str) -> asyncio.Lock:
        return self.slots.setdefault(key, asyncio.Lock())

    async def acquire(self, model: ModelView, backend: Backend, options: Options, keep_alive: float | None) -> Lease:
        """Wait for the model's turn, load it if needed, and lease it to one request."""
        key = self._key(model)
        slot = self._slot(key)
        await slot.acquire()
        try:
            started = time.perf_counter_ns()
            wanted = backend.load_spec(model, options)
            runner = self.runners.get(key)
            if runner is not None and (
                runner.spec != wanted or runner.model.digest != model.digest or runner.backend is not backend
            ):
                await self._unload(runner)
                runner = None
            if runner is None:
                log.info("loading %s with %s", model.name, backend.name)
                loaded = await backend.load(model, wanted)
                runner = Runner(model, backend, loaded, wanted, self.default_keep_alive)
                self.runners[key] = runner
            if keep_alive is not None:
                runner.keep_alive = keep_alive
            if runner.expiry is not None:
                runner.expiry.cancel()
                runner.expiry = None
            runner.expires_at = None
            return Lease(self, runner, time.perf_counter_ns() - started)
        except BaseException:
            slot.release()
            raise

    async def _release(self, runner: Runner) -> None:
        slot = self._slot(self._key(runner.model))
        try:
            if self.runners.get(self._key(runner.model)) is runner:
                if runner.keep_alive <= 0:
                    await self._unload(runner)
                else:
                    self._schedule_expiry(runner)
        finally:
            slot.release()

    def _schedule_expiry(self, runner: Runner) -> None:
        now = dt.datetime.now().astimezone()
        runner.expires_at = expiry_after(now, runner.keep_alive)
        if runner.keep_alive >= FOREVER.total_seconds():
            return  # no timer: kept until unloaded
        loop = asyncio.get_running_loop()
        runner.expiry = loop.call_later(runner.keep_alive, lambda: loop.create_task(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        key = self._key(runner.model)
        async with self._slot(key):
            # Still the same idle runner (not reused, reloaded or unloaded meanwhile)?
            if self.runners.get(key) is runner and runner.expires_at is not None:
                log.info("keep_alive expired: unloading %s", runner.model.name)
                await self._unload(runner)

    async def _unload(self, runner: Runner) -> None:
        key = self._key(runner.model)
        if self.runners.get(key) is runner:
            del self.runners[key]
        if runner.expiry is not None:
            runner.expiry.cancel()
        await runner.loaded.close()

    async def unload(self, model: ModelView) -> None:
        """Unload a model once its current request (if any) is done."""
        key = self._key(model)
        async with self._slot(key):
            runner = self.runners.get(key)
            if runner is not None:
                await self._unload(runner)

    def loaded(self) -> list[Runner]:
        """Loaded models, the one that stays longest first (as /api/ps sorts them)."""
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        return sorted(self.runners.values(), key=lambda r: r.expires_at or far, reverse=True)

    async def close(self) -> None:
        for runner in list(self.runners.values()):
            await self._unload(runner)
