"""API keys: who may call the server, which models each key may use, and how often.

Keys live in a JSON file (MODELYARD_API_KEYS) as SHA-256 hashes, each with a name, the models it may use
(globs), its scopes and an optional rate limit; `modelyard keys add|list|rm` manages it. Without the
setting the server is open, as Ollama is. A key comes as `Authorization: Bearer KEY` (what ollama-python
sends from OLLAMA_API_KEY, and the OpenAI SDKs from `api_key`) or as `x-api-key: KEY` (Anthropic's SDK).

Scopes: `inference` (generation, listings, show), `admin` (pull, push, create, copy, delete, blobs, and
everything else), `metrics` (GET /metrics). Missing or unknown key: 401; a key without the scope or the
model: 403; over its rate: 429 with Retry-After. Each answer is in the envelope of the API the path
belongs to: Ollama's `{"error": ...}`, OpenAI's under /v1/, Anthropic's on /v1/messages.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from modelyard.api.http import send_error
from modelyard.api.logs import CURRENT_EXCHANGE
from modelyard.api.openai.errors import OpenAIError
from modelyard.config import Settings
from modelyard.errors import BadRequest
from modelyard.store.names import ModelName, strip_source

log = logging.getLogger(__name__)

INFERENCE, ADMIN, METRICS = "inference", "admin", "metrics"
SCOPES = (INFERENCE, ADMIN, METRICS)
# Listings a key limited to some models sees filtered: path -> (the list's field, its items' name fields).
LISTINGS = {
    "/api/tags": ("models", ("name", "model")),
    "/api/ps": ("models", ("name", "model")),
    "/v1/models": ("data", ("id",)),
}
# Routes that change the store (any method, HEAD /api/blobs included): Ollama's "admin" verbs.
ADMIN_PATHS = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs")
KEY_PREFIX = "myk_"
# Body fields that name a model, in the Ollama, OpenAI and Anthropic APIs alike.
MODEL_FIELDS = ("model", "name", "source", "destination", "from")


class ApiKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One key of the keys file. The key itself is never stored: only its hash and first characters."""

    name: str
    hash: str  # "sha256:<hex>" of the key
    prefix: str = ""  # the key's first characters, shown by `modelyard keys list`
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])  # globs: "*", "smollm2", "qwen*:7b"
    scopes: list[str] = msgspec.field(default_factory=lambda: [INFERENCE])
    rate_limit: int | None = None  # requests a minute (bursts up to that many); None: no limit
    created_at: str = ""

    def allows_scope(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def allows_model(self, requested: str) -> bool:
        if "*" in self.models:
            return True
        try:
            name = ModelName.parse(strip_source(requested))
        except BadRequest:
            return False  # a name that names no model: nothing to allow
        candidates = (name.display.lower(), name.fully_qualified.lower())
        return any(fnmatch.fnmatchcase(c, _model_pattern(p)) for p in self.models for c in candidates)


class KeyFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    keys: list[ApiKey] = msgspec.field(default_factory=list)


def _listing_filter(send: Send, key: ApiKey, field: str, name_fields: tuple[str, ...]) -> Send:
    """For a key limited to some models: a listing shows only those (the answer is small, read whole)."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def filtered(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        try:
            listing = msgspec.json.decode(body) if start.get("status") == 200 else None
        except msgspec.DecodeError:
            listing = None
        if isinstance(listing, dict) and isinstance(listing.get(field), list):
            listing[field] = [
                item
                for item in listing[field]
                if isinstance(item, dict)
                and any(isinstance(item.get(name), str) and key.allows_model(item[name]) for name in name_fields)
            ]
            body = msgspec.json.encode(listing)
        headers = [(name, value) for name, value in start.get("headers", []) if name.lower() != b"content-length"]
        started: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": start["status"],
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
        await send(started)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return filtered


def _model_pattern(pattern: str) -> str:
    """A pattern without a tag matches every tag: `smollm2` is `smollm2:*`."""
    pattern = pattern.strip().lower()
    return pattern if ":" in pattern.rsplit("/", 1)[-1] else pattern + ":*"


def new_key() -> str:
    """A fresh key: 256 random bits, with a prefix that makes a leaked one easy to recognise."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are random, not passwords: a fast hash is enough, and a slow one would cost every request.
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def read_key_file(path: Path) -> KeyFile:
    """The keys file (an empty one when it does not exist yet); ValueError naming the file when broken."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return KeyFile()
    try:
        found = msgspec.json.decode(raw, type=KeyFile)
    except msgspec.DecodeError as exc:  # ValidationError too
        raise ValueError(f"invalid keys file {path}: {exc}") from exc
    for key in found.keys:
        if not key.hash.startswith("sha256:") or len(key.hash) != len("sha256:") + 64:
            raise ValueError(f'invalid keys file {path}: key "{key.name}" has no sha256 hash')
        unknown = set(key.scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f'invalid keys file {path}: key "{key.name}" has unknown scopes {sorted(unknown)}')
    return found


def write_key_file(path: Path, keys: KeyFile) -> None:
    """Written whole and renamed into place, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(msgspec.json.format(msgspec.json.encode(keys), indent=2) + b"\n")
    os.replace(temporary, path)


def add_key(
    path: Path, name: str, *, models: list[str], scopes: list[str], rate_limit: int | None = None
) -> tuple[str, ApiKey]:
    """A new key entered into the file: the key (shown once) and its entry."""
    found = read_key_file(path)
    if any(key.name == name for key in found.keys):
        raise ValueError(f'a key named "{name}" exists already (remove it first)')
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}: use {', '.join(SCOPES)}")
    key = new_key()
    entry = ApiKey(
        name=name,
        hash=hash_key(key),
        prefix=key[: len(KEY_PREFIX) + 6],
        models=models or ["*"],
        scopes=scopes or [INFERENCE],
        rate_limit=rate_limit,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    found.keys.append(entry)
    write_key_file(path, found)
    return key, entry


def remove_key(path: Path, name: str) -> bool:
    found = read_key_file(path)
    kept = [key for key in found.keys if key.name != name]
    if len(kept) == len(found.keys):
        return False
    write_key_file(path, KeyFile(keys=kept))
    return True


class KeyRing:
    """The keys file as the server sees it: re-read when it changes, so `modelyard keys add` and `rm` take
    effect without a restart. A file broken at start stops the server; broken later, the last good keys
    stay in force (and the error is logged)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._keys: list[tuple[bytes, ApiKey]] = []
        self._refresh(strict=True)
        if not self._keys:  # a typo in the path, or keys still to be added: either way, say it
            log.warning("%s holds no API keys yet: every request but the open paths gets 401 (keys add)", path)

    def _refresh(self, strict: bool) -> None:
        try:
            stat = self.path.stat()
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            signature = (0, 0, 0)
        if signature == self._signature:
            return
        try:
            found = read_key_file(self.path)
        except (ValueError, OSError) as exc:
            if strict:
                raise ValueError(str(exc)) from exc
            log.error("%s; keeping the keys read before", exc)
            self._signature = signature  # said once, not on every request
            return
        self._signature = signature
        self._keys = [(bytes.fromhex(key.hash.removeprefix("sha256:")), key) for key in found.keys]

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key's entry, compared in constant time against every entry (no early exit)."""
        self._refresh(strict=False)
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match = None
        for stored, key in self._keys:
            if hmac.compare_digest(digest, stored):
                match = key
        return match


class RateLimiter:
    """A token bucket per key: `rate_limit` requests a minute, in bursts of up to that many."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key hash -> (tokens, when counted)

    def retry_after(self, key: ApiKey) -> int:
        """0 when the request may go (and it is counted), else the whole seconds until one may."""
        if key.rate_limit is None:
            return 0
        per_second = key.rate_limit / 60
        now = self.clock()
        tokens, then = self._buckets.get(key.hash, (float(key.rate_limit), now))
        tokens = min(float(key.rate_limit), tokens + (now - then) * per_second)
        if tokens >= 1:
            self._buckets[key.hash] = (tokens - 1, now)
            return 0
        self._buckets[key.hash] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / per_second)) if per_second > 0 else 60


def required_scope(path: str) -> str:
    if path == "/metrics":
        return METRICS
    if any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PATHS):
        return ADMIN
    return INFERENCE


def presented_key(headers: dict[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def insecure_bind_warning(settings: Settings) -> str | None:
    """The warning logged at start when the server listens beyond this machine with no keys."""
    from modelyard.api.guard import is_loopback

    if settings.api_keys is not None or is_loopback(settings.host):
        return None
    return (
        f"serving on {settings.host}:{settings.port} without API keys: anyone who can reach it may run, pull and "
        "delete models (set MODELYARD_API_KEYS, see docs/security.md)"
    )


async def answer_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    code: str | None = None,
) -> None:
    """The refusal in the envelope of the API the path belongs to (what its SDK parses: the openai SDK
    raises AuthenticationError, PermissionDeniedError or RateLimitError by status and reads the message);
    `code` is OpenAI's `error.code`."""
    exc = OpenAIError(message, code=code) if code else None
    await send_error(send, scope.get("path", ""), status, message, headers, exc)


def auth_middleware(settings: Settings, ring: KeyRing) -> Callable[[ASGIApp], ASGIApp]:
    open_paths = frozenset(settings.open_paths)
    limiter = RateLimiter()

    def middleware(app: ASGIApp) -> ASGIApp:
        async def authorized(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] != "http" or path in open_paths:
                await app(scope, receive, send)
                return
            headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            presented = presented_key(headers)
            key = ring.authenticate(presented) if presented else None
            if key is None:
                message = "unauthorized: invalid API key" if presented else "unauthorized: an API key is required"
                challenge = [(b"www-authenticate", b'Bearer realm="modelyard"')]
                await answer_error(scope, send, 401, message, challenge, "invalid_api_key" if presented else None)
                return
            if (exchange := CURRENT_EXCHANGE.get()) is not None:
                exchange.key = key.name  # for the request log
            needed = required_scope(path)
            if not key.allows_scope(needed):
                await answer_error(
                    scope, send, 403, f'forbidden: API key "{key.name}" does not have the {needed} scope'
                )
                return
            wait = limiter.retry_after(key)
            if wait:
                message = f'too many requests: API key "{key.name}" is limited to {key.rate_limit} a minute'
                await answer_error(
                    scope, send, 429, message, [(b"retry-after", str(wait).encode())], "rate_limit_exceeded"
                )
                return
            if "*" not in key.models:
                checked = await _check_models(scope, receive, send, key, settings.max_body_size)
                if checked is None:
                    return
                receive = checked
                if path in LISTINGS and scope.get("method") == "GET":
                    send = _listing_filter(send, key, *LISTINGS[path])
            await app(scope, receive, send)

        return authorized

    return middleware


async def _check_models(scope: Scope, receive: Receive, send: Send, key: ApiKey, limit: int | None) -> Receive | None:
    """For a key limited to some models: the model the request names is one of them (else 403, and None).
    The body is read here and handed on unchanged; a body that is not JSON is left to the route's 400."""
    path: str = scope.get("path", "")
    names: list[str] = []
    if path.startswith("/v1/models/"):
        names.append(path.removeprefix("/v1/models/"))
    body = b""
    method = scope.get("method", "GET")
    if method in ("POST", "PUT", "PATCH", "DELETE") and not path.startswith("/api/blobs"):
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left before its body arrived
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if limit is not None and size > limit:
                too_large = f"request body is larger than {limit} bytes (MODELYARD_MAX_BODY_SIZE)"
                await answer_error(scope, send, 413, too_large)
                return None
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            decoded = msgspec.json.decode(body) if body.strip() else None
        except msgspec.DecodeError:
            decoded = None
        if isinstance(decoded, dict):
            names += [value for field in MODEL_FIELDS if isinstance(value := decoded.get(field), str) and value]
    for name in names:
        if not key.allows_model(name):
            await answer_error(scope, send, 403, f'forbidden: API key "{key.name}" may not use model "{name}"')
            return None
    if method not in ("POST", "PUT", "PATCH", "DELETE") or path.startswith("/api/blobs"):
        return receive
    replayed = False

    async def replay() -> ReceiveMessage:
        nonlocal replayed
        if replayed:
            return await receive()  # what comes after the body: the client's disconnect
        replayed = True
        whole: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
        return whole

    return replay
