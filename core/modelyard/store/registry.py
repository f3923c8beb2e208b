"""/api/pull and /api/push over the registry protocol Ollama uses (OCI distribution v2).

Manifests by tag, blobs by digest, a bearer-token auth challenge, redirects. Downloads grow in
`blobs/sha256-<hex>-partial` and resume with HTTP ranges; a blob is verified before it is renamed into
place, and the manifest is written last. Two pulls of one blob share a single download; when every client
waiting for a download has gone, it is cancelled (the partial file stays for the next pull).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from modelyard.errors import BadRequest, InternalError, NotFound
from modelyard.store.local import DIGEST_PATTERN, MANIFEST_MEDIA_TYPE, Layer, Manifest, ModelStore, atomic_write
from modelyard.store.names import ModelName
from modelyard.store.operations import ProgressResponse

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.06  # seconds between progress lines, as Ollama
RETRIES = 6
CHUNK = 1 << 20


class RegistryError(InternalError):
    """The registry refused or failed: the message names the step, the request and the cause (Ollama's
    `pull model manifest: Get "https://HOST/v2/...": dial tcp: lookup HOST: no such host`)."""


class _OciError(msgspec.Struct):
    code: str = ""
    message: str = ""


class _OciErrors(msgspec.Struct):
    errors: list[_OciError] = []


def _go_method(method: str) -> str:
    """`GET` as Go's net/url errors write it (`Get`), so messages read like Ollama's."""
    return method[:1].upper() + method[1:].lower()


def registry_message(response: httpx.Response) -> str:
    """The registry's own words for a failed request: the messages of its OCI error body
    (`{"errors": [{"code": ..., "message": ...}]}`), else the body's text, else the reason phrase."""
    try:
        body = msgspec.json.decode(response.content, type=_OciErrors)
        messages = [error.message or error.code.lower().replace("_", " ") for error in body.errors]
    except msgspec.DecodeError:
        messages = []
    text = "; ".join(message for message in messages if message) or response.text.strip() or response.reason_phrase
    return f"{response.status_code}: {text[:300]}"


