"""The upstream config file (MODELYARD_UPSTREAM_CONFIG): pools of upstream servers, one per model name or
pattern, as strict msgspec Structs (an unknown key or a wrong type stops the server with msgspec's message).

    [health]
    interval = 5        # seconds between active probes of each upstream
    failures = 3        # consecutive failures that eject an upstream (the circuit opens)
    cooldown = 10       # seconds an ejected upstream rests before it is tried again

    [[pool]]
    model = "smollm2:135m"          # the name clients use; or a pattern: "qwen3:*", "*"
    timeout = 30                    # seconds to wait for the first byte, and between two chunks
    capabilities = ["completion", "tools"]   # what the model can do, when the upstreams cannot say (openai)
    affinity = 2000                 # same prompt prefix (2000 characters), same upstream: its prefix cache
    [[pool.upstream]]
    url = "http://gpu-1:11434"
    [[pool.upstream]]
    url = "http://gpu-2:8000"
    kind = "openai"
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # the upstream's own name for it
    weight = 2
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

import msgspec

from modelyard.plugin import COMPLETION, EMBEDDING, INSERT, THINKING, TOOLS, VISION

CAPABILITIES = (COMPLETION, TOOLS, INSERT, VISION, EMBEDDING, THINKING)
Kind = Literal["ollama", "openai"]
PATTERN_CHARACTERS = frozenset("*?[")


class UpstreamEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str  # the server's base URL: "http://gpu-1:11434" (ollama), "http://gpu-2:8000" (openai, without /v1)
    kind: Kind = "ollama"
    model: str = ""  # the model's name there; default: the pool's upstream_model, else the requested name
    weight: float = 1.0  # a larger weight takes a larger share of the requests in flight
    api_key: str = ""  # sent as `Authorization: Bearer ...`


class PoolEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str  # a model name, or a shell-style pattern matched against the upstreams' model lists
    upstreams: list[UpstreamEntry] = msgspec.field(name="upstream")
    upstream_model: str = ""  # the upstreams' name for it, unless an upstream names its own
    timeout: float = 300.0  # seconds to wait for the first byte of an answer, and between two chunks
    connect_timeout: float = 5.0
    parallel: int = 64  # requests this router sends to the pool at once; more wait in the scheduler's queue
    affinity: int = 0  # hash this many leading characters of the prompt to pick an upstream (prefix caches)
    # What the model can do, as /api/show reports it; unset: what the upstreams say (an ollama upstream's
    # /api/show; an openai one's model list, which tells completion, and vision where it says multimodal).
    capabilities: list[str] | None = None

    @property
    def is_pattern(self) -> bool:
        return any(character in PATTERN_CHARACTERS for character in self.model)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self.model.lower())


class HealthEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    interval: float = 5.0  # seconds between active probes (0: no probes, passive ejection only)
    failures: int = 3  # consecutive failures that eject an upstream
    cooldown: float = 10.0  # seconds before an ejected upstream is tried again


class UpstreamConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pools: list[PoolEntry] = msgspec.field(default_factory=list, name="pool")
    health: HealthEntry = msgspec.field(default_factory=HealthEntry)


def read_config(path: str) -> UpstreamConfig:
    """The config at `path`, checked; ValueError (which stops `modelyard serve`) names the file and the fault."""
    if not path:
        return UpstreamConfig()
    try:
        config = msgspec.toml.decode(Path(path).read_bytes(), type=UpstreamConfig)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"upstream config {path}: {exc}") from exc
    for pool in config.pools:
        if not pool.upstreams:
            raise ValueError(f"upstream config {path}: pool {pool.model!r} has no upstream")
        if pool.timeout <= 0 or pool.connect_timeout <= 0 or pool.parallel < 1 or pool.affinity < 0:
            raise ValueError(f"upstream config {path}: pool {pool.model!r}: timeouts and parallel must be positive")
        unknown = sorted(set(pool.capabilities or ()) - set(CAPABILITIES))
        if unknown:
            known = ", ".join(CAPABILITIES)
            raise ValueError(f"upstream config {path}: pool {pool.model!r}: unknown capabilities {unknown} ({known})")
        for upstream in pool.upstreams:
            if upstream.weight <= 0:
                raise ValueError(f"upstream config {path}: {upstream.url}: weight must be positive")
            if not upstream.url.startswith(("http://", "https://")):
                raise ValueError(f"upstream config {path}: {upstream.url}: the url needs http:// or https://")
    return config
