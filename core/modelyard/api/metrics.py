"""GET /metrics: Prometheus metrics with vLLM's meanings under a `modelyard:` prefix, so that dashboards
made for vLLM map one to one (`vllm:time_to_first_token_seconds` is `modelyard:time_to_first_token_seconds`).

Every inference metric has a `model` and a `backend` label. They are measured by observers in the API
layer, not in the runtime: `MeteredScheduler` notes which model and backend a request leased and counts
the requests waiting for a lease; `MeteredInference` watches the events of each generation (the first
token, the gaps between tokens, the final `Done` with its counts and its load, queue and total durations).
What is loaded, and the requests running on it, are read from the scheduler when /metrics is asked.
Each app has its own registry (no module state: tests build many apps).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import AsyncGenerator, Coroutine, Iterator
from contextlib import aclosing
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from modelyard.api.logs import CURRENT_EXCHANGE, Exchange
from modelyard.api.shutdown import Drain
from modelyard.errors import Unavailable
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.contract import Backend, Done, Event, ModelView, TextDelta, ThinkingDelta, ToolCallEvent
from modelyard.runtime.inference import EmbedRequest, EmbedResult, GenerationRequest, Inference
from modelyard.runtime.options import Options
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import SHUTTING_DOWN, Lease, Scheduler

MODEL_LABELS = ("model", "backend")
# vLLM's buckets for request latencies (seconds) and token counts.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BUCKETS_LONG = (*LATENCY_BUCKETS, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
TOKEN_GAP_BUCKETS_LONG = (*TOKEN_GAP_BUCKETS, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED = "unmatched"  # the route label of a path that matches no route
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OUTPUT_EVENTS = (TextDelta, ThinkingDelta, ToolCallEvent)
NS = 1e9


class Metrics:
    """The app's metrics, in a registry of its own."""

    def __init__(self, scheduler: MeteredScheduler) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = MODEL_LABELS
        self.time_to_first_token = Histogram(
            "modelyard:time_to_first_token_seconds",
            "Time from the request's arrival to its first output token.",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "modelyard:inter_token_latency_seconds",
            "Time between two output chunks of a stream (one token each, save where stop strings hold text back).",
            labels,
            buckets=TOKEN_GAP_BUCKETS_LONG,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "modelyard:e2e_request_latency_seconds",
            "Time from the request's arrival to its last token.",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.queue_time = Histogram(
            "modelyard:request_queue_time_seconds",
            "Time a request waited for a free slot on its model (its model's load not included).",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.prefill_time = Histogram(
            "modelyard:request_prefill_time_seconds",
            "Time spent evaluating the prompt (Ollama's prompt_eval_duration).",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.decode_time = Histogram(
            "modelyard:request_decode_time_seconds",
            "Time spent generating after the first token (Ollama's eval_duration).",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "modelyard:prompt_tokens", "Prompt tokens evaluated.", labels, registry=r
        )  # exposed as modelyard:prompt_tokens_total
        self.generation_tokens = Counter("modelyard:generation_tokens", "Tokens generated.", labels, registry=r)
        self.request_prompt_tokens = Histogram(
            "modelyard:request_prompt_tokens", "Prompt tokens per request.", labels, buckets=TOKEN_BUCKETS, registry=r
        )
        self.request_generation_tokens = Histogram(
            "modelyard:request_generation_tokens",
            "Generated tokens per request.",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.request_success = Counter(
            "modelyard:request_success",
            "Generations that ended, by how: stop, length, abort (the client left) or error.",
            (*labels, "finished_reason"),
            registry=r,
        )
        self.model_load_time = Histogram(
            "modelyard:model_load_time_seconds",
            "Time spent loading (or reloading) a model for a request.",
            labels,
            buckets=LATENCY_BUCKETS_LONG,
            registry=r,
        )
        self.http_requests = Counter(
            "modelyard:http_requests",
            "HTTP requests answered, by route and status.",
            ("route", "method", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "modelyard:http_request_duration_seconds",
            "Time to answer an HTTP request, streams included.",
            ("route", "method"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        r.register(SchedulerCollector(scheduler))

    def observe_http(self, exchange: Exchange) -> None:
        # Labels a client cannot multiply: the route's template (one label for every path that matches
        # none) and a known method.
        route = exchange.route or UNMATCHED
        method = exchange.method if exchange.method in HTTP_METHODS else "other"
        self.http_requests.labels(route, method, str(exchange.status)).inc()
        self.http_duration.labels(route, method).observe(exchange.finished or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class SchedulerCollector(Collector):
    """Gauges read from the scheduler when /metrics is asked: requests running and waiting, models loaded."""

    def __init__(self, scheduler: MeteredScheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # the families are built in collect(); nothing to check them against at registration

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "modelyard:num_requests_running", "Requests running on a loaded model.", labels=MODEL_LABELS
        )
        waiting = GaugeMetricFamily(
            "modelyard:num_requests_waiting",
            "Requests waiting for a slot on their model, or for their model to load.",
            labels=MODEL_LABELS,
        )
        loaded = GaugeMetricFamily("modelyard:models_loaded", "Models loaded, by backend.", labels=("backend",))
        memory = GaugeMetricFamily(
            "modelyard:model_memory_bytes", "Memory a loaded model takes (as /api/ps's size).", labels=MODEL_LABELS
        )
        vram = GaugeMetricFamily(
            "modelyard:model_vram_bytes", "Accelerator memory a loaded model takes.", labels=MODEL_LABELS
        )
        # vLLM's prefix cache counters, in tokens, per loaded model (a reload starts them again).
        queries = CounterMetricFamily(
            "modelyard:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", labels=MODEL_LABELS
        )
        hits = CounterMetricFamily(
            "modelyard:prefix_cache_hits", "Prompt tokens the prefix cache held (not evaluated).", labels=MODEL_LABELS
        )
        per_backend: Tally[str] = Tally()
        for runner in self.scheduler.loaded():
            labels = [runner.model.name, runner.backend.name]
            running.add_metric(labels, runner.leases)
            queries.add_metric(labels, runner.loaded.prefix_cache_queries)
            hits.add_metric(labels, runner.loaded.prefix_cache_hits)
            memory.add_metric(labels, runner.loaded.size)
            vram.add_metric(labels, runner.loaded.size_vram)
            per_backend[runner.backend.name] += 1
        for (model, backend), count in self.scheduler.waiting_by_model.items():
            waiting.add_metric([model, backend], count)
        for backend, count in per_backend.items():
            loaded.add_metric([backend], count)
        yield from (running, waiting, loaded, memory, vram, queries, hits)


class MeteredScheduler(Scheduler):
    """The scheduler, noting each request's model and backend (for its metrics and its log line),
    counting the requests that wait, and turning them away once a shutdown's deadline has passed."""

    def __init__(self, *args: Any, drain: Drain, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drain = drain
        self.waiting_by_model: Tally[tuple[str, str]] = Tally()

    async def acquire(self, model: ModelView, backend: Backend, options: Options, keep_alive: float | None) -> Lease:
        exchange = CURRENT_EXCHANGE.get()
        if exchange is not None:
            exchange.model, exchange.backend = model.name, backend.name
        labels = (model.name, backend.name)
        self.waiting_by_model[labels] += 1
        try:
            if self.drain.expired:
                raise Unavailable(SHUTTING_DOWN)
            lease = await self._before_deadline(super().acquire(model, backend, options, keep_alive))
        finally:
            self.waiting_by_model[labels] -= 1
            if not self.waiting_by_model[labels]:
                del self.waiting_by_model[labels]
        if exchange is not None:  # a generation's Done says it again; an embedding has only this
            exchange.load_duration, exchange.queue_duration = lease.load_duration / NS, lease.queue_duration / NS
        return lease

    async def _before_deadline(self, acquiring: Coroutine[Any, Any, Lease]) -> Lease:
        """A lease granted before a shutdown's deadline, or 503 (a request may be waiting when the signal
        comes, so every wait is raced against the deadline: a task a request, not a token)."""
        lease = asyncio.ensure_future(acquiring)
        deadline = asyncio.ensure_future(self.drain.wait_expired())
        try:
            await asyncio.wait({lease, deadline}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            deadline.cancel()
            if not lease.done():
                lease.cancel()
                await asyncio.wait({lease})  # the scheduler withdraws the request
        if lease.cancelled():
            raise Unavailable(SHUTTING_DOWN)
        return lease.result()


class MeteredInference(Inference):
    """The inference service, with each generation's events watched for metrics and the request log."""

    def __init__(
        self,
        catalog: ModelCatalog,
        backends: Backends,
        scheduler: Scheduler,
        context_length: int,
        *,
        metrics: Metrics,
        drain: Drain,
        log_prompts: bool = False,
    ) -> None:
        super().__init__(catalog, backends, scheduler, context_length)
        self.metrics = metrics
        self.drain = drain
        self.log_prompts = log_prompts

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event]:
        async with aclosing(self._observed(super().generate(request), request)) as events:
            async for event in events:
                yield event

    async def chat(self, request: GenerationRequest) -> AsyncGenerator[Event]:
        async with aclosing(self._observed(super().chat(request), request)) as events:
            async for event in events:
                yield event

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """An embedding request, measured as vLLM measures its pooling requests: its prompt tokens, its
        end-to-end latency, its queue time and its outcome (`stop` when the vectors came back). A request
        that only loads the model is not one; inputs are never logged (they are documents, not prompts)."""
        exchange = CURRENT_EXCHANGE.get() or Exchange("", "", "", None)
        outcome: str | None = None
        try:
            result = await super().embed(request)
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "abort"
            raise
        except BaseException:
            outcome = "error"
            raise
        else:
            if request.inputs:
                outcome = "stop"
                self._embedded(result, exchange)
            return result
        finally:
            if outcome is not None and exchange.model is not None:  # None: no model was leased (404, 400)
                labels = (exchange.model, exchange.backend or "")
                self.metrics.request_success.labels(*labels, outcome).inc()
                exchange.reason = outcome

    def _embedded(self, result: EmbedResult, exchange: Exchange) -> None:
        m = self.metrics
        labels = (exchange.model or "", exchange.backend or "")
        exchange.prompt_tokens = result.prompt_eval_count
        exchange.total_duration = result.total_duration / NS
        if exchange.load_duration:
            m.model_load_time.labels(*labels).observe(exchange.load_duration)
        if exchange.queue_duration is not None:
            m.queue_time.labels(*labels).observe(exchange.queue_duration)
        m.e2e_latency.labels(*labels).observe(exchange.total_duration)
        m.prompt_tokens.labels(*labels).inc(result.prompt_eval_count)
        m.request_prompt_tokens.labels(*labels).observe(result.prompt_eval_count)

    async def _observed(self, events: AsyncGenerator[Event], request: GenerationRequest) -> AsyncGenerator[Event]:
        exchange = CURRENT_EXCHANGE.get() or Exchange("", "", "", None)  # a caller without the middleware
        if self.log_prompts:
            last = request.messages[-1].content if request.messages else None
            exchange.prompt = request.prompt or (last if isinstance(last, str) else None)
        m = self.metrics
        previous: int | None = None  # when the last output event came (perf_counter_ns)
        outcome: str | None = None
        started = False
        try:
            async with aclosing(events) as inner:
                async for event in inner:
                    started = True
                    labels = (exchange.model or "", exchange.backend or "")
                    now = time.perf_counter_ns()
                    if isinstance(event, OUTPUT_EVENTS):
                        if previous is None:
                            exchange.ttft = (now - request.started) / NS
                            m.time_to_first_token.labels(*labels).observe(exchange.ttft)
                        else:
                            m.inter_token_latency.labels(*labels).observe((now - previous) / NS)
                        previous = now
                    elif isinstance(event, Done):
                        outcome = event.reason
                        self._finished(event, labels, exchange)
                    if self.drain.expired and outcome is None:
                        # A shutdown's deadline: the stream ends with an error line, the client knows why.
                        outcome = "abort"
                        raise Unavailable(SHUTTING_DOWN)
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            outcome = outcome or "abort"  # closed early: the client went away
            raise
        except BaseException:
            outcome = outcome or "error"
            raise
        finally:
            if started and outcome not in ("load", "unload"):
                m.request_success.labels(exchange.model or "", exchange.backend or "", outcome or "abort").inc()
                exchange.reason = outcome or "abort"

    def _finished(self, done: Done, labels: tuple[str, str], exchange: Exchange) -> None:
        m = self.metrics
        exchange.load_duration = done.load_duration / NS
        exchange.queue_duration = done.queue_duration / NS
        exchange.total_duration = done.total_duration / NS
        if done.load_duration:
            m.model_load_time.labels(*labels).observe(done.load_duration / NS)
        if done.reason in ("load", "unload"):
            return
        exchange.prompt_tokens, exchange.eval_tokens = done.prompt_eval_count, done.eval_count
        m.queue_time.labels(*labels).observe(done.queue_duration / NS)
        m.e2e_latency.labels(*labels).observe(done.total_duration / NS)
        m.prefill_time.labels(*labels).observe(done.prompt_eval_duration / NS)
        m.decode_time.labels(*labels).observe(done.eval_duration / NS)
        m.prompt_tokens.labels(*labels).inc(done.prompt_eval_count)
        m.generation_tokens.labels(*labels).inc(done.eval_count)
        m.request_prompt_tokens.labels(*labels).observe(done.prompt_eval_count)
        m.request_generation_tokens.labels(*labels).observe(done.eval_count)


EXPOSITION_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")  # Litestar adds the charset of text/*


@get("/metrics", media_type=EXPOSITION_TYPE)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.metrics.exposition(), media_type=EXPOSITION_TYPE)