def _shown(url: str) -> str:
    """The URL we asked for, without its query: an upload's state token or a signed download's signature
    does not belong in messages and logs (and a redirect's target is never shown, for the same reason)."""
    return str(httpx.URL(url).copy_with(query=None))


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception under httpx's wrappers (a gaierror, a refused connect, an SSLError)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def transport_cause(exc: httpx.TransportError, url: httpx.URL, action: str) -> str:
    """Why a request never got an answer, in the words of Go's net package that Ollama's errors show."""
    port = url.port or (443 if url.scheme == "https" else 80)
    address = f"{url.host}:{port}"
    cause = _root_cause(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return f"dial tcp {address}: i/o timeout"
    if isinstance(exc, httpx.TimeoutException):
        return f"read tcp {address}: i/o timeout (the registry stopped answering)"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"tls: failed to verify certificate: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or str(cause)
        return (
            f"tls: handshake with {address} failed ({reason}); "
            f"if this registry speaks plain http, {action} with --insecure"
        )
    if isinstance(cause, socket.gaierror):
        if cause.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return f"dial tcp: lookup {url.host}: no such host"
        return f"dial tcp: lookup {url.host}: {str(cause.strerror).lower()}"
    if isinstance(cause, ConnectionRefusedError):
        return f"dial tcp {address}: connect: connection refused"
    if isinstance(exc, httpx.ConnectError) and isinstance(cause, OSError) and cause.strerror:
        return f"dial tcp {address}: connect: {cause.strerror.lower()}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection to {address} broke: {exc}"
    return str(exc) or type(exc).__name__


class _Challenge(msgspec.Struct):
    realm: str
    service: str = ""
    scope: str = ""


def _parse_challenge(header: str) -> _Challenge | None:
    if not header.lower().startswith("bearer "):
        return None
    fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
    return (
        _Challenge(realm=fields["realm"], service=fields.get("service", ""), scope=fields.get("scope", ""))
        if "realm" in fields
        else None
    )


class RegistryClient:
    """One repository (`namespace/model`) of one registry, with bearer tokens fetched on demand.

    Every failure becomes a `RegistryError` that names the step (`pull model manifest`, `upload blob`...),
    the request and the cause; `action` (pull or push) is what the TLS hint tells the user to repeat.
    """

    def __init__(self, name: ModelName, insecure: bool, action: str) -> None:
        scheme = "http" if insecure else "https"
        self.name = name
        self.action = action
        self.base = f"{scheme}://{name.host}/v2/{name.namespace}/{name.model}"
        self.http = httpx.AsyncClient(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0))
        self.token: str | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def unreachable(self, step: str, method: str, url: str, exc: httpx.TransportError) -> RegistryError:
        """The error for a request that got no answer. The cause names the host that failed, which is a
        redirect's target (a download server) when the registry sent one."""
        try:
            failed = exc.request.url
        except RuntimeError:  # an error raised before any request was made
            failed = httpx.URL(url)
        cause = transport_cause(exc, failed, self.action)
        return RegistryError(f'{step}: {_go_method(method)} "{_shown(url)}": {cause}')

    def refused(self, step: str, method: str, url: str, response: httpx.Response) -> RegistryError:
        """The error for an answer with a failing status, carrying the registry's own message."""
        return RegistryError(f'{step}: {_go_method(method)} "{_shown(url)}": {registry_message(response)}')

    async def authenticate(self, step: str, response: httpx.Response) -> bool:
        """Fetch a bearer token for the challenge in a 401 answer; False when it has none."""
        challenge = _parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        params = {key: value for key, value in (("service", challenge.service), ("scope", challenge.scope)) if value}
        step = f"{step}: get authorization token"
        try:
            answer = await self.http.get(challenge.realm, params=params)
        except httpx.TransportError as exc:
            raise self.unreachable(step, "GET", challenge.realm, exc) from exc
        if answer.status_code != 200:
            raise self.refused(step, "GET", challenge.realm, answer)
        try:
            body = answer.json()
            self.token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            raise RegistryError(f'{step}: Get "{_shown(challenge.realm)}": the answer is not a token') from None
        return bool(self.token)

    async def request(self, step: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request, repeated once with a bearer token if the registry challenges it."""
        headers = kwargs.pop("headers", None)
        try:
            response = await self.http.request(method, url, headers=self._headers(headers), **kwargs)
            if response.status_code == 401 and await self.authenticate(step, response):
                response = await self.http.request(method, url, headers=self._headers(headers), **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(step, method, url, exc) from exc
        if response.status_code == 401:
            raise RegistryError(f"{step}: unauthorized: access denied")
        return response

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/blobs/{digest}"

    def stream_blob(self, digest: str, offset: int) -> Any:
        headers = self._headers({"Range": f"bytes={offset}-"} if offset else None)
        return self.http.stream("GET", self.blob_url(digest), headers=headers)

    async def manifest(self, tag: str) -> bytes:
        step, url = "pull model manifest", f"{self.base}/manifests/{tag}"
        response = await self.request(step, "GET", url, headers={"Accept": MANIFEST_MEDIA_TYPE})
        if response.status_code == 404:
            raise RegistryError(f"{step}: file does not exist")  # Ollama's words for an unknown model or tag
        if response.status_code != 200:
            raise self.refused(step, "GET", url, response)
        return response.content


class _RetryableStatus(Exception):
    """A blob download answered with a status worth retrying (a 5xx); the message is the full error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Download:
    """One blob being downloaded, shared by every pull that needs it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.completed = 0
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None


class Registry:
    """Pulls and pushes for one store."""

    def __init__(self, store: ModelStore, prune: bool) -> None:
        self.store = store
        self.prune = prune
        self.downloads: dict[str, _Download] = {}

    # --- pull ------------------------------------------------------------------------------------

    async def pull(self, requested: str | None, insecure: bool) -> AsyncGenerator[ProgressResponse]:
        try:
            name = ModelName.parse(requested or "")
        except BadRequest:
            raise BadRequest("invalid model name") from None
        plain_http = (requested or "").startswith("http://")
        if plain_http and not insecure:
            # Before the first line, as Ollama checks it: a 500 even when streaming.
            raise RegistryError("insecure protocol http")
        yield ProgressResponse(status="pulling manifest")
        async with RegistryClient(name, insecure or plain_http, "pull") as client:
            raw = await client.manifest(name.tag)
            try:
                manifest = msgspec.json.decode(raw, type=Manifest)
            except msgspec.DecodeError as exc:
                raise RegistryError(f"pull model manifest: not an Ollama manifest: {exc}") from exc
            layers = [*manifest.layers, manifest.config]
            for layer in layers:
                if not DIGEST_PATTERN.fullmatch(layer.digest) or layer.size < 0:
                    raise RegistryError(f"pull model manifest: invalid layer digest {layer.digest!r}")
            for layer in layers:
                async for line in self._pull_blob(client, layer, insecure or plain_http):
                    yield line
            yield ProgressResponse(status="verifying sha256 digest")
            yield ProgressResponse(status="writing manifest")
            replaced = self.store.find(name) is not None
            atomic_write(self.store.manifests.joinpath(*name.parts), raw)
            if replaced and self.prune:
                yield ProgressResponse(status="removing unused layers")
                await asyncio.to_thread(self.store.prune)
            yield ProgressResponse(status="success")

    async def _pull_blob(self, client: RegistryClient, layer: Layer, insecure: bool) -> AsyncIterator[ProgressResponse]:
        status = f"pulling {layer.digest[7:19]}"
        if self.store.has_blob(layer.digest):
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
            return
        download = self.downloads.get(layer.digest)
        if download is None:
            download = self.downloads[layer.digest] = _Download(layer.size)
            download.task = asyncio.create_task(self._download(client.name, insecure, client.token, layer, download))
            download.task.add_done_callback(lambda _: self.downloads.pop(layer.digest, None))
        download.waiters += 1
        task = download.task
        assert task is not None  # set when the download was created, above or by an earlier waiter
        try:
            while not task.done():
                yield ProgressResponse(
                    status=status, digest=layer.digest, total=layer.size, completed=download.completed or msgspec.UNSET
                )
                await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            task.result()
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not task.done():
                task.cancel()  # nobody waits any more: stop, keep the partial file for resuming

    async def _download(
        self, name: ModelName, insecure: bool, token: str | None, layer: Layer, download: _Download
    ) -> None:
        # Its own connection: the pull that started it may go away while others still wait for it.
        async with RegistryClient(name, insecure, "pull") as client:
            client.token = token
            await self._download_with(client, layer, download)

    async def _download_with(self, client: RegistryClient, layer: Layer, download: _Download) -> None:
        self.store.blobs.mkdir(parents=True, exist_ok=True)
        partial = self.store.partial_path(layer.digest)
        step = f"pulling {layer.digest[7:19]}"
        failures = 0
        last_failure = ""
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > layer.size:
                partial.unlink()
                offset = 0
            try:
                if offset < layer.size:
                    await self._fetch(client, layer.digest, partial, offset, download)
                await asyncio.to_thread(self.store.commit_partial, layer.digest)
                return
            except httpx.TransportError as exc:
                failures += 1
                last_failure = str(client.unreachable(step, "GET", client.blob_url(layer.digest), exc))
                log.warning(
                    "download of %s broke at %d bytes (%s); resuming",
                    layer.digest[:19],
                    download.completed,
                    last_failure,
                )
            except _RetryableStatus as exc:
                failures += 1
                last_failure = exc.message
                log.warning("%s; retrying", last_failure)
            except ValueError as exc:  # the finished file did not match its digest: start over once
                failures += 1
                log.warning("%s", exc)
                if failures > 2:
                    raise RegistryError(f"{step}: {exc}") from exc
            if failures > RETRIES:
                # Ollama's words, then the step and the last cause.
                raise RegistryError(f"max retries exceeded: {last_failure}")
            await asyncio.sleep(min(2.0, 0.1 * 2**failures))

    async def _fetch(
        self, client: RegistryClient, digest: str, partial: Path, offset: int, download: _Download
    ) -> None:
        step = f"pulling {digest[7:19]}"
        async with client.stream_blob(digest, offset) as response:
            if response.status_code == 401 and await client.authenticate(step, response):
                raise _RetryableStatus("authenticated; retrying")
            if response.status_code >= 400:
                await response.aread()
                failure = client.refused(step, "GET", client.blob_url(digest), response)
                # A server's trouble may pass; a refusal (404 unknown blob, 403 denied) will not.
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise _RetryableStatus(failure.message)
                raise failure
            if offset and response.status_code != 206:  # the server ignored the range: start over
                offset = 0
            with open(partial, "r+b" if offset else "wb") as file:
                file.seek(offset)
                file.truncate()
                download.completed = offset
                async for chunk in response.aiter_bytes(CHUNK):
                    file.write(chunk)
                    download.completed += len(chunk)

    # --- push ------------------------------------------------------------------------------------

    async def push(self, requested: str | None, insecure: bool) -> AsyncGenerator[ProgressResponse]:
        if not requested:
            raise BadRequest("model is required")
        name = ModelName.parse(requested)
        model = self.store.find(name)
        if model is None:
            raise NotFound(f'model "{requested}" not found')
        raw = model.manifest_path.read_bytes()
        plain_http = requested.startswith("http://")
        yield ProgressResponse(status="retrieving manifest")
        if plain_http and not insecure:
            raise RegistryError("insecure protocol http")  # after the first line, as Ollama checks it
        async with RegistryClient(name, insecure or plain_http, "push") as client:
            for layer in [*model.manifest.layers, model.manifest.config]:
                async for line in self._push_blob(client, layer):
                    yield line
            yield ProgressResponse(status="pushing manifest")
            step, url = "push model manifest", f"{client.base}/manifests/{name.tag}"
            response = await client.request(
                step, "PUT", url, content=raw, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
            )
            if response.status_code not in (200, 201):
                raise client.refused(step, "PUT", url, response)
        yield ProgressResponse(status="success")

    async def _push_blob(self, client: RegistryClient, layer: Layer) -> AsyncIterator[ProgressResponse]:
        status = f"pushing {layer.digest[7:19]}"
        step = "upload blob"
        head = await client.request(step, "HEAD", client.blob_url(layer.digest))
        if head.status_code == 200:
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
            return
        uploads = f"{client.base}/blobs/uploads/"
        start = await client.request(step, "POST", uploads)
        if start.status_code != 202 or "location" not in start.headers:
            raise client.refused(step, "POST", uploads, start)
        location = str(httpx.URL(client.base).join(start.headers["location"]))
        separator = "&" if "?" in location else "?"
        sent = 0
        path = self.store.blob_path(layer.digest)

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            with open(path, "rb") as file:
                while block := file.read(CHUNK):
                    sent += len(block)
                    yield block

        upload = asyncio.create_task(
            client.request(
                step,
                "PUT",
                f"{location}{separator}digest={layer.digest}",
                content=body(),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(layer.size)},
            )
        )
        try:
            while not upload.done():
                yield ProgressResponse(
                    status=status, digest=layer.digest, total=layer.size, completed=sent or msgspec.UNSET
                )
                await asyncio.wait({upload}, timeout=PROGRESS_INTERVAL)
        finally:
            if not upload.done():
                upload.cancel()
        response = upload.result()
        if response.status_code != 201:
            raise client.refused(step, "PUT", location, response)
        yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
