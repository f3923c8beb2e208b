"""The scheduler's races, with a fake backend: counted leases, FIFO waits, reloads, unloads, expiry,
cancellation, eviction (least recently used, OLLAMA_MAX_LOADED_MODELS, free memory) and the queue limit.

Each test runs its own event loop (asyncio.run) and waits for events or for the loop to go quiet, never
for wall-clock time, except where keep_alive itself is what is tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import pytest

from modelyard.config import Settings
from modelyard.errors import InternalError, NotFound, Unavailable
from modelyard.plugin import Backend, LoadedModel, LoadSpec, ModelView
from modelyard.runtime.contract import NoSettings
from modelyard.runtime.options import Options
from modelyard.runtime.scheduler import Lease, Scheduler, human_bytes

GiB = 1024**3


class FakeModel(LoadedModel):
    def __init__(self, backend: FakeBackend, name: str, spec: LoadSpec, size: int) -> None:
        self.backend = backend
        self.name = name
        self.spec = spec
        self.size = size
        self.parallel = spec.parallel  # as a real backend does: as many as the scheduler asked for
        self.closed = asyncio.Event()

    async def close(self) -> None:
        self.backend.log.append(f"close {self.name}@{self.spec.context_length}")
        self.closed.set()


class FakeBackend(Backend):
    """Records loads and closes; loads wait for `gate` when it is set; `missing` models fail to load."""

    name: ClassVar[str] = "fake"
    max_parallel: ClassVar[int] = 8

    def __init__(self) -> None:
        super().__init__(NoSettings())
        self.log: list[str] = []
        self.instances: list[FakeModel] = []
        self.gate: asyncio.Event | None = None
        self.missing: set[str] = set()

    def serves(self, model: ModelView) -> bool:
        return True

    async def load(self, model: ModelView, spec: LoadSpec) -> FakeModel:
        self.log.append(f"load {model.name}@{spec.context_length}")
        if self.gate is not None:
            await self.gate.wait()
        if model.name in self.missing:
            raise NotFound(f"no weights for {model.name}")
        instance = FakeModel(self, model.name, spec, model.size)
        self.instances.append(instance)
        return instance

    def in_memory(self) -> int:
        return sum(m.size for m in self.instances if not m.closed.is_set())


class TwoAtOnce(FakeBackend):
    max_parallel: ClassVar[int] = 2


def view(name: str, size: int = 0, digest: str = "sha256:1") -> ModelView:
    return ModelView(name=name, format="fake", digest=digest, size=size)


def options(num_ctx: int = 2048) -> Options:
    return Options(num_ctx=num_ctx)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


async def quiet() -> None:
    """Let every task run until it waits on something (no timers involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


def start(coroutine: Coroutine[Any, Any, Lease]) -> asyncio.Task[Lease]:
    return asyncio.get_running_loop().create_task(coroutine)


def loaded_names(scheduler: Scheduler) -> list[str]:
    return sorted(runner.model.name for runner in scheduler.loaded())


# --- counted leases -----------------------------------------------------------------------------------


def test_parallel_leases_run_at_once_and_the_next_one_waits() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, num_parallel=3)
        model = view("m")
        leases = [await scheduler.acquire(model, backend, options(), None) for _ in range(3)]
        assert [lease.model for lease in leases] == [leases[0].model] * 3
        assert leases[0].model.parallel == 3
        fourth = start(scheduler.acquire(model, backend, options(), None))
        await quiet()
        assert not fourth.done() and scheduler.waiting == 1
        await leases[1].release()
        await leases[1].release()  # idempotent: frees one slot, not two
        lease = await fourth
        assert lease.model is leases[0].model and scheduler.waiting == 0
        assert lease.load_duration == 0 and lease.queue_duration > 0
        assert backend.log == ["load m@2048"]
        assert scheduler.loaded()[0].leases == 3
        await scheduler.close()

    run(scenario)


def test_num_parallel_is_capped_by_the_backend_and_one_by_default() -> None:
    async def scenario() -> None:
        capped = Scheduler(300, num_parallel=4)
        lease = await capped.acquire(view("m"), TwoAtOnce(), options(), None)
        assert lease.runner.spec.parallel == 2
        await capped.close()
        default = Scheduler(300)
        lease = await default.acquire(view("m"), FakeBackend(), options(), None)
        assert lease.runner.spec.parallel == 1 and lease.runner.parallel == 1
        await default.close()

    run(scenario)


