"""The server under test: one started here with a single backend, or any server at a URL."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .fake_registry import FakeRegistry

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# `--backend` starts modelyard's server and `--create-from` reads Modelfiles with its parser: both import
# modelyard, which the suite does not depend on (session.py checks it is there).
NEEDS_MODELYARD = "needs modelyard installed besides the suite (pip install modelyard)"


class TargetError(RuntimeError):
    """The server under test could not be started or reached, or lacks the model under test."""


def model_name_parts(model: str) -> tuple[str, str, str, str]:
    """Host, namespace, model and tag of `[host/][namespace/]model[:tag][@digest]`, with Ollama's defaults.
    The server validates the name; the suite only spells it the ways the server will."""
    rest = model.split("://", 1)[1] if "://" in model else model
    rest = rest.partition("@")[0]
    tag = DEFAULT_TAG
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    parts = rest.split("/")
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) >= 3 else DEFAULT_HOST
    return host, namespace, parts[-1], tag


def model_variables(model: str) -> dict[str, str]:
    """The names a case can use for the model under test (`${model}`, `${model_display}`, ...)."""
    host, namespace, name, tag = model_name_parts(model)
    # How /api/tags and /api/ps name it (Ollama's DisplayShortest): always with a tag.
    if host.lower() != DEFAULT_HOST:
        display = f"{host}/{namespace}/{name}:{tag}"
    elif namespace.lower() != DEFAULT_NAMESPACE:
        display = f"{namespace}/{name}:{tag}"
    else:
        display = f"{name}:{tag}"
    return {
        "model": model,
        "model_display": display,
        "model_fqn": f"{host}/{namespace}/{name}:{tag}",  # registry.ollama.ai/library/smollm2:135m
        "model_upper": model.upper(),  # the same model: names match case-insensitively
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_variables() -> dict[str, str]:
    """Values unique to one run: a blob no earlier run uploaded, so that its first upload creates it."""
    run_id = secrets.token_hex(6)
    content = f"modelyard conformance blob {run_id}\n"
    # A system prompt no other model has: a model created with it holds a layer (a blob) of its own,
    # whose digest is the hash of the text.
    system = f"You are the assistant of conformance run {run_id}."
    return {
        "run_id": run_id,
        "blob_content": content,
        "blob_digest": "sha256:" + hashlib.sha256(content.encode()).hexdigest(),
        "unique_system": system,
        "unique_system_digest": "sha256:" + hashlib.sha256(system.encode()).hexdigest(),
    }


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Target:
    """A server the cases talk to over HTTP, the model they use, and what that model can do."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        backend: str | None = None,
        extra_capabilities: tuple[str, ...] = (),
        process: Any = None,
        workdir: Path | None = None,
        api: str = "all",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.backend = backend
        self.api = api  # "openai": only the /v1 endpoints are there (the model is probed through /v1/models)
        self.process = process
        self.workdir = workdir
        self.http = httpx.Client(base_url=self.base_url, timeout=120.0)
        # The longest any one request may take, whatever its case allows (mutation runs set it, so that a
        # mutant that makes generation run on cannot stall them).
        self.request_timeout: float | None = None
        self.registry = FakeRegistry().start()
        self.variables = {**model_variables(model), **run_variables(), "registry": self.registry.address}
        self.server_version = ""
        self.model_capabilities: frozenset[str] = frozenset()
        self.extra_capabilities = frozenset(extra_capabilities)
        self.traits = frozenset({"loopback"} if is_loopback(self.base_url) else ())

    @property
    def mode(self) -> str:
        return "backend" if self.process is not None else "base-url"

    @property
    def capabilities(self) -> frozenset[str]:
        """The model's capabilities (from /api/show), the `--capability` additions, and traits of the target:
        `loopback` (the server listens on a loopback address), `format:<details.format>` (`format:gguf`) and
        `prunes-blobs` (a modelyard server the suite started, without OLLAMA_NOPRUNE: /api/delete removes the
        blobs no other model uses)."""
        return self.model_capabilities | self.extra_capabilities | self.traits

    @classmethod
    def start_backend(
        cls,
        backend: str,
        model: str,
        *,
        env: Mapping[str, str] = {},
        models_dir: Path | None = None,
        extra_capabilities: tuple[str, ...] = (),
        create_from: Path | None = None,
        api: str = "all",
    ) -> Target:
        """A `modelyard serve` subprocess with only `backend` loaded, on a free port; with `create_from`,
        the model under test is created in its store from that Modelfile, model folder or GGUF file."""
        from modelyard_conformance.launcher import ServerProcess

        workdir = Path(tempfile.mkdtemp(prefix="modelyard-conformance-"))
        models = models_dir or workdir / "models"
        process = ServerProcess(models, {**env, "MODELYARD_BACKENDS": backend}, log_path=workdir / "server.log")
        try:
            process.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise TargetError(f"could not start modelyard serve with backend {backend!r}: {exc}") from exc
        target = cls(
            process.url,
            model,
            backend=backend,
            extra_capabilities=extra_capabilities,
            process=process,
            workdir=workdir,
            api=api,
        )
        if not {**os.environ, **env}.get("OLLAMA_NOPRUNE"):
            target.traits |= {"prunes-blobs"}
        return target.prepare(create_from)

    @classmethod
    def connect(
        cls,
        base_url: str,
        model: str,
        *,
        extra_capabilities: tuple[str, ...] = (),
        create_from: Path | None = None,
        api: str = "all",
    ) -> Target:
        return cls(base_url, model, extra_capabilities=extra_capabilities, api=api).prepare(create_from)

    def prepare(self, create_from: Path | None) -> Target:
        """Create the model under test if asked, then probe the server; closed again if either fails."""
        try:
            if create_from is not None:
                self.create_model(create_from)
            if self.api == "openai":
                self.probe_openai()
            else:
                self.probe()
        except TargetError:
            self.close()
            raise
        return self

    def upload(self, path: Path) -> str:
        """A local file as a blob of the server (unless it has it already); its digest."""
        digest = "sha256:" + sha256_file(path)
        if self.http.head(f"/api/blobs/{digest}").status_code != 200:
            with open(path, "rb") as file:
                uploaded = self.http.post(f"/api/blobs/{digest}", content=file)
            if uploaded.status_code not in (200, 201):
                raise TargetError(f"uploading {path} answered {uploaded.status_code} {uploaded.text[:200]}")
        return digest

    def create_model(self, source: Path) -> None:
        """Create the model under test from a Modelfile, a model folder or a GGUF file, as `modelyard create`."""
        from modelyard.store.modelfile import ModelfileError, create_request, source_modelfile

        try:
            modelfile, base = source_modelfile(source)
            body = create_request(modelfile, base, self.upload)
            created = self.http.post("/api/create", json={**body, "model": self.model, "stream": False}, timeout=600)
        except (OSError, ModelfileError, httpx.HTTPError) as exc:
            raise TargetError(f"could not create {self.model} from {source}: {exc}") from exc
        if created.status_code != 200:
            raise TargetError(
                f"could not create {self.model} from {source}: "
                f"/api/create answered {created.status_code} {created.text[:300]}"
            )

    def probe(self) -> None:
        """Learn the server's version and the model's capabilities; fail early if the model is not there."""
        try:
            version = self.http.get("/api/version")
            show = self.http.post("/api/show", json={"model": self.model})
        except httpx.HTTPError as exc:
            raise TargetError(f"no server answers at {self.base_url}: {exc}") from exc
        if version.status_code == 200:
            self.server_version = str(version.json().get("version", ""))
        if show.status_code != 200:
            raise TargetError(
                f"the server at {self.base_url} has no model {self.model!r}: /api/show answered "
                f"{show.status_code} {show.text[:200]}"
            )
        described = show.json()
        self.model_capabilities = frozenset(described.get("capabilities") or ())
        model_format = (described.get("details") or {}).get("format")
        if model_format:
            self.traits |= {f"format:{model_format}"}

    def probe_openai(self) -> None:
        """The model must be one of /v1/models. What it can do is not said there: it is taken to complete text
        (`completion`), unless `--capability embedding` says it is an embedding model."""
        try:
            listed = self.http.get("/v1/models")
        except httpx.HTTPError as exc:
            raise TargetError(f"no server answers at {self.base_url}: {exc}") from exc
        if listed.status_code != 200:
            raise TargetError(f"GET {self.base_url}/v1/models answered {listed.status_code} {listed.text[:200]}")
        try:
            ids = [str(entry.get("id")) for entry in listed.json().get("data") or [] if isinstance(entry, dict)]
        except (ValueError, AttributeError) as exc:
            raise TargetError(f"GET /v1/models did not answer an OpenAI model list: {listed.text[:200]}") from exc
        if self.model not in ids and self.variables["model_display"] not in ids:  # `name` listed as `name:latest`
            raise TargetError(f"the server at {self.base_url} has no model {self.model!r} in /v1/models: {ids}")
        if "embedding" not in self.extra_capabilities:
            self.model_capabilities = frozenset({"completion"})

    def server_log(self) -> str:
        return self.process.log() if self.process is not None else ""

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "api": self.api,
            "backend": self.backend,
            "base_url": self.base_url,
            "model": self.model,
            "server_version": self.server_version,
            "capabilities": sorted(self.capabilities),
        }

    def close(self) -> None:
        self.http.close()
        self.registry.close()
        if self.process is not None:
            self.process.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
