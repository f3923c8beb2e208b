"""The upstream backend: models served by other servers, reached over HTTP. It is how modelyard goes past one
machine: a router in front of other modelyard or Ollama boxes (the `ollama` kind) or of OpenAI-compatible
servers such as vLLM, SGLang or llama-server (the `openai` kind). docs/scaling.md describes it.

Models come from two places:
- remote models in the store (`/api/create` with `from` and `remote_host`): served when the host is allowed
  (MODELYARD_UPSTREAM_REMOTES, else OLLAMA_REMOTES, else ollama.com), as Ollama does;
- pools in the config file (MODELYARD_UPSTREAM_CONFIG, config.py): offered through `models()`, so /api/tags,
  /api/show and /api/ps list them, marked remote. SIGHUP reloads the file; running streams keep going.

Each request goes to one upstream of its pool (pool.py: least in flight, health, circuit breaker). Until the
first line of the answer arrives, a refused connection, a timeout or a 502/503/504 moves it to the next
upstream; after it, a failure ends the stream with an error line. Closing the generator (a client that went
away) closes the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlsplit

import msgspec

from modelyard.plugin import (
    COMPLETION,
    EMBEDDING,
    INSERT,
    THINKING,
    TOOLS,
    VISION,
    Backend,
    Completion,
    Details,
    Done,
    Embeddings,
    Event,
    LoadedModel,
    LoadSpec,
    ModelView,
    Remote,
    hookimpl,
)

from . import ollama, openai
from .config import HealthEntry, PoolEntry, UpstreamEntry, read_config
from .pool import Endpoint, ModelFacts, Target, UpstreamError, choose

if TYPE_CHECKING:
    import httpx

DEFAULT_REMOTES = "ollama.com"  # Ollama's default OLLAMA_REMOTES
RETRY_STATUSES = frozenset({502, 503, 504})  # answers that say "try another server"
# Before a probe has read an ollama upstream's /api/show, nothing is refused here: the upstream answers.
UNKNOWN_CAPABILITIES = frozenset({COMPLETION, TOOLS, THINKING, VISION, INSERT, EMBEDDING})


class UpstreamSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """MODELYARD_UPSTREAM_<FIELD> environment variables."""

    config: str = ""  # a TOML file of pools (config.py); empty: remote models in the store only
    remotes: str | None = None  # hosts remote models may name, comma-separated ("*": any); default OLLAMA_REMOTES
    timeout: float = 300.0  # remote models: seconds to the first byte, and between two chunks
    parallel: int = 64  # remote models: requests sent at once to one remote model


class UpstreamBackend(Backend):
    name: ClassVar[str] = "upstream"
    priority: ClassVar[int] = 50  # before the echo fallback, which never serves remote models anyway
    Settings: ClassVar[type[msgspec.Struct]] = UpstreamSettings
    settings: UpstreamSettings

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.config = read_config(self.settings.config)
        remotes = self.settings.remotes
        if remotes is None:
            remotes = os.environ.get("OLLAMA_REMOTES", DEFAULT_REMOTES)
        self.remotes = frozenset(host.strip().lower() for host in remotes.split(",") if host.strip())
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        self.client: httpx.AsyncClient | None = None  # made on first use, on the server's event loop
        self.probes: asyncio.Task[None] | None = None
        if self.settings.config and hasattr(signal, "SIGHUP"):
            # Installed at once: SIGHUP's default action ends the process. Not possible off the main thread
            # (an app built in a test's thread), where the file is simply not reloaded.
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGHUP, lambda signum, frame: self.reload())

    # --- which models ---------------------------------------------------------------------------------

    def serves(self, model: ModelView) -> bool:
        if model.source == self.name:
            return True
        return model.remote is not None and self._allowed(model.remote.host)

    def _allowed(self, host: str) -> bool:
        hostname = (urlsplit(host).hostname or "").lower()
        return "*" in self.remotes or hostname in self.remotes

    def capabilities(self, model: ModelView) -> frozenset[str]:
        """The pool's `capabilities` when the config sets them; else what its upstreams say their model can do
        (any of them: the request goes to one that can), as their last probe read it; else (no probe yet)
        everything, and the upstream refuses for itself."""
        pool, targets = self.targets(model)
        if pool.capabilities is not None:
            return frozenset(pool.capabilities)
        known = [facts.capabilities for facts in self._facts(targets)]
        return frozenset().union(*known) if known else UNKNOWN_CAPABILITIES

    def _facts(self, targets: list[Target]) -> list[ModelFacts]:
        """What the pool's upstreams said about their model; an openai upstream not yet probed can complete."""
        found = []
        for target in targets:
            facts = target.endpoint.facts_of(target.model)
            if facts is None and target.endpoint.kind == "openai":
                facts = ModelFacts(frozenset({COMPLETION}))
            if facts is not None:
                found.append(facts)
        return found

    def memory_estimate(self, model: ModelView, spec: LoadSpec) -> int:
        return 0  # nothing is loaded here

    def models(self) -> list[ModelView]:
        self._start_probes()
        views: list[ModelView] = []
        for pool in self.config.pools:
            if pool.is_pattern:
                names = {
                    name
                    for upstream in pool.upstreams
                    for name in (self._endpoint(upstream).models or {}).values()
                    if pool.matches(name)
                }
                views.extend(self._view(pool, name) for name in sorted(names))
            else:
                views.append(self._view(pool, pool.model))
        return views

    def _view(self, pool: PoolEntry, name: str) -> ModelView:
        first = pool.upstreams[0]
        targets = [self._target(pool, upstream, name) for upstream in pool.upstreams]
        # The first upstream's details (family, size, quantization) that a probe has read.
        details = next((facts.details for facts in self._facts(targets) if facts.details is not None), None)
        return ModelView(
            name=name,
            format="remote",
            # Changes with the pool, so a reloaded config reloads the model (a sha256, as clients expect).
            digest=hashlib.sha256(f"{name} {msgspec.json.encode(pool).decode()}".encode()).hexdigest(),
            remote=Remote(host=first.url, model=first.model or pool.upstream_model or name),
            details=details or Details(),
            source=self.name,
        )

    def _pool(self, model: ModelView) -> PoolEntry:
        """The pool that serves a model: the config's, or one made for a remote model of the store."""
        if model.source == self.name:
            for pool in self.config.pools:
                if pool.model.lower() == model.name.lower() or (pool.is_pattern and pool.matches(model.name)):
                    return pool
        if model.remote is None:
            raise UpstreamError(f"no upstream pool serves model '{model.name}' any more", 404)
        return PoolEntry(
            model=model.name,
            upstreams=[UpstreamEntry(url=model.remote.host)],
            upstream_model=model.remote.model,
            timeout=self.settings.timeout,
            parallel=self.settings.parallel,
        )

    def targets(self, model: ModelView) -> tuple[PoolEntry, list[Target]]:
        pool = self._pool(model)
        return pool, [self._target(pool, upstream, model.name) for upstream in pool.upstreams]

    def _target(self, pool: PoolEntry, upstream: UpstreamEntry, name: str) -> Target:
        target = Target(self._endpoint(upstream), upstream.model or pool.upstream_model or name, upstream.weight)
        target.endpoint.wanted.add(target.model.lower())  # the probes read what it can do
        return target

    def _endpoint(self, upstream: UpstreamEntry) -> Endpoint:
        key = (upstream.url.rstrip("/"), upstream.kind)
        if key not in self.endpoints:
            self.endpoints[key] = Endpoint(upstream.url, upstream.kind, upstream.api_key)
        return self.endpoints[key]

    # --- loading ----------------------------------------------------------------------------------------

    async def load(self, model: ModelView, spec: LoadSpec) -> UpstreamModel:
        self._start_probes()
        pool, _ = self.targets(model)
        return UpstreamModel(self, model, spec.context_length, pool.parallel)

    def http(self) -> httpx.AsyncClient:
        import httpx  # on first use: a server without upstreams never loads it

        if self.client is None:
            # Timeouts are set per request (each pool has its own); no pool limit: the scheduler bounds it.
            # Idle connections are dropped before the upstream's own keep-alive timeout (uvicorn's and
            # llama-server's are 5 s) would close them under a request.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0)
            self.client = httpx.AsyncClient(timeout=None, limits=limits)
        return self.client

    # --- health -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._start_probes()  # at once: what the upstreams have and can do is known before the first request

    def _start_probes(self) -> None:
        """Start the active probes once, on the server's event loop."""
        if self.probes is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the server's loop (a listing from a thread): later
            return
        self.probes = loop.create_task(self._probe_forever())

    def reload(self) -> None:
        """Read the config file again (SIGHUP). A bad file keeps the old config; streams are not touched."""
        try:
            self.config = read_config(self.settings.config)
        except ValueError as exc:
            logging.getLogger(__name__).error("upstream config not reloaded: %s", exc)

    @property
    def health(self) -> HealthEntry:
        return self.config.health

    async def _probe_forever(self) -> None:
        while True:
            configured = {self._endpoint(upstream) for pool in self.config.pools for upstream in pool.upstreams}
            await asyncio.gather(*(self.probe(endpoint) for endpoint in configured | set(self.endpoints.values())))
            if self.health.interval <= 0:
                return
            await asyncio.sleep(self.health.interval)

    async def probe(self, endpoint: Endpoint) -> None:
        """Ask the upstream for its models: it is healthy when it answers, and the answer says what it has."""
        import httpx  # on first use: a server without upstreams never loads it

        path = "/v1/models" if endpoint.kind == "openai" else "/api/tags"
        digests: dict[str, str] = {}  # an ollama upstream's models and their digests
        try:
            response = await self.http().get(endpoint.url + path, headers=_headers(endpoint), timeout=5.0)
            response.raise_for_status()
            if endpoint.kind == "openai":
                listed = openai.model_list(response.content)
                names = list(listed)
                endpoint.facts = {name.lower(): ModelFacts(capabilities) for name, capabilities in listed.items()}
            else:
                digests = {tag.name: tag.digest for tag in msgspec.json.decode(response.content, type=Tags).models}
                names = list(digests)
        except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            # A server that runs one request at a time (llama-cpp-python's) answers a probe only after the
            # stream it is busy with: while requests are in flight, they tell its health, not the probe.
            if endpoint.in_flight == 0:
                endpoint.failed(f"probe failed: {_describe(exc)}", self.health)
            return
        endpoint.models = {name.lower(): name for name in names}
        endpoint.succeeded()
        if endpoint.kind == "ollama":
            await self._read_facts(endpoint, {name.lower(): digest for name, digest in digests.items()})

    async def _read_facts(self, endpoint: Endpoint, digests: dict[str, str]) -> None:
        """Ask an ollama upstream's /api/show about each of its models this router serves, once per digest."""
        import httpx

        wanted = {listed.lower() for listed in map(endpoint.listed_name, self._wanted(endpoint)) if listed}
        for name in sorted(wanted):
            known = endpoint.facts.get(name)
            if known is not None and known.digest == digests.get(name, ""):
                continue
            try:
                response = await self.http().post(
                    endpoint.url + "/api/show", json={"model": name}, headers=_headers(endpoint), timeout=5.0
                )
                response.raise_for_status()
                capabilities, details = ollama.shown(response.content)
            except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
                logging.getLogger(__name__).info("%s: /api/show of %s failed: %s", endpoint.url, name, exc)
                continue
            endpoint.facts[name] = ModelFacts(capabilities, details, digests.get(name, ""))

    def _wanted(self, endpoint: Endpoint) -> set[str]:
        """The names of the models this router serves from `endpoint`: its pools' (a pattern pool: every
        model of the endpoint's list that matches) and those requests named (remote models of the store)."""
        wanted = set(endpoint.wanted)
        for pool in self.config.pools:
            for upstream in pool.upstreams:
                if self._endpoint(upstream) is not endpoint:
                    continue
                if pool.is_pattern and not (upstream.model or pool.upstream_model):
                    wanted.update(name for name in (endpoint.models or {}).values() if pool.matches(name))
                elif not pool.is_pattern:
                    wanted.add(upstream.model or pool.upstream_model or pool.model)
        return wanted

    async def close(self) -> None:
        if self.probes is not None:
            self.probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.probes
            self.probes = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class Tags(msgspec.Struct):
    models: list[TagModel]


