"""The model store, in Ollama's on-disk layout, so an existing Ollama store can be served in place.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   manifest (JSON, schema 2)
    <root>/blobs/sha256-<hex>                           content-addressed layers and config

Writes are atomic (temporary file, fsync, rename): a crash leaves the old state or the new one.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.runtime.contract import Details, ModelView, Remote
from modelyard.runtime.messages import Message
from modelyard.store.gguf import GGUFHeader, read_header
from modelyard.store.names import ModelName

if TYPE_CHECKING:
    from modelyard.store.formats import Formats, ModelFormat

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
# A layer that stands for one file of a model folder has its relative path as this annotation.
TITLE_ANNOTATION = "org.opencontainers.image.title"

DIGEST_PATTERN = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class Layer(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    from_: str | None = msgspec.field(default=None, name="from")
    annotations: dict[str, str] | None = None  # OCI annotations; registries keep them with the manifest

    @property
    def title(self) -> str | None:
        """The file name the layer stands for (OCI's image title annotation), if it has one."""
        return (self.annotations or {}).get(TITLE_ANNOTATION)


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
    remote_host: str = ""  # a model served by another server: its base URL ("http://gpu-box:11434")
    remote_model: str = ""  # and the model's name there
    renderer: str = ""  # a Modelfile RENDERER (kept; prompts come from the template)
    parser: str = ""  # a Modelfile PARSER: the tool-call syntax of the model's output (runtime/tools.py)
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
    """One manifest of the store and what its layers say; its format (store/formats) reads the files."""

    def __init__(self, store: ModelStore, name: ModelName, manifest_path: Path) -> None:
        self.store = store
        self.name = name
        self.manifest_path = manifest_path
        raw = manifest_path.read_bytes()
        self.manifest = msgspec.json.decode(raw, type=Manifest)
        self.digest = hashlib.sha256(raw).hexdigest()
        self.modified_at = dt.datetime.fromtimestamp(manifest_path.stat().st_mtime).astimezone()
        self.config = msgspec.json.decode(store.blob_path(self.manifest.config.digest).read_bytes(), type=ModelConfig)

    def layer(self, media_type: str) -> Layer | None:
        """The first layer of this media type, if any."""
        return next((layer for layer in self.manifest.layers if layer.mediaType == media_type), None)

    def _layer_text(self, media_type: str) -> str | None:
        layer = self.layer(media_type)
        return None if layer is None else self.store.blob_path(layer.digest).read_text(encoding="utf-8")

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)

    @property
    def format(self) -> str:
        """The format's name: "remote" for a model on another server, else the config's (GGUF by default)."""
        if self.config.remote_host:
            return "remote"
        return self.config.model_format or "gguf"

    @cached_property
    def model_format(self) -> ModelFormat:
        """The format that reads this model's files (one that knows only the config when not installed)."""
        return self.store.formats.get(self.format)

    @property
    def remote(self) -> Remote | None:
        config = self.config
        return Remote(host=config.remote_host, model=config.remote_model) if config.remote_host else None

    @property
    def model_path(self) -> Path:
        """The weights file (the GGUF, or an ONNX folder's graph), as the Modelfile's FROM names it."""
        path = self.model_format.model_path(self)
        if path is None:
            raise FileNotFoundError(f"{self.name.display} has no model layer")
        return path

    @cached_property
    def titled_files(self) -> dict[str, Path]:
        """The layers that stand for a file of a model folder (titled with its relative path) -> blob."""
        return {layer.title: self.store.blob_path(layer.digest) for layer in self.manifest.layers if layer.title}

    @cached_property
    def files(self) -> dict[str, Path]:
        """The model's files by name, as backends open them (ModelView.files)."""
        return self.model_format.files(self)

    @cached_property
    def metadata(self) -> Mapping[str, Any]:
        """What the model's files say about it: a GGUF header's metadata, an ONNX folder's genai_config.json."""
        return self.model_format.metadata(self)

    @cached_property
    def chat_template(self) -> str:
        """The chat template the model's files carry ("" if none); a Modelfile TEMPLATE is `template`."""
        return self.model_format.chat_template(self)

    def model_info(self, verbose: bool) -> dict[str, Any]:
        """/api/show's model_info."""
        return self.model_format.model_info(self, verbose)

    def details(self) -> Details:
        return self.model_format.details(self)

    def folder_view(self) -> FolderView:
        """The model's files under their own names in a temporary folder, as links to the blobs.

        Engines that read a folder (ONNX Runtime GenAI) get one without a copy of the weights; close the
        view when the model is unloaded.
        """
        return FolderView(self.files)

    @property
    def adapter_path(self) -> Path | None:
        """A LoRA adapter (Modelfile ADAPTER), if the model has one."""
        layer = self.layer(ADAPTER_MEDIA_TYPE)
        return None if layer is None else self.store.blob_path(layer.digest)

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

    @cached_property
    def view(self) -> ModelView:
        """What backends and the runtime see of this model (contract.ModelView); files and metadata come
        from its format, the metadata read when a backend first asks."""
        return ModelView(
            name=self.name.display,
            format=self.format,
            digest=self.digest,
            size=self.size,
            files=self.files,
            metadata=lambda: self.metadata,
            template=self.template,
            system=self.system,
            parameters=self.parameters,
            messages=self.messages,
            remote=self.remote,
            details=self.details,
            parser=self.config.parser or None,
        )

    def is_complete(self) -> bool:
        """Every blob the manifest names is present (a dangling link counts as missing)."""
        layers = [self.manifest.config, *self.manifest.layers]
        return all(self.store.blob_path(layer.digest).exists() for layer in layers)


