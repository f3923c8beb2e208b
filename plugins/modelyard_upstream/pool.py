"""Upstream servers, their health, and the choice of one for a request.

Each upstream server (an `Endpoint`, shared by every pool that names it) keeps its requests in flight, its
consecutive failures and a circuit breaker: `failures` failures in a row (refused connections, timeouts,
5xx answers, streams cut short) eject it for `cooldown` seconds; after that it is tried again (half-open),
and one more failure ejects it again at once while a success closes the circuit. Active probes (the
upstream's model list) close or open it too, and tell which models it has.

A request goes to the eligible upstream with the fewest requests in flight per unit of weight; among equals,
the one chosen longest ago.
"""

from __future__ import annotations

import hashlib
import time

import msgspec

from modelyard.plugin import Details, ModelyardError

from .config import HealthEntry, Kind

AFFINITY_SLACK = 2  # requests in flight an affine upstream may have beyond the least loaded one


class UpstreamError(ModelyardError):
    """An error with the status it is answered with (an upstream's own, or the router's 502/503/504)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ModelFacts(msgspec.Struct, frozen=True):
    """What an upstream says one of its models can do and is: its /api/show (ollama kind), or its /v1/models
    entry (openai kind). `digest` is the model's in the upstream's list: a new one asks again."""

    capabilities: frozenset[str]
    details: Details | None = None
    digest: str = ""


class Endpoint:
    """One upstream server as this router sees it."""

    def __init__(self, url: str, kind: Kind, api_key: str = "") -> None:
        self.url = url.rstrip("/")
        self.kind = kind
        self.api_key = api_key
        self.in_flight = 0
        self.failures = 0  # consecutive
        self.ejected_until = 0.0  # time.monotonic(); the circuit is open before it
        self.last_error = ""
        self.last_chosen = 0.0
        self.models: dict[str, str] | None = None  # its models from the last probe: lower case -> as named
        self.facts: dict[str, ModelFacts] = {}  # by the model's name there, lower case
        self.wanted: set[str] = set()  # its models that requests or listings named (their facts are read)

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def succeeded(self) -> None:
        self.failures = 0
        self.ejected_until = 0.0
        self.last_error = ""

    def failed(self, reason: str, health: HealthEntry) -> None:
        self.failures += 1
        self.last_error = reason
        if self.failures >= health.failures:
            self.ejected_until = time.monotonic() + health.cooldown

    def has(self, model: str) -> bool:
        """Whether it serves `model`, as far as its last probe told (unknown counts as yes)."""
        return self.models is None or self.listed_name(model) is not None

    def listed_name(self, model: str) -> str | None:
        """The name its list gives `model` (a name without a tag is the `:latest` one), None if absent."""
        lowered = model.lower()
        for key in (lowered, f"{lowered}:latest") if ":" not in lowered else (lowered,):
            if self.models is not None and key in self.models:
                return self.models[key]
        return None

    def facts_of(self, model: str) -> ModelFacts | None:
        """What the last probe learnt about `model` there (None: nothing yet)."""
        listed = self.listed_name(model)
        return self.facts.get((listed or model).lower())

    def state(self, now: float) -> str:
        if self.ejected(now):
            rest = self.ejected_until - now
            return f"ejected for {rest:.0f} s more after {self.failures} failures ({self.last_error})"
        if self.last_error:
            return self.last_error
        return "ready"


class Target(msgspec.Struct, frozen=True):
    """An upstream of a pool, with the model's name there and its share."""

    endpoint: Endpoint
    model: str
    weight: float = 1.0


def choose(targets: list[Target], tried: dict[Endpoint, str], wanted: str, affinity: bytes = b"") -> Target:
    """The eligible target with the fewest requests in flight per weight, leaving out those this request
    `tried` already (with what went wrong there); a 503 with each upstream's reason when none is left.

    With an `affinity` key (a prompt's prefix), the target that key hashes to (rendezvous hashing: the
    same upstream for the same prefix while the set is the same, and only that upstream's keys move when it
    goes) unless it has AFFINITY_SLACK more requests in flight than the least loaded."""
    now = time.monotonic()
    eligible = [
        target
        for target in targets
        if target.endpoint not in tried and not target.endpoint.ejected(now) and target.endpoint.has(target.model)
    ]
    if not eligible and all(not target.endpoint.has(target.model) for target in targets):
        raise UpstreamError(f"model '{wanted}' not found", 404)  # Ollama's words: clients match on them
    if not eligible:
        reasons = "; ".join(f"{target.endpoint.url}: {_reason(target, tried, now)}" for target in targets)
        raise UpstreamError(f"no healthy upstream for model '{wanted}' ({reasons})", 503)
    best = min(eligible, key=lambda target: (target.endpoint.in_flight / target.weight, target.endpoint.last_chosen))
    if affinity:
        preferred = max(eligible, key=lambda target: _rendezvous(affinity, target))
        if preferred.endpoint.in_flight / preferred.weight <= best.endpoint.in_flight / best.weight + AFFINITY_SLACK:
            best = preferred
    best.endpoint.last_chosen = now
    return best


def _rendezvous(key: bytes, target: Target) -> float:
    digest = hashlib.blake2b(key + target.endpoint.url.encode(), digest_size=8).digest()
    return target.weight * int.from_bytes(digest, "big")


def _reason(target: Target, tried: dict[Endpoint, str], now: float) -> str:
    endpoint = target.endpoint
    if tried.get(endpoint):
        return tried[endpoint]
    if endpoint in tried or endpoint.ejected(now):
        return endpoint.state(now)
    return f"does not have model '{target.model}'"