class TagModel(msgspec.Struct):
    name: str
    digest: str = ""


def _headers(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Retry(Exception):
    """This upstream failed before the first byte: try the next one."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


class UpstreamModel(LoadedModel):
    """A model served by a pool of upstreams. Nothing is held here but the view; the pool is looked up for
    each request, so a reloaded config applies to the next request."""

    def __init__(self, backend: UpstreamBackend, view: ModelView, context_length: int, parallel: int) -> None:
        self.backend = backend
        self.view = view
        self.context_length = context_length
        self.parallel = parallel

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        pool, targets = self.backend.targets(self.view)
        affinity = prefix(completion, pool.affinity)
        tried: dict[Endpoint, str] = {}  # and what went wrong there
        failures: list[UpstreamError] = []
        while True:
            target = self._next(targets, tried, failures, affinity)
            try:
                # aclosing: a client that leaves closes the upstream request now, not when the GC gets to it.
                async with contextlib.aclosing(self._forward(target, pool, completion)) as events:
                    async for event in events:
                        yield event
                return
            except Retry as retry:
                tried[target.endpoint] = retry.error.message
                failures.append(retry.error)

    async def embed(self, inputs: list[str], *, truncate: bool) -> Embeddings:
        """The vectors from one upstream of the pool, with the same failover as a generation's."""
        pool, targets = self.backend.targets(self.view)
        tried: dict[Endpoint, str] = {}
        failures: list[UpstreamError] = []
        while True:
            target = self._next(targets, tried, failures)
            try:
                return await self._embed_at(target, pool, inputs, truncate)
            except Retry as retry:
                tried[target.endpoint] = retry.error.message
                failures.append(retry.error)

    def _next(
        self, targets: list[Target], tried: dict[Endpoint, str], failures: list[UpstreamError], affinity: bytes = b""
    ) -> Target:
        """The upstream to try next; when none is left, the error that says why."""
        try:
            target = choose(targets, tried, self.view.name, affinity)
        except UpstreamError as none_left:
            # Every upstream failed before answering: a timeout each time is the gateway's 504.
            if failures and all(failure.status == 504 for failure in failures):
                raise UpstreamError("; ".join(failure.message for failure in failures), 504) from None
            raise none_left from None
        tried[target.endpoint] = ""
        return target

    async def _embed_at(self, target: Target, pool: PoolEntry, inputs: list[str], truncate: bool) -> Embeddings:
        import httpx  # on first use: a server without upstreams never loads it

        endpoint, health = target.endpoint, self.backend.health
        if endpoint.kind == "openai":  # OpenAI's API cannot refuse a long input: the upstream cuts or refuses
            path, body = openai.embed_request(inputs, target.model)
        else:
            path, body = ollama.embed_request(inputs, truncate, target.model)
        timeout = httpx.Timeout(pool.timeout, connect=pool.connect_timeout)
        endpoint.in_flight += 1
        try:
            client = self.backend.http()
            request = client.build_request(
                "POST", endpoint.url + path, json=body, headers=_headers(endpoint), timeout=timeout
            )
            response = await _send(client, request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            error = UpstreamError(f"upstream {endpoint.url} did not answer within {pool.timeout:g} s", 504)
            endpoint.failed(error.message, health)
            raise Retry(error) from None
        except httpx.TransportError as exc:
            error = UpstreamError(f"upstream {endpoint.url} failed: {_describe(exc)}", 503)
            endpoint.failed(error.message, health)
            raise Retry(error) from None
        finally:
            endpoint.in_flight -= 1
        if response.status_code >= 400:
            await self._refused(response, endpoint)
        endpoint.succeeded()
        try:
            return (
                openai.embeddings(response.content)
                if endpoint.kind == "openai"
                else ollama.embeddings(response.content)
            )
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise UpstreamError(
                f"upstream {endpoint.url} sent embeddings this router cannot read: {exc}", 502
            ) from None

    async def _forward(self, target: Target, pool: PoolEntry, completion: Completion) -> AsyncGenerator[Event]:
        import httpx  # on first use: a server without upstreams never loads it

        endpoint, health = target.endpoint, self.backend.health
        protocol = openai if endpoint.kind == "openai" else ollama
        path, body = protocol.request(completion, target.model)
        client = self.backend.http()
        timeout = httpx.Timeout(pool.timeout, connect=pool.connect_timeout)
        request = client.build_request(
            "POST", endpoint.url + path, json=body, headers=_headers(endpoint), timeout=timeout
        )
        reader = protocol.StreamReader()  # it times the answer from here (the openai kind measures durations)
        endpoint.in_flight += 1
        response: httpx.Response | None = None
        lines: AsyncIterator[str] | None = None
        try:
            try:
                response = await _send(client, request)
                if response.status_code >= 400:
                    await self._refused(response, endpoint)
                lines = response.aiter_lines()
                first = await _first_line(lines)
            except httpx.TimeoutException:
                error = UpstreamError(f"upstream {endpoint.url} did not answer within {pool.timeout:g} s", 504)
                endpoint.failed(error.message, health)
                raise Retry(error) from None
            except httpx.TransportError as exc:
                error = UpstreamError(f"upstream {endpoint.url} failed: {_describe(exc)}", 503)
                endpoint.failed(error.message, health)
                raise Retry(error) from None
            done = False
            try:
                for event in reader.events(first):
                    done = done or type(event) is Done
                    yield event
                async for line in lines:
                    if not line.strip():
                        continue
                    for event in reader.events(line):
                        done = done or type(event) is Done
                        yield event
                for event in reader.finish():
                    done = done or type(event) is Done
                    yield event
            except httpx.TimeoutException:
                message = f"upstream {endpoint.url} stopped answering: nothing for {pool.timeout:g} s"
                endpoint.failed(message, health)
                raise UpstreamError(message, 504) from None
            except httpx.TransportError as exc:
                message = f"upstream {endpoint.url} broke off the answer: {_describe(exc)}"
                endpoint.failed(message, health)
                raise UpstreamError(message, 502) from None
            except ollama.UpstreamFault as fault:
                raise UpstreamError(str(fault), 500) from None
            if not done:
                message = f"upstream {endpoint.url} ended the answer without its final chunk"
                endpoint.failed(message, health)
                raise UpstreamError(message, 502)
            endpoint.succeeded()
        finally:
            endpoint.in_flight -= 1
            if lines is not None:
                await cast(AsyncGenerator[str], lines).aclose()
            if response is not None:
                await response.aclose()  # a client that went away: the upstream sees its request closed

    async def _refused(self, response: httpx.Response, endpoint: Endpoint) -> None:
        """An error status before any answer: the upstream's own error, or a Retry for 502/503/504."""
        message = ollama.error_message(await response.aread())
        status = response.status_code
        if status in RETRY_STATUSES:
            error = UpstreamError(f"upstream {endpoint.url} answered {status}: {message}", status)
            if status != 503:  # 503 is a busy server (a full queue), not a broken one
                endpoint.failed(error.message, self.backend.health)
            raise Retry(error)
        endpoint.succeeded()  # it answered: the request was wrong, not the server
        raise UpstreamError(message, status)


def prefix(completion: Completion, length: int) -> bytes:
    """The first `length` characters of what the model reads (b"" when affinity is off)."""
    if length <= 0:
        return b""
    messages = completion.messages or completion.conversation
    text = "\n".join(f"{m.role}: {m.content}" for m in messages) if messages else completion.prompt or ""
    return text[:length].encode()


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send a request, streamed. A kept-alive connection the upstream closed while it idled fails before any
    answer (RemoteProtocolError: "Server disconnected without sending a response"): the request never
    reached the upstream, so it is sent once more, on a new connection, rather than failed over."""
    import httpx

    try:
        return await client.send(request, stream=True)
    except httpx.RemoteProtocolError:
        return await client.send(request, stream=True)


async def _first_line(lines: AsyncIterator[str]) -> str:
    """The first line that is not empty (the first byte of the answer: after it, no failover)."""
    import httpx  # on first use: a server without upstreams never loads it

    async for line in lines:
        if line.strip():
            return line
    raise httpx.RemoteProtocolError("the answer ended before its first line")


@hookimpl
def register_backends(register: Any) -> None:
    register(UpstreamBackend)