def test_waiting_requests_are_served_in_arrival_order() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        model = view("m")
        first = await scheduler.acquire(model, backend, options(), None)
        served: list[str] = []

        async def request(name: str) -> None:
            lease = await scheduler.acquire(model, backend, options(), None)
            served.append(name)
            await lease.release()

        tasks = []
        for name in "bcde":
            tasks.append(asyncio.create_task(request(name)))
            await quiet()  # each is waiting before the next arrives
        assert scheduler.waiting == 4 and served == []
        await first.release()
        await asyncio.gather(*tasks)
        assert served == ["b", "c", "d", "e"] and scheduler.waiting == 0
        assert backend.log == ["load m@2048"]
        await scheduler.close()

    run(scenario)


def test_load_duration_covers_the_load_and_queue_duration_the_wait_before_it() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        scheduler = Scheduler(300)
        first = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        assert scheduler.waiting == 0  # being loaded for: not queued
        second = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        assert scheduler.waiting == 1
        backend.gate.set()
        lease = await first
        assert lease.load_duration > 0
        await lease.release()
        lease = await second
        assert lease.load_duration == 0 and lease.queue_duration > 0
        await scheduler.close()

    run(scenario)


# --- reloads and unloads --------------------------------------------------------------------------------


def test_a_reload_waits_for_the_running_stream_and_later_requests_wait_behind_it() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, num_parallel=2)
        model = view("m")
        streaming = await scheduler.acquire(model, backend, options(2048), None)
        reload = start(scheduler.acquire(model, backend, options(4096), None))
        await quiet()
        assert not reload.done() and backend.log == ["load m@2048"]
        # A free slot on the loaded model, but the reload came first: this one waits behind it.
        same_spec = start(scheduler.acquire(model, backend, options(2048), None))
        await quiet()
        assert not same_spec.done() and scheduler.waiting == 2
        await streaming.release()
        reloaded = await reload
        assert reloaded.runner.spec.context_length == 4096 and reloaded.load_duration > 0
        assert backend.log == ["load m@2048", "close m@2048", "load m@4096"]
        await quiet()
        assert not same_spec.done()  # it needs 2048 again: after the 4096 request is done
        await reloaded.release()
        back = await same_spec
        assert back.runner.spec.context_length == 2048
        assert backend.log[3:] == ["close m@4096", "load m@2048"]
        await back.release()
        await scheduler.close()

    run(scenario)


def test_a_new_digest_reloads_the_model() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        lease = await scheduler.acquire(view("m", digest="sha256:1"), backend, options(), None)
        await lease.release()
        lease = await scheduler.acquire(view("m", digest="sha256:2"), backend, options(), None)
        assert backend.log == ["load m@2048", "close m@2048", "load m@2048"]
        assert lease.runner.model.digest == "sha256:2"
        await scheduler.close()

    run(scenario)


def test_an_unload_waits_for_the_running_request_and_the_ones_queued_before_it() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        model = view("m")
        running = await scheduler.acquire(model, backend, options(), None)
        before = start(scheduler.acquire(model, backend, options(), None))
        await quiet()
        unload = asyncio.create_task(scheduler.unload(model))
        await quiet()
        after = start(scheduler.acquire(model, backend, options(), None))
        await quiet()
        assert not unload.done() and not before.done() and not after.done()
        await running.release()
        served_before = await before
        await quiet()
        assert served_before.model is running.model and not unload.done()
        assert backend.log == ["load m@2048"]
        await served_before.release()
        await unload
        assert backend.log[:2] == ["load m@2048", "close m@2048"]
        served_after = await after  # queued after the unload: loads the model again
        assert served_after.model is not running.model
        assert backend.log == ["load m@2048", "close m@2048", "load m@2048"]
        await scheduler.close()

    run(scenario)


def test_unloading_a_model_that_is_not_loaded_returns_at_once() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(300)
        await scheduler.unload(view("nothing"))
        assert scheduler.loaded() == []

    run(scenario)


# --- keep_alive --------------------------------------------------------------------------------------


def test_expiry_never_unloads_a_model_with_a_running_request() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, num_parallel=2)
        model = view("m")
        first = await scheduler.acquire(model, backend, options(), 0.05)
        second = await scheduler.acquire(model, backend, options(), None)
        await first.release()
        runner = scheduler.loaded()[0]
        assert runner.leases == 1 and runner.expires_at is None
        await asyncio.sleep(0.2)  # four keep_alives: the request still runs
        assert not second.model.closed.is_set() and backend.log == ["load m@2048"]
        await second.release()
        assert runner.expires_at is not None
        await second.model.closed.wait()  # now it expires
        assert scheduler.loaded() == []

    run(scenario)