class FolderView:
    """A temporary folder of links named by relative paths; `close()` removes it (never the targets).

    Symbolic links where the system allows them, else hard links (same file system), else copies.
    """

    def __init__(self, files: dict[str, Path]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="modelyard-view-"))
        try:
            for relative, target in files.items():
                link = self.path / relative
                link.parent.mkdir(parents=True, exist_ok=True)
                _link(target.resolve(), link)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> FolderView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of a folder, none if it is missing (or vanished while being listed)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _link(target: Path, link: Path) -> None:
    try:
        link.symlink_to(target)
        return
    except OSError:
        pass
    try:
        os.link(target, link)
    except OSError:
        shutil.copyfile(target, link)


class ModelStore:
    def __init__(self, root: Path, formats: Formats | None = None) -> None:
        self.root = root
        self._formats = formats
        self.manifests = root / "manifests"
        self.blobs = root / "blobs"
        self._headers: dict[str, GGUFHeader] = {}
        # The last listing and the stat signature it was read under (see list()).
        self._listing: tuple[tuple[Any, ...], list[StoredModel]] | None = None

    @cached_property
    def formats(self) -> Formats:
        """The formats models are read with: the server's, else those of the installed plugins."""
        if self._formats is not None:
            return self._formats
        from modelyard.store.formats import Formats

        return Formats.installed()

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

    def signature(self) -> tuple[Any, ...]:
        """What a listing depends on, from stat calls only: each manifest's path, inode, size and mtime,
        and the blobs folder's mtime (a blob added or removed makes a model complete or incomplete).

        This catches a manifest written by another process, in place or by rename; this process's own
        writes also drop the listing directly (write_manifest, remove_manifest).
        """
        entries: list[tuple[Any, ...]] = []
        folders = [self.manifests]
        for _ in range(3):  # host, namespace, model
            folders = [Path(entry.path) for folder in folders for entry in _scan(folder) if entry.is_dir()]
        for folder in folders:
            for entry in _scan(folder):
                if entry.is_file() and not entry.name.startswith("."):
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:  # removed since the scan (a delete in another thread)
                        continue
                    entries.append((entry.path, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        try:
            blobs = self.blobs.stat().st_mtime_ns
        except OSError:
            blobs = None
        return (blobs, *sorted(entries))

    def cached_list(self) -> list[StoredModel] | None:
        """The last listing if the store has not changed since (stat calls only, no file read), else None.

        The same list object for as long as the store is unchanged (callers may key caches on it), so it
        must not be modified.
        """
        listing = self._listing
        if listing is not None and listing[0] == self.signature():
            return listing[1]
        return None

    def list(self) -> list[StoredModel]:
        """Complete models, most recently modified first (as /api/tags sorts them); not to be modified.

        Kept while the store's stat signature stays the same: /api/tags is polled every few seconds by
        some clients, and reading every manifest and config blob each time costs far more than the stat
        walk.
        """
        signature = self.signature()  # before reading, so a change made meanwhile is seen next time
        listing = self._listing
        if listing is not None and listing[0] == signature:
            return listing[1]
        models = [m for name, path in self._manifest_files() if (m := self._load(name, path)) is not None]
        models.sort(key=lambda m: m.modified_at, reverse=True)
        self._listing = (signature, models)
        return models

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
        self._listing = None

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
        self._listing = None
        # Empty model and namespace folders go too, as Ollama leaves none behind.
        for folder in (model.manifest_path.parent, model.manifest_path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def prune(self) -> builtins.list[str]:  # `list` here is the method above
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
        from modelyard.store.formats.gguf import gguf_config

        config = gguf_config(self.gguf_header(model_layer.digest), model_layer.digest)
        layer = self.write_blob(msgspec.json.encode(config))
        return Layer(mediaType=CONFIG_MEDIA_TYPE, digest=layer.digest, size=layer.size)
