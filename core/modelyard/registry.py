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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from .errors import BadRequest, InternalError, NotFound
from .names import ModelName
from .store import DIGEST_PATTERN, MANIFEST_MEDIA_TYPE, Layer, Manifest, ModelStore, atomic_write
from .wire import ProgressResponse

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.06  # seconds between progress lines, as Ollama
RETRIES = 6
CHUNK = 1 << 20


class RegistryError(InternalError):
    """The registry refused or failed; the message says what the registry said."""


class _Challenge(msgspec.Struct):
    realm: str
    service: str = ""
    scope: str = ""


def _parse_challenge(header: str) -> _Challenge | None:
    if not header.lower().startswith("bearer "):
        return None
    fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
    return _Challenge(realm=fields["realm"], service=fields.get("service", ""), scope=fields.get("scope", "")) if "realm" in fields else None


class RegistryClient:
    """One repository (`namespace/model`) of one registry, with bearer tokens fetched on demand."""

    def __init__(self, name: ModelName, insecure: bool) -> None:
        scheme = "http" if insecure else "https"
        self.name = name
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

    async def _authenticate(self, response: httpx.Response) -> bool:
        challenge = _parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        params = {key: value for key, value in (("service", challenge.service), ("scope", challenge.scope)) if value}
        answer = await self.http.get(challenge.realm, params=params)
        if answer.status_code != 200:
            raise RegistryError(f"unauthorized: the registry's token service answered {answer.status_code}")
        body = answer.json()
        self.token = body.get("token") or body.get("access_token")
        return bool(self.token)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request, repeated once with a bearer token if the registry challenges it."""
        headers = kwargs.pop("headers", None)
        response = await self.http.request(method, url, headers=self._headers(headers), **kwargs)
        if response.status_code == 401 and await self._authenticate(response):
            response = await self.http.request(method, url, headers=self._headers(headers), **kwargs)
        if response.status_code == 401:
            raise RegistryError("unauthorized: access denied")
        return response

    def stream_blob(self, digest: str, offset: int) -> Any:
        headers = self._headers({"Range": f"bytes={offset}-"} if offset else None)
        return self.http.stream("GET", f"{self.base}/blobs/{digest}", headers=headers)

    async def manifest(self, tag: str) -> bytes:
        response = await self.request("GET", f"{self.base}/manifests/{tag}", headers={"Accept": MANIFEST_MEDIA_TYPE})
        if response.status_code == 404:
            raise RegistryError("pull model manifest: file does not exist")
        if response.status_code != 200:
            raise RegistryError(f"pull model manifest: registry answered {response.status_code}: {response.text[:200]}")
        return response.content


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

    async def pull(self, requested: str | None, insecure: bool) -> AsyncIterator[ProgressResponse]:
        try:
            name = ModelName.parse(requested or "")
        except BadRequest:
            raise BadRequest("invalid model name") from None
        plain_http = (requested or "").startswith("http://")
        yield ProgressResponse(status="pulling manifest")
        if plain_http and not insecure:
            raise RegistryError("insecure protocol http")
        async with RegistryClient(name, insecure or plain_http) as client:
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
        try:
            while not task.done():
                yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=download.completed or msgspec.UNSET)
                await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            task.result()
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not task.done():
                task.cancel()  # nobody waits any more: stop, keep the partial file for resuming

    async def _download(self, name: ModelName, insecure: bool, token: str | None, layer: Layer, download: _Download) -> None:
        # Its own connection: the pull that started it may go away while others still wait for it.
        async with RegistryClient(name, insecure) as client:
            client.token = token
            await self._download_with(client, layer, download)

    async def _download_with(self, client: RegistryClient, layer: Layer, download: _Download) -> None:
        self.store.blobs.mkdir(parents=True, exist_ok=True)
        partial = self.store.partial_path(layer.digest)
        failures = 0
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
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                failures += 1
                log.warning("download of %s broke at %d bytes (%s); resuming", layer.digest[:19], download.completed, exc)
            except ValueError as exc:  # the finished file did not match its digest: start over once
                failures += 1
                log.warning("%s", exc)
                if failures > 2:
                    raise RegistryError(str(exc)) from exc
            if failures > RETRIES:
                raise RegistryError(f"download of {layer.digest} failed {failures} times")
            await asyncio.sleep(min(2.0, 0.1 * 2**failures))

    async def _fetch(self, client: RegistryClient, digest: str, partial: Path, offset: int, download: _Download) -> None:
        async with client.stream_blob(digest, offset) as response:
            if response.status_code == 401 and await client._authenticate(response):
                raise httpx.TransportError("authenticated; retrying")
            if response.status_code == 404:
                raise RegistryError(f"blob {digest} not found in the registry")
            response.raise_for_status()
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

    async def push(self, requested: str | None, insecure: bool) -> AsyncIterator[ProgressResponse]:
        if not requested:
            raise BadRequest("model is required")
        name = ModelName.parse(requested)
        model = self.store.find(name)
        if model is None:
            raise NotFound(f'model "{requested}" not found')
        raw = model.manifest_path.read_bytes()
        yield ProgressResponse(status="retrieving manifest")
        async with RegistryClient(name, insecure or requested.startswith("http://")) as client:
            for layer in [*model.manifest.layers, model.manifest.config]:
                async for line in self._push_blob(client, layer):
                    yield line
            yield ProgressResponse(status="pushing manifest")
            response = await client.request(
                "PUT", f"{client.base}/manifests/{name.tag}", content=raw, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
            )
            if response.status_code not in (200, 201):
                raise RegistryError(f"push manifest: registry answered {response.status_code}: {response.text[:300]}")
        yield ProgressResponse(status="success")

    async def _push_blob(self, client: RegistryClient, layer: Layer) -> AsyncIterator[ProgressResponse]:
        status = f"pushing {layer.digest[7:19]}"
        head = await client.request("HEAD", f"{client.base}/blobs/{layer.digest}")
        if head.status_code == 200:
            yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
            return
        start = await client.request("POST", f"{client.base}/blobs/uploads/")
        if start.status_code != 202 or "location" not in start.headers:
            raise RegistryError(f"push: the registry refused an upload ({start.status_code}): {start.text[:200]}")
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
                "PUT",
                f"{location}{separator}digest={layer.digest}",
                content=body(),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(layer.size)},
            )
        )
        try:
            while not upload.done():
                yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=sent or msgspec.UNSET)
                await asyncio.wait({upload}, timeout=PROGRESS_INTERVAL)
        finally:
            if not upload.done():
                upload.cancel()
        response = upload.result()
        if response.status_code != 201:
            raise RegistryError(f"push: uploading {layer.digest} failed ({response.status_code}): {response.text[:200]}")
        yield ProgressResponse(status=status, digest=layer.digest, total=layer.size, completed=layer.size)