def test_keep_alive_is_kept_by_requests_without_one_and_zero_unloads_after_the_request() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        model = view("m")
        lease = await scheduler.acquire(model, backend, options(), 600)
        await lease.release()
        lease = await scheduler.acquire(model, backend, options(), None)
        assert lease.runner.keep_alive == 600 and lease.runner.expires_at is None
        await lease.release()
        assert lease.runner.expires_at is not None
        lease = await scheduler.acquire(model, backend, options(), 0)
        await lease.release()  # returns once the model is closed
        assert lease.model.closed.is_set() and scheduler.loaded() == []
        await scheduler.close()

    run(scenario)


def test_forever_sets_no_timer() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(300)
        lease = await scheduler.acquire(view("m"), FakeBackend(), options(), float("inf"))
        await lease.release()
        runner = scheduler.loaded()[0]
        assert runner.expiry is None and runner.expires_at is not None
        await scheduler.close()

    run(scenario)


# --- cancellation ------------------------------------------------------------------------------------


def test_a_request_cancelled_while_queued_leaves_no_trace() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, max_queue=1)
        model = view("m")
        running = await scheduler.acquire(model, backend, options(), None)
        gone = start(scheduler.acquire(model, backend, options(), None))
        await quiet()
        assert scheduler.waiting == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert scheduler.waiting == 0
        # Its place in the queue is free again (max_queue=1), and nobody takes the slot once it is released.
        waiting = start(scheduler.acquire(model, backend, options(), None))
        await quiet()
        assert scheduler.waiting == 1 and not waiting.done()
        await running.release()
        lease = await waiting
        await lease.release()
        runner = scheduler.loaded()[0]
        assert runner.leases == 0 and runner.expires_at is not None and scheduler.waiting == 0
        await scheduler.close()

    run(scenario)


def test_a_request_cancelled_while_its_model_loads_leaves_the_model_idle() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        scheduler = Scheduler(300)
        gone = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        backend.gate.set()
        await quiet()
        runner = scheduler.loaded()[0]
        assert runner.leases == 0 and runner.expires_at is not None and scheduler.waiting == 0
        await scheduler.close()

    run(scenario)


def test_a_cancelled_unload_leaves_the_model_loaded() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        model = view("m")
        running = await scheduler.acquire(model, backend, options(), None)
        unload = asyncio.create_task(scheduler.unload(model))
        await quiet()
        unload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unload
        await running.release()
        assert loaded_names(scheduler) == ["m"] and backend.log == ["load m@2048"]
        await scheduler.close()

    run(scenario)


# --- eviction ------------------------------------------------------------------------------------------


def test_loading_one_model_too_many_evicts_the_least_recently_used_idle_one() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, max_loaded_models=2)
        for name in ("a", "b", "a"):  # b is now the least recently used
            await (await scheduler.acquire(view(name), backend, options(), None)).release()
        lease = await scheduler.acquire(view("c"), backend, options(), None)
        assert loaded_names(scheduler) == ["a", "c"]
        assert backend.log == ["load a@2048", "load b@2048", "close b@2048", "load c@2048"]
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_a_load_waits_for_a_busy_model_which_takes_no_later_requests() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, num_parallel=2, max_loaded_models=1)
        a = await scheduler.acquire(view("a"), backend, options(), None)
        b = start(scheduler.acquire(view("b"), backend, options(), None))
        await quiet()
        # "a" has a free slot, but this request came after "b", which waits for "a" to go.
        a_again = start(scheduler.acquire(view("a"), backend, options(), None))
        await quiet()
        assert not b.done() and not a_again.done() and loaded_names(scheduler) == ["a"]
        await a.release()
        lease_b = await b
        assert loaded_names(scheduler) == ["b"]
        await quiet()
        assert not a_again.done()
        await lease_b.release()
        lease_a = await a_again
        assert backend.log == ["load a@2048", "close a@2048", "load b@2048", "close b@2048", "load a@2048"]
        await lease_a.release()
        await scheduler.close()

    run(scenario)


