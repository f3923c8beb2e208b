"""Server settings from the environment (docs/configuration.md lists every variable)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import msgspec

from modelyard.runtime.options import parse_keep_alive_setting
from modelyard.runtime.scheduler import DEFAULT_MAX_LOADED_MODELS, DEFAULT_MAX_QUEUE

DEFAULT_PORT = 11434
# Ollama reads bodies without a limit; a chat with several large images runs to tens of megabytes.
DEFAULT_MAX_BODY_SIZE = 1024**3
# What a health check or a load balancer asks: open even when keys are on (MODELYARD_OPEN_PATHS).
DEFAULT_OPEN_PATHS = ("/", "/api/version")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str) -> int | None:
    """MODELYARD_MAX_BODY_SIZE: bytes, optionally with a unit ("512MiB", "2GB"); 0 means no limit."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: expected bytes, optionally with KB, MB, GB, KiB, MiB or GiB")
    size = int(match.group(1)) * _SIZE_UNITS[unit]
    return size or None


def parse_count(env: Mapping[str, str], name: str, default: int, zero: int) -> int:
    """A whole-number setting such as OLLAMA_NUM_PARALLEL: `default` when unset, `zero` for 0."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"invalid {name} {text!r}: expected a whole number, 0 or more")
    return int(text) or zero


def parse_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """A setting with a few allowed values, the first being the default."""
    text = env.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise ValueError(f"invalid {name} {text!r}: expected {' or '.join(choices)}")
    return text


def parse_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86400:
        raise ValueError(f"invalid {name} {text!r}: expected seconds, 0 or more")
    return seconds


def parse_host(value: str | None) -> tuple[str, int]:
    """OLLAMA_HOST as Ollama reads it: `host:port`, `:port`, `host`, optionally with a scheme."""
    text = (value or "").strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if not text:
        return "127.0.0.1", DEFAULT_PORT
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:11434
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:]:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text) if port_text else DEFAULT_PORT
    return host or "127.0.0.1", port


def base_url(value: str | None) -> str:
    """The URL a client uses to reach the server named by OLLAMA_HOST."""
    host, port = parse_host(value)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if (value or "").startswith("https://") else "http"
    return f"{scheme}://{host}:{port}"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models: Path = Path.home() / ".modelyard" / "models"
    keep_alive: float = 300.0  # seconds; math.inf keeps models loaded forever
    context_length: int = 4096  # default num_ctx, capped at each model's trained length
    backends: tuple[str, ...] | None = None  # None: every installed backend
    bundled_models: tuple[str, ...] | None = None  # None: every bundled model whose package is installed
    trace_hooks: bool = False
    origins: tuple[str, ...] = ()
    noprune: bool = False  # keep blobs no model uses any more
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE  # bytes of a request body (None: no limit)
    num_parallel: int = 1  # requests one loaded model serves at once, where its backend allows it
    max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS  # loading one more evicts the least recently used
    max_queue: int = DEFAULT_MAX_QUEUE  # requests that may wait for a model; more get 503
    api_keys: Path | None = None  # the keys file (docs/security.md); None: no keys asked for
    open_paths: tuple[str, ...] = DEFAULT_OPEN_PATHS  # paths answered without a key when keys are on
    log_format: str = "text"  # or "json": one JSON object a log line
    log_prompts: bool = False  # put prompts in request log lines
    shutdown_timeout: float = 10.0  # seconds running requests may take to finish after SIGTERM
    header_timeout: float = 30.0  # seconds a connection has to send a request's headers
    idle_timeout: float = 5.0  # seconds an idle keep-alive connection stays open (uvicorn's default)
    body_timeout: float = 60.0  # seconds a request's body may take to arrive (an upload: per stall)
    write_timeout: float = 60.0  # seconds a client may leave an answer unread before its connection is cut

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        host, port = parse_host(env.get("OLLAMA_HOST"))
        models = env.get("MODELYARD_MODELS") or env.get("OLLAMA_MODELS")
        backends = env.get("MODELYARD_BACKENDS")
        bundled = env.get("MODELYARD_BUNDLED_MODELS", "").strip()
        api_keys = env.get("MODELYARD_API_KEYS", "").strip()
        open_paths = env.get("MODELYARD_OPEN_PATHS")
        return cls(
            host=host,
            port=port,
            models=Path(models).expanduser() if models else Path.home() / ".modelyard" / "models",
            keep_alive=parse_keep_alive_setting(env["OLLAMA_KEEP_ALIVE"]) if env.get("OLLAMA_KEEP_ALIVE") else 300.0,
            context_length=int(env.get("OLLAMA_CONTEXT_LENGTH") or 0) or 4096,  # 0: Ollama picks one; we take 4096
            backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
            bundled_models=None if not bundled else tuple(n.strip() for n in bundled.split(",") if n.strip() != "none"),
            trace_hooks=env.get("MODELYARD_TRACE_HOOKS", "") not in ("", "0", "false"),
            noprune=bool(env.get("OLLAMA_NOPRUNE")),
            origins=tuple(o.strip() for o in env.get("OLLAMA_ORIGINS", "").split(",") if o.strip()),
            max_body_size=parse_size(env["MODELYARD_MAX_BODY_SIZE"])
            if env.get("MODELYARD_MAX_BODY_SIZE")
            else DEFAULT_MAX_BODY_SIZE,
            num_parallel=parse_count(env, "OLLAMA_NUM_PARALLEL", 1, zero=1),
            max_loaded_models=parse_count(
                env, "OLLAMA_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS, zero=DEFAULT_MAX_LOADED_MODELS
            ),
            # 0 is Ollama's unbuffered queue: a request that cannot start at once is turned away.
            max_queue=parse_count(env, "OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE, zero=0),
            api_keys=Path(api_keys).expanduser() if api_keys else None,
            log_format=parse_choice(env, "MODELYARD_LOG_FORMAT", ("text", "json")),
            log_prompts=env.get("MODELYARD_LOG_PROMPTS", "") not in ("", "0", "false"),
            shutdown_timeout=parse_seconds(env, "MODELYARD_SHUTDOWN_TIMEOUT", 10.0),
            header_timeout=parse_seconds(env, "MODELYARD_HEADER_TIMEOUT", 30.0),
            idle_timeout=parse_seconds(env, "MODELYARD_IDLE_TIMEOUT", 5.0),
            body_timeout=parse_seconds(env, "MODELYARD_BODY_TIMEOUT", 60.0),
            write_timeout=parse_seconds(env, "MODELYARD_WRITE_TIMEOUT", 60.0),
            open_paths=DEFAULT_OPEN_PATHS
            if open_paths is None
            else tuple(p.strip() for p in open_paths.split(",") if p.strip() not in ("", "none")),
        )
