"""The model store, in Ollama's on-disk layout, so an existing Ollama store can be served in place.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   manifest (JSON, schema 2)
    <root>/blobs/sha256-<hex>                           content-addressed layers and config

Writes are atomic (temporary file, fsync, rename): a crash leaves the old state or the new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec

from .gguf import GGUFHeader, human_number, read_header
from .names import ModelName
from .wire import Message, ModelDetails

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
SYSTEM_MEDIA_TYPE = "application/vnd.ollama.image.system"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
MESSAGES_MEDIA_TYPE = "application/vnd.ollama.image.messages"
ADAPTER_MEDIA_TYPE = "application/vnd.ollama.image.adapter"

DIGEST_PATTERN = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class Layer(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    from_: str | None = msgspec.field(default=None, name="from")


class Manifest(msgspec.Struct, kw_only=True):
    """Ollama's manifest, every field always written (registries refuse one without its media type)."""

    schemaVersion: int = 2
    mediaType: str = MANIFEST_MEDIA_TYPE
    config: Layer
    layers: list[Layer]


class RootFS(msgspec.Struct):
    type: str = "layers"
    diff_ids: list[str] = msgspec.field(default_factory=list)


class ModelConfig(msgspec.Struct, omit_defaults=True):
    """The config blob Ollama writes for a model (unknown fields are kept out, never rejected)."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    architecture: str = ""
    os: str = ""
    rootfs: RootFS = msgspec.field(default_factory=RootFS)
    capabilities: list[str] | None = None
    context_length: int = 0
    embedding_length: int = 0


def blob_name(digest: str) -> str:
    """`sha256-<hex>` for a digest written `sha256:<hex>` or `sha256-<hex>`; ValueError otherwise."""
    match = DIGEST_PATTERN.fullmatch(digest)
    if not match:
        raise ValueError(f"invalid digest format: {digest!r}")
    return f"sha256-{match.group(1).lower()}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def go_time(moment: dt.datetime) -> str:
    """RFC 3339 with nanosecond precision and trailing zeros trimmed, as Go's time.Time marshals."""
    text = moment.isoformat()
    if "." in text:
        head, _, rest = text.partition(".")
        fraction = rest[:6].rstrip("0")
        zone = rest[6:]
        text = f"{head}.{fraction}{zone}" if fraction else f"{head}{zone}"
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class StoredModel:
    """One manifest of the store and what its layers say."""

    def __init__(self, store: ModelStore, name: ModelName, manifest_path: Path) -> None:
        self.store = store
        self.name = name
        self.manifest_path = manifest_path
        raw = manifest_path.read_bytes()
        self.manifest = msgspec.json.decode(raw, type=Manifest)
        self.digest = hashlib.sha256(raw).hexdigest()
        self.modified_at = dt.datetime.fromtimestamp(manifest_path.stat().st_mtime).astimezone()
        self.config = msgspec.json.decode(store.blob_path(self.manifest.config.digest).read_bytes(), type=ModelConfig)

    def _layer(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.manifest.layers if layer.mediaType == media_type), None)

    def _layer_text(self, media_type: str) -> str | None:
        layer = self._layer(media_type)
        return None if layer is None else self.store.blob_path(layer.digest).read_text(encoding="utf-8")

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)

    @property
    def format(self) -> str:
        return self.config.model_format or "gguf"

    @property
    def model_path(self) -> Path:
        layer = self._layer(MODEL_MEDIA_TYPE)
        if layer is None:
            raise FileNotFoundError(f"{self.name.display} has no model layer")
        return self.store.blob_path(layer.digest)

    @property
    def adapter_path(self) -> Path | None:
        """A LoRA adapter (Modelfile ADAPTER), if the model has one."""
        layer = self._layer(ADAPTER_MEDIA_TYPE)
        return None if layer is None else self.store.blob_path(layer.digest)

    @cached_property
    def gguf(self) -> GGUFHeader:
        return self.store.gguf_header(self._layer(MODEL_MEDIA_TYPE).digest)

    @cached_property
    def template(self) -> str | None:
        """The Modelfile TEMPLATE layer (a Go template), if the model has one."""
        return self._layer_text(TEMPLATE_MEDIA_TYPE)

    @cached_property
    def system(self) -> str | None:
        return self._layer_text(SYSTEM_MEDIA_TYPE)

    @cached_property
    def parameters(self) -> dict[str, Any]:
        """Modelfile PARAMETERs, as stored by Ollama (JSON object)."""
        text = self._layer_text(PARAMS_MEDIA_TYPE)
        return msgspec.json.decode(text) if text else {}

    @cached_property
    def licenses(self) -> list[str]:
        return [
            self.store.blob_path(layer.digest).read_text(encoding="utf-8")
            for layer in self.manifest.layers
            if layer.mediaType == LICENSE_MEDIA_TYPE
        ]

    @cached_property
    def messages(self) -> list[Message]:
        text = self._layer_text(MESSAGES_MEDIA_TYPE)
        return msgspec.json.decode(text, type=list[Message]) if text else []

    def details(self) -> ModelDetails:
        config = self.config
        if config.model_family and config.model_type:
            return ModelDetails(
                parent_model="",
                format=self.format,
                family=config.model_family,
                families=config.model_families,
                parameter_size=config.model_type,
                quantization_level=config.file_type,
            )
        header = self.gguf
        return ModelDetails(
            parent_model="",
            format=self.format,
            family=header.architecture,
            families=[header.architecture],
            parameter_size=human_number(header.parameter_count),
            quantization_level=header.file_type,
        )

    def is_complete(self) -> bool:
        """Every blob the manifest names is present (a dangling link counts as missing)."""
        layers = [self.manifest.config, *self.manifest.layers]
        return all(self.store.blob_path(layer.digest).exists() for layer in layers)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.blobs = root / "blobs"
        self._headers: dict[str, GGUFHeader] = {}

    def blob_path(self, digest: str) -> Path:
        return self.blobs / blob_name(digest)

    def gguf_header(self, digest: str) -> GGUFHeader:
        """The GGUF header of a blob, read once: blobs are content-addressed, so it never goes stale."""
        key = blob_name(digest)
        if key not in self._headers:
            self._headers[key] = read_header(self.blobs / key)
        return self._headers[key]

    def _manifest_files(self) -> Iterator[tuple[ModelName, Path]]:
        if not self.manifests.is_dir():
            return
        for path in self.manifests.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model = path.parts[-4:-1]
            name = ModelName(host=host, namespace=namespace, model=model, tag=path.name)
            if name.is_valid():
                yield name, path

    def _load(self, name: ModelName, path: Path) -> StoredModel | None:
        try:
            model = StoredModel(self, name, path)
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            log.warning("skipping unreadable model %s: %s", name.display, exc)
            return None
        if not model.is_complete():
            log.warning("skipping %s: a blob it names is missing", name.display)
            return None
        return model

    def list(self) -> list[StoredModel]:
        """Complete models, most recently modified first (as /api/tags sorts them)."""
        models = [m for name, path in self._manifest_files() if (m := self._load(name, path)) is not None]
        return sorted(models, key=lambda m: m.modified_at, reverse=True)

    def find(self, name: ModelName) -> StoredModel | None:
        """The stored model with this name, matched case-insensitively as Ollama does."""
        exact = self.manifests.joinpath(*name.parts)
        if exact.is_file():
            return self._load(name, exact)
        wanted = name.folded()
        for stored_name, path in self._manifest_files():
            if stored_name.folded() == wanted:
                return self._load(stored_name, path)
        return None

    # --- writing ---------------------------------------------------------------------------------

    def write_blob(self, data: bytes) -> Layer:
        """Store bytes as a blob; returns a layer (media type to be set by the caller)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            atomic_write(path, data)
        return Layer(mediaType="", digest=digest, size=len(data))

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        """Written last, after every blob it names: a model appears whole or not at all."""
        atomic_write(self.manifests.joinpath(*name.parts), msgspec.json.encode(manifest))

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Where a blob being downloaded or uploaded grows; it is kept for resuming, never listed."""
        return self.blobs / f"{blob_name(digest)}-partial"

    def commit_partial(self, digest: str) -> None:
        """Verify a finished partial blob against its digest and move it into place.

        ValueError (and the partial file removed) when the content does not match.
        """
        partial = self.partial_path(digest)
        with open(partial, "rb+") as file:
            os.fsync(file.fileno())
        actual = "sha256:" + sha256_file(partial)
        if actual != "sha256:" + blob_name(digest).removeprefix("sha256-"):
            partial.unlink(missing_ok=True)
            raise ValueError(f'digest mismatch, expected "{digest}", got "{actual}"')
        os.replace(partial, self.blob_path(digest))

    def referenced_blobs(self) -> set[str]:
        """Blob file names some manifest names (config included)."""
        names: set[str] = set()
        for _, path in self._manifest_files():
            try:
                manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
            except (OSError, msgspec.DecodeError):
                continue
            for layer in (manifest.config, *manifest.layers):
                try:
                    names.add(blob_name(layer.digest))
                except ValueError:
                    pass
        return names

    def remove_manifest(self, model: StoredModel) -> None:
        model.manifest_path.unlink(missing_ok=True)
        # Empty model and namespace folders go too, as Ollama leaves none behind.
        for folder in (model.manifest_path.parent, model.manifest_path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def prune(self) -> list[str]:
        """Remove blobs no manifest names (not partial downloads); returns their names."""
        if not self.blobs.is_dir():
            return []
        keep = self.referenced_blobs()
        removed = []
        for path in self.blobs.iterdir():
            if DIGEST_PATTERN.fullmatch(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def config_for_gguf(self, model_layer: Layer) -> Layer:
        """The config blob Ollama writes for a GGUF model, with details read from the file."""
        header = self.gguf_header(model_layer.digest)
        config = ModelConfig(
            model_format="gguf",
            model_family=header.architecture,
            model_families=[header.architecture],
            model_type=human_number(header.parameter_count),
            file_type=header.file_type,
            architecture="amd64",
            os="linux",
            rootfs=RootFS(diff_ids=[model_layer.digest]),
        )
        layer = self.write_blob(msgspec.json.encode(config))
        return Layer(mediaType=CONFIG_MEDIA_TYPE, digest=layer.digest, size=layer.size)
