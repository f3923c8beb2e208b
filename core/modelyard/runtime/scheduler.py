"""Loaded models: loading on demand, counted leases, a bounded queue, eviction and keep_alive expiry.

A loaded model (a `Runner`) serves up to `LoadedModel.parallel` requests at once; each holds a `Lease`.
Requests that cannot start wait in arrival order: per model, a request never overtakes an earlier one,
so a reload (another `LoadSpec`) or an unload is not starved by same-spec requests that arrive after it;
it starts once the running leases end. Across models, loads happen one at a time, in arrival order, as
in Ollama's scheduler: a load that needs room (`max_loaded_models`, or free memory against the backend's
`memory_estimate`) evicts the least recently used idle model, or waits for the least recently used busy
one, which then takes no new requests that arrived after the load, until it is idle and evicted.
An idle model is unloaded when its keep_alive expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from modelyard.errors import InternalError, Unavailable
from modelyard.runtime.contract import Backend, LoadedModel, LoadSpec, ModelView
from modelyard.runtime.options import Options

log = logging.getLogger(__name__)

# Go's time.Duration maximum: what Ollama reports as the expiry of a model kept forever.
FOREVER = dt.timedelta(microseconds=(2**63 - 1) // 1000)
# Ollama's answers, word for word (server/sched.go, llm/server.go); clients match on them.
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
SHUTTING_DOWN = "server is shutting down"
DEFAULT_MAX_LOADED_MODELS = 3  # Ollama's default on CPU (3 per GPU there)
DEFAULT_MAX_QUEUE = 512


def expiry_after(now: dt.datetime, seconds: float) -> dt.datetime:
    """`now` plus a keep_alive, capped at FOREVER (a longer one would overflow datetime)."""
    if not seconds < FOREVER.total_seconds():  # also math.inf
        return now + FOREVER
    return now + dt.timedelta(seconds=seconds)


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory the system can give a new model (MemAvailable), or None where it cannot say."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            number, _, unit = value.strip().partition(" ")
            return int(number) * (1024 if unit.lower() == "kb" else 1)
    return None


def human_bytes(size: int) -> str:
    """Sizes as Ollama's format.HumanBytes2 writes them in its errors: "1.5 GiB", "512.0 MiB"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


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
        self.leases = 0  # requests running on it now
        self.last_used = 0  # the arrival number of its latest request: the lowest is evicted first

    @property
    def parallel(self) -> int:
        return max(1, self.loaded.parallel)

    def fits(self, request: _Acquire) -> bool:
        """Whether the request can run on this runner as loaded (else the model reloads)."""
        return (
            self.spec == request.spec and self.model.digest == request.model.digest and self.backend is request.backend
        )

    def stop_expiry(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.expires_at = None


class Lease:
    """The right to run one request on a loaded model until `release()`."""

    def __init__(self, scheduler: Scheduler, runner: Runner, load_duration: int, queue_duration: int) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.load_duration = load_duration  # ns spent (re)loading the model for this request
        self.queue_duration = queue_duration  # ns from acquire until a slot was free (or its load began)
        self._released = False

    @property
    def model(self) -> LoadedModel:
        return self.runner.loaded

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self.scheduler._release(self.runner)


class _Acquire:
    """A request waiting for a lease."""

    def __init__(
        self,
        number: int,
        model: ModelView,
        backend: Backend,
        spec: LoadSpec,
        keep_alive: float | None,
        future: asyncio.Future[Lease],
    ) -> None:
        self.number = number  # arrival order
        self.model = model
        self.backend = backend
        self.spec = spec
        self.keep_alive = keep_alive
        self.future = future
        self.started = time.perf_counter_ns()
        self.load_started: int | None = None  # when a (re)load began for it
        self.queued = True  # counts against max_queue (not once its own load has begun)
        self._memory_needed: int | None = None

    def memory_needed(self) -> int:
        if self._memory_needed is None:
            self._memory_needed = self.backend.memory_estimate(self.model, self.spec)
        return self._memory_needed


class _Unload:
    """An unload waiting for the requests before it."""

    def __init__(self, number: int, future: asyncio.Future[None]) -> None:
        self.number = number
        self.future = future


class _Slot:
    """One model name: its runner (if loaded), its waiting requests and unloads, the load or unload under way."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.waiters: deque[_Acquire | _Unload] = deque()
        self.task: asyncio.Task[None] | None = None  # a load or unload in progress

    @property
    def busy(self) -> bool:
        return self.task is not None


class _Pass:
    """What one dispatch pass learns as it walks the waiting requests in arrival order."""

    def __init__(self) -> None:
        self.waiting_for_room = False  # an earlier request waits for room to load: later loads wait too
        self.draining: set[Runner] = set()  # runners that take no more requests: a load waits for them


class Scheduler:
    def __init__(
        self,
        default_keep_alive: float,
        *,
        num_parallel: int = 1,
        max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        free_memory: Callable[[], int | None] = available_memory,
    ) -> None:
        self.default_keep_alive = default_keep_alive
        self.num_parallel = max(1, num_parallel)  # OLLAMA_NUM_PARALLEL
        self.max_loaded_models = max(1, max_loaded_models)  # OLLAMA_MAX_LOADED_MODELS
        self.max_queue = max(0, max_queue)  # OLLAMA_MAX_QUEUE
        self.free_memory = free_memory  # bytes free now, or None to skip the memory check
        self._slots: dict[str, _Slot] = {}
        self._arrivals = itertools.count()
        self._waiting = 0  # requests queued (not leased, not loading): bounded by max_queue
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(model: ModelView) -> str:
        return model.name

    @property
    def waiting(self) -> int:
        """Requests waiting for a lease (not counting one whose model is being loaded for it)."""
        return self._waiting

    async def acquire(self, model: ModelView, backend: Backend, options: Options, keep_alive: float | None) -> Lease:
        """Wait for a free slot on the model, loading or reloading it if needed, and lease it to one request."""
        spec = backend.load_spec(model, options)
        spec = msgspec.structs.replace(spec, parallel=max(1, min(self.num_parallel, backend.max_parallel)))
        key = self._key(model)
        slot = self._slots.setdefault(key, _Slot())
        if self._waiting >= self.max_queue and (slot.waiters or slot.busy):
            raise Unavailable(QUEUE_FULL)  # it would wait behind them: no need to look further
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        request = _Acquire(next(self._arrivals), model, backend, spec, keep_alive, future)
        slot.waiters.append(request)
        self._waiting += 1
        self._dispatch()
        if not future.done() and request.queued and self._waiting > self.max_queue:
            self._withdraw(key, request)
            raise Unavailable(QUEUE_FULL)
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(key, request)
            raise

    async def unload(self, model: ModelView) -> None:
        """Unload a model once the requests running on it, and those that came before, are done."""
        key = self._key(model)
        slot = self._slots.get(key)
        if slot is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = _Unload(next(self._arrivals), future)
        slot.waiters.append(request)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            self._withdraw(key, request)
            raise

    def loaded(self) -> list[Runner]:
        """Loaded models, the one that stays longest first (as /api/ps sorts them)."""
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        runners = [slot.runner for slot in self._slots.values() if slot.runner is not None]
        return sorted(runners, key=lambda r: r.expires_at or far, reverse=True)

    async def close(self) -> None:
        """Fail waiting requests, finish loads and unloads under way, and unload every model."""
        for slot in self._slots.values():
            while slot.waiters:
                waiter = slot.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(Unavailable(SHUTTING_DOWN))
        self._waiting = 0
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in list(self._slots.values()):
            runner, slot.runner = slot.runner, None
            if runner is not None:
                runner.stop_expiry()
                await runner.loaded.close()
        self._slots.clear()

    # --- leases ----------------------------------------------------------------------------------

    async def _release(self, runner: Runner) -> None:
        key = self._key(runner.model)
        slot = self._slots.get(key)
        runner.leases -= 1
        if slot is None or slot.runner is not runner:
            return  # unloaded meanwhile (server shutdown)
        unloading = None
        if runner.leases == 0 and runner.keep_alive <= 0:
            # A keep_alive of 0 unloads before the request ends, even with requests waiting (they reload).
            unloading = self._start_unload(slot)
        self._dispatch()
        if unloading is not None:
            await asyncio.shield(unloading)

    def _withdraw(self, key: str, waiter: _Acquire | _Unload) -> None:
        """Forget a waiter whose caller went away, leaving no trace (or release what it was just given)."""
        slot = self._slots.get(key)
        if slot is not None and waiter in slot.waiters:
            slot.waiters.remove(waiter)
            if isinstance(waiter, _Acquire) and waiter.queued:
                self._waiting -= 1
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None and isinstance(lease := future.result(), Lease):
            # Granted in the same loop turn as the cancellation: hand the slot back.
            lease._released = True
            lease.runner.leases -= 1
        self._dispatch()

    def _grant(self, runner: Runner, request: _Acquire) -> None:
        now = time.perf_counter_ns()
        runner.leases += 1
        runner.last_used = request.number
        if request.keep_alive is not None:
            runner.keep_alive = request.keep_alive
        runner.stop_expiry()
        if request.load_started is None:
            queue_duration, load_duration = now - request.started, 0
        else:
            queue_duration, load_duration = request.load_started - request.started, now - request.load_started
        request.future.set_result(Lease(self, runner, load_duration, queue_duration))

    # --- dispatch --------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Serve what can be served now, in arrival order, and start the loads and unloads that are due.

        It never awaits: it is called after every change (arrival, release, load or unload done), and the
        loads and unloads it starts run as tasks that call it again when they end.
        """
        state = _Pass()
        heads = [(slot.waiters[0].number, key) for key, slot in self._slots.items() if slot.waiters]
        heapq.heapify(heads)
        while heads:
            _, key = heapq.heappop(heads)
            slot = self._slots[key]
            if self._step(slot, state) and slot.waiters:
                heapq.heappush(heads, (slot.waiters[0].number, key))
        self._settle_idle()

    def _step(self, slot: _Slot, state: _Pass) -> bool:
        """Advance the first waiter of one model; True when it is done with and the next may go."""
        waiter = slot.waiters[0]
        if waiter.future.done():  # its caller was cancelled, and _withdraw has not run yet
            self._pop(slot)
            return True
        if slot.busy:
            return False
        runner = slot.runner
        if isinstance(waiter, _Unload):
            if runner is None:
                self._pop(slot)
                waiter.future.set_result(None)
                return True
            if runner.leases:
                return False
            self._pop(slot)
            self._start_unload(slot, waiter.future)
            return False
        if runner is not None and runner.fits(waiter):
            if runner.leases >= runner.parallel or runner in state.draining:
                return False
            self._pop(slot)
            self._grant(runner, waiter)
            return True
        if runner is not None:  # loaded with another spec, digest or backend: reload once it is idle
            if runner.leases == 0:
                waiter.load_started = waiter.load_started or time.perf_counter_ns()
                self._start_unload(slot)
            return False
        if state.waiting_for_room or any(other.busy for other in self._slots.values()):
            return False  # loads go one at a time, in arrival order, once other unloads have freed memory
        return self._load_when_room(slot, waiter, state)

    def _load_when_room(self, slot: _Slot, request: _Acquire, state: _Pass) -> bool:
        """Load the model if it fits; else evict, wait, or fail with Ollama's memory error."""
        others = {k: s for k, s in self._slots.items() if s is not slot and s.runner is not None}
        free = self.free_memory()
        try:
            short = free is not None and request.memory_needed() > free
        except Exception as exc:  # the backend's estimate failed: that request fails, the others go on
            self._pop(slot)
            request.future.set_exception(exc)
            return True
        if len(others) < self.max_loaded_models and not short:
            self._start_load(slot, request)
            return False
        idle = [k for k, s in others.items() if s.runner is not None and s.runner.leases == 0]
        if idle:
            victim = min(idle, key=lambda k: self._runner(k).last_used)
            log.info("unloading %s to make room for %s", victim, request.model.name)
            self._start_unload(self._slots[victim])
            return False
        if others:
            # Every loaded model is busy: the least recently used one finishes what it has, then goes.
            state.draining.add(min((self._runner(k) for k in others), key=lambda r: r.last_used))
            state.waiting_for_room = True
            return False
        assert free is not None  # with nothing else loaded, only memory can be short
        self._pop(slot)
        request.future.set_exception(
            InternalError(
                f"model requires more system memory ({human_bytes(request.memory_needed())}) "
                f"than is available ({human_bytes(free)})"
            )
        )
        return True

    def _runner(self, key: str) -> Runner:
        runner = self._slots[key].runner
        assert runner is not None
        return runner

    def _pop(self, slot: _Slot) -> None:
        waiter = slot.waiters.popleft()
        if isinstance(waiter, _Acquire) and waiter.queued:
            waiter.queued = False
            self._waiting -= 1

    def _settle_idle(self) -> None:
        """Start the keep_alive clock of idle models, and forget names with nothing left."""
        for key, slot in list(self._slots.items()):
            runner = slot.runner
            if runner is not None and runner.leases == 0 and not slot.busy and runner.expires_at is None:
                self._schedule_expiry(key, runner)
            if runner is None and not slot.waiters and not slot.busy:
                del self._slots[key]

    # --- loading and unloading -------------------------------------------------------------------

    def _spawn(self, slot: _Slot, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        slot.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_load(self, slot: _Slot, request: _Acquire) -> None:
        request.load_started = request.load_started or time.perf_counter_ns()
        if request.queued:  # it is being served now, no longer queued
            request.queued = False
            self._waiting -= 1
        self._spawn(slot, self._load(slot, request))

    async def _load(self, slot: _Slot, request: _Acquire) -> None:
        model, backend = request.model, request.backend
        try:
            log.info("loading %s with %s", model.name, backend.name)
            loaded = await backend.load(model, request.spec)
        except BaseException as exc:
            if request in slot.waiters and not request.future.done():
                slot.waiters.remove(request)
                request.future.set_exception(exc)
            else:
                log.warning("loading %s failed after its request went away: %s", model.name, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            slot.runner = Runner(model, backend, loaded, request.spec, self.default_keep_alive)
        finally:
            slot.task = None
            self._dispatch()

    def _start_unload(self, slot: _Slot, done: asyncio.Future[None] | None = None) -> asyncio.Task[None]:
        runner, slot.runner = slot.runner, None
        assert runner is not None and runner.leases == 0
        runner.stop_expiry()
        return self._spawn(slot, self._unload(slot, runner, done))

    async def _unload(self, slot: _Slot, runner: Runner, done: asyncio.Future[None] | None) -> None:
        try:
            log.info("unloading %s", runner.model.name)
            await runner.loaded.close()
        except Exception:
            log.exception("closing %s failed", runner.model.name)
        finally:
            slot.task = None
            if done is not None and not done.done():
                done.set_result(None)
            self._dispatch()

    # --- keep_alive ------------------------------------------------------------------------------

    def _schedule_expiry(self, key: str, runner: Runner) -> None:
        now = dt.datetime.now().astimezone()
        runner.expires_at = expiry_after(now, runner.keep_alive)
        if runner.keep_alive >= FOREVER.total_seconds():
            return  # no timer: kept until unloaded
        loop = asyncio.get_running_loop()
        runner.expiry = loop.call_later(max(0.0, runner.keep_alive), self._expire, key, runner)

    def _expire(self, key: str, runner: Runner) -> None:
        slot = self._slots.get(key)
        # Still the same idle runner (not reused, reloaded or unloaded meanwhile)?
        if slot is None or slot.runner is not runner or runner.leases or slot.busy or runner.expires_at is None:
            return
        log.info("keep_alive expired: unloading %s", runner.model.name)
        runner.expiry = None
        self._start_unload(slot)
        self._dispatch()
