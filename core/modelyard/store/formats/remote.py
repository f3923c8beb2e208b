"""Remote models: a manifest whose config names another server's model (Ollama's `remote_host` and
`remote_model`), made by /api/create with `from` and `remote_host`. It holds no weights, only the
Modelfile layers (template, system, parameters, messages, license); a backend that forwards requests
serves it (ModelView.remote)."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from modelyard.errors import BadRequest
from modelyard.runtime.contract import Details
from modelyard.store.formats import ModelFormat
from modelyard.store.local import StoredModel

OLLAMA_PORT = 11434


class RemoteFormat(ModelFormat):
    name = "remote"
    label = "remote"
    priority = 10_000  # it detects no files: /api/create makes it from `from` and `remote_host`

    def details(self, model: StoredModel) -> Details:
        # As Ollama shows them: the config's words, so format is "" unless the creator set one.
        return msgspec.structs.replace(super().details(model), format=model.config.model_format)

    def model_info(self, model: StoredModel, verbose: bool) -> dict[str, Any]:
        """What the config knows (Ollama's show of a remote model); the remote server knows the rest."""
        config = model.config
        if not config.model_family:
            return {}
        info: dict[str, Any] = {"general.architecture": config.model_family}
        if config.context_length > 0:
            info[f"{config.model_family}.context_length"] = config.context_length
        if config.embedding_length > 0:
            info[f"{config.model_family}.embedding_length"] = config.embedding_length
        return info

    def files(self, model: StoredModel) -> dict[str, Path]:
        return {}


def remote_url(raw: str) -> str:
    """A remote host as Ollama stores it (server/create.go remoteURL): a scheme, a host and a port
    (11434 unless given), a clean path; "ollama.com" is https on 443. BadRequest when it cannot be read."""
    if raw.startswith("/"):
        return f"http://localhost:{OLLAMA_PORT}{posixpath.normpath(raw)}"
    if "://" not in raw:
        raw = "http://" + raw
    if raw in ("ollama.com", "http://ollama.com"):
        raw = "https://ollama.com:443"
    try:
        parts = urlsplit(raw)
        host = parts.hostname or "localhost"
        port = parts.port or OLLAMA_PORT
    except ValueError:
        raise BadRequest("bad remote") from None
    if ":" in host:  # an IPv6 address goes back into brackets
        host = f"[{host}]"
    path = posixpath.normpath(parts.path) if parts.path else ""
    if path in ("/", "."):
        path = ""
    return urlunsplit((parts.scheme, f"{host}:{port}", path, parts.query, parts.fragment))