def test_memory_pressure_evicts_least_recently_used_idle_models_until_the_model_fits() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, max_loaded_models=5, free_memory=lambda: 10 * GiB - backend.in_memory())
        for name in ("a", "b", "c"):
            await (await scheduler.acquire(view(name, size=3 * GiB), backend, options(), None)).release()
        assert loaded_names(scheduler) == ["a", "b", "c"]  # 1 GiB left
        lease = await scheduler.acquire(view("big", size=6 * GiB), backend, options(), None)
        assert loaded_names(scheduler) == ["big", "c"]  # a, then b: 7 GiB free
        assert backend.log[3:] == ["close a@2048", "close b@2048", "load big@2048"]
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_a_model_that_cannot_fit_fails_with_ollamas_error() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, free_memory=lambda: 8 * GiB - backend.in_memory())
        await (await scheduler.acquire(view("small", size=2 * GiB), backend, options(), None)).release()
        with pytest.raises(InternalError) as raised:
            await scheduler.acquire(view("huge", size=9 * GiB), backend, options(), None)
        assert raised.value.status == 500
        assert raised.value.message == "model requires more system memory (9.0 GiB) than is available (8.0 GiB)"
        assert backend.log == ["load small@2048", "close small@2048"]  # evicted first, then still too small
        assert scheduler.waiting == 0 and scheduler.loaded() == []
        lease = await scheduler.acquire(view("small", size=2 * GiB), backend, options(), None)
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_no_memory_figure_skips_the_check() -> None:
    async def scenario() -> None:
        scheduler = Scheduler(300, free_memory=lambda: None)
        lease = await scheduler.acquire(view("huge", size=1024 * GiB), FakeBackend(), options(), None)
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_human_bytes_matches_ollamas_format() -> None:
    assert [human_bytes(n) for n in (512, 1536, 5 * 1024**2, 44 * GiB + GiB // 20)] == [
        "512 B",
        "1.5 KiB",
        "5.0 MiB",
        "44.0 GiB",
    ]


# --- the queue limit and failures ---------------------------------------------------------------------


def test_more_waiting_requests_than_max_queue_get_ollamas_503() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300, max_queue=2)
        model = view("m")
        running = await scheduler.acquire(model, backend, options(), None)
        queued = [start(scheduler.acquire(model, backend, options(), None)) for _ in range(2)]
        await quiet()
        with pytest.raises(Unavailable) as raised:
            await scheduler.acquire(model, backend, options(), None)
        assert raised.value.status == 503
        assert raised.value.message == "server busy, please try again.  maximum pending requests exceeded"
        assert scheduler.waiting == 2
        await running.release()
        for task in queued:
            await (await task).release()
        assert scheduler.waiting == 0
        await scheduler.close()

    run(scenario)


def test_a_failed_load_reaches_its_request_and_the_next_one_still_runs() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.missing = {"broken"}
        scheduler = Scheduler(300)
        with pytest.raises(NotFound):
            await scheduler.acquire(view("broken"), backend, options(), None)
        assert scheduler.waiting == 0 and scheduler.loaded() == []
        lease = await scheduler.acquire(view("fine"), backend, options(), None)
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_a_failing_memory_estimate_fails_only_its_request() -> None:
    class NoEstimate(FakeBackend):
        def memory_estimate(self, model: ModelView, spec: LoadSpec) -> int:
            raise InternalError(f"cannot size {model.name}")

    async def scenario() -> None:
        scheduler = Scheduler(300, free_memory=lambda: GiB)
        with pytest.raises(InternalError, match="cannot size m"):
            await scheduler.acquire(view("m"), NoEstimate(), options(), None)
        assert scheduler.waiting == 0 and scheduler.loaded() == []
        lease = await scheduler.acquire(view("m"), FakeBackend(), options(), None)
        await lease.release()
        await scheduler.close()

    run(scenario)


def test_the_request_whose_model_is_loading_is_not_counted_against_max_queue() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        scheduler = Scheduler(300, max_queue=1)
        loading = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        queued = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        assert scheduler.waiting == 1
        with pytest.raises(Unavailable):
            await scheduler.acquire(view("m"), backend, options(), None)
        backend.gate.set()
        await (await loading).release()
        await (await queued).release()
        await scheduler.close()

    run(scenario)


def test_close_fails_waiting_requests_and_unloads_everything() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        scheduler = Scheduler(300)
        running = await scheduler.acquire(view("m"), backend, options(), None)
        waiting = start(scheduler.acquire(view("m"), backend, options(), None))
        await quiet()
        await scheduler.close()
        with pytest.raises(Unavailable):
            await waiting
        assert running.model.closed.is_set() and scheduler.loaded() == []
        await running.release()  # a request that outlived the server ends quietly

    run(scenario)


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (1, 3, 512)),
        ({"OLLAMA_NUM_PARALLEL": "0", "OLLAMA_MAX_LOADED_MODELS": "0", "OLLAMA_MAX_QUEUE": "0"}, (1, 3, 0)),
        ({"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_MAX_QUEUE": " 16 "}, (4, 2, 16)),
    ],
)
def test_scheduling_settings_follow_ollamas_variables(env: dict[str, str], expected: tuple[int, int, int]) -> None:
    settings = Settings.from_env(env)
    assert (settings.num_parallel, settings.max_loaded_models, settings.max_queue) == expected


@pytest.mark.parametrize("variable", ["OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MAX_QUEUE"])
@pytest.mark.parametrize("value", ["-1", "two", "2.5", "\u00b2"])
def test_an_invalid_scheduling_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid {variable} "):
        Settings.from_env({variable: value})
