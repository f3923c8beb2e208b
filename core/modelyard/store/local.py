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
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec

from modelyard.api.ollama.wire import ModelDetails
from modelyard.runtime.contract import Details, ModelView
from modelyard.runtime.messages import Message
from modelyard.store.gguf import GGUFHeader, human_number, read_header
from modelyard.store.names import ModelName

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
# One file of a model folder (ONNX Runtime GenAI); its relative path is the layer's title annotation.
ONNX_FILE_MEDIA_TYPE = "application/vnd.modelyard.onnx.file"
TITLE_ANNOTATION = "org.opencontainers.image.title"
ONNX_CONFIG_FILE = "genai_config.json"

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
        """The weights file: the GGUF, or the graph (`model.onnx`) of an ONNX model."""
        layer = self._layer(MODEL_MEDIA_TYPE)
        if layer is None and self.format == "onnx":
            files = self.files
            graph = self.onnx_config.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
            if graph in files:
                return files[graph]
        if layer is None:
            raise FileNotFoundError(f"{self.name.display} has no model layer")
        return self.store.blob_path(layer.digest)

    @cached_property
    def files(self) -> dict[str, Path]:
        """The files of a model folder (ONNX): relative path -> blob."""
        return {
            layer.title: self.store.blob_path(layer.digest)
            for layer in self.manifest.layers
            if layer.mediaType == ONNX_FILE_MEDIA_TYPE and layer.title
        }

    @cached_property
    def onnx_config(self) -> dict[str, Any]:
        """genai_config.json of an ONNX model ({} for other models)."""
        path = self.files.get(ONNX_CONFIG_FILE)
        return msgspec.json.decode(path.read_bytes()) if path else {}

    @cached_property
    def folder_chat_template(self) -> str:
        """A model folder's chat template: chat_template.jinja, else tokenizer_config.json's ("" if none)."""
        files = self.files
        if "chat_template.jinja" in files:
            return files["chat_template.jinja"].read_text(encoding="utf-8")
        if "tokenizer_config.json" in files:
            try:
                template = msgspec.json.decode(files["tokenizer_config.json"].read_bytes()).get("chat_template")
            except (msgspec.DecodeError, AttributeError):
                return ""
            return template if isinstance(template, str) else ""
        return ""

    def onnx_model_info(self) -> dict[str, Any]:
        """/api/show's model_info for an ONNX model, under the GGUF key names clients read."""
        model = self.onnx_config.get("model", {})
        decoder = model.get("decoder", {})
        family = self.config.model_family or str(model.get("type", ""))
        graphs = [path for name, path in self.files.items() if name.endswith(".onnx")]
        info: dict[str, Any] = {
            "general.architecture": family,
            "general.parameter_count": sum(sum(_read_onnx(path).parameters.values()) for path in graphs),
            f"{family}.context_length": model.get("context_length"),
            f"{family}.embedding_length": decoder.get("hidden_size"),
            f"{family}.block_count": decoder.get("num_hidden_layers"),
            f"{family}.attention.head_count": decoder.get("num_attention_heads"),
            f"{family}.attention.head_count_kv": decoder.get("num_key_value_heads"),
            f"{family}.vocab_size": model.get("vocab_size"),
            "tokenizer.ggml.bos_token_id": model.get("bos_token_id"),
            "tokenizer.ggml.eos_token_id": model.get("eos_token_id"),
        }
        return {key: value for key, value in info.items() if value is not None}

    def folder_view(self) -> FolderView:
        """The model's files under their own names in a temporary folder, as links to the blobs.

        Engines that read a folder (ONNX Runtime GenAI) get one without a copy of the weights; close the
        view when the model is unloaded.
        """
        return FolderView(self.files)

    @property
    def adapter_path(self) -> Path | None:
        """A LoRA adapter (Modelfile ADAPTER), if the model has one."""
        layer = self._layer(ADAPTER_MEDIA_TYPE)
        return None if layer is None else self.store.blob_path(layer.digest)

    @cached_property
    def gguf(self) -> GGUFHeader:
        layer = self._layer(MODEL_MEDIA_TYPE)
        assert layer is not None  # only models with weights are read as GGUF
        return self.store.gguf_header(layer.digest)

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
        if (config.model_family and config.model_type) or self.format != "gguf":
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

    @cached_property
    def view(self) -> ModelView:
        """What backends and the runtime see of this model (contract.ModelView)."""
        if self.format == "gguf":
            files = {"model": self.model_path}
            if self.adapter_path is not None:
                files["adapter"] = self.adapter_path
            metadata: Any = lambda: self.gguf.metadata  # noqa: E731 (read when a backend asks)
        else:
            files = dict(self.files)
            metadata = lambda: self.onnx_config  # noqa: E731
        return ModelView(
            name=self.name.display,
            format=self.format,
            digest=self.digest,
            size=self.size,
            files=files,
            metadata=metadata,
            template=self.template,
            system=self.system,
            parameters=self.parameters,
            messages=self.messages,
            details=lambda: msgspec.convert(msgspec.to_builtins(self.details()), Details),
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
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.blobs = root / "blobs"
        self._headers: dict[str, GGUFHeader] = {}
        # The last listing and the stat signature it was read under (see list()).
        self._listing: tuple[tuple[Any, ...], list[StoredModel]] | None = None

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


# --- ONNX Runtime GenAI folders ------------------------------------------------------------------


def onnx_layers(store: ModelStore, files: dict[str, str]) -> list[Layer]:
    """One layer per file of a model folder (relative path -> digest), titled by its path, sorted."""
    return [
        Layer(
            mediaType=ONNX_FILE_MEDIA_TYPE,
            digest=digest,
            size=store.blob_path(digest).stat().st_size,
            annotations={TITLE_ANNOTATION: path},
        )
        for path, digest in sorted(files.items())
    ]


def onnx_model_config(files: dict[str, Path]) -> ModelConfig:
    """The config blob of an ONNX GenAI folder (relative path -> file): family from genai_config.json,
    parameter count and precision read from the ONNX graphs.

    ValueError, with a message for the client, when the folder is not one ONNX Runtime GenAI can load.
    """
    try:
        genai = msgspec.json.decode(files[ONNX_CONFIG_FILE].read_bytes())
        model = genai["model"]
        family = str(model["type"])
    except (KeyError, TypeError, msgspec.DecodeError) as exc:
        raise ValueError(
            f"{ONNX_CONFIG_FILE} is not an ONNX Runtime GenAI config (it needs model.type): {exc}"
        ) from None
    graphs = [path for path in files if path.endswith(".onnx")]
    named = [
        section["filename"]
        for section in model.values()
        if isinstance(section, dict) and isinstance(section.get("filename"), str)
    ]
    for path in named:
        if path not in files:
            raise ValueError(f"{ONNX_CONFIG_FILE} names {path}, which is not among the files")
    if not graphs:
        raise ValueError("the folder has no .onnx model file")
    counts: dict[str, int] = {}
    for graph in graphs:
        summary = _read_onnx(files[graph])
        for location in summary.external:
            wanted = (Path(graph).parent / location).as_posix().removeprefix("./")
            if wanted not in files:
                raise ValueError(f"{graph} keeps its weights in {wanted}, which is not among the files")
        for precision, count in summary.parameters.items():
            counts[precision] = counts.get(precision, 0) + count
    total = sum(counts.values())
    decoder = model.get("decoder", {}) if isinstance(model.get("decoder"), dict) else {}
    return ModelConfig(
        model_format="onnx",
        model_family=family,
        model_families=[family],
        model_type=human_number(total) if total else "unknown",
        file_type=max(counts, key=counts.__getitem__) if counts else "unknown",
        architecture="amd64",
        os="linux",
        context_length=int(model.get("context_length") or 0),
        embedding_length=int(decoder.get("hidden_size") or 0),
    )


# ONNX TensorProto data types -> precision names.
_ONNX_WEIGHT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8", 2: "uint8"}
_SKIPPED_INITIALIZERS = ("cos_cache", "sin_cache")


class _OnnxSummary(msgspec.Struct):
    parameters: dict[str, int]  # precision -> parameters stored in it
    external: set[str]  # external data files the graph reads


def _read_onnx(path: Path) -> _OnnxSummary:
    """Parameters by precision and external data files of an ONNX model, from its protobuf.

    Only the fields needed are read (graph nodes, their attributes, initializer names, types and
    shapes); tensor payloads are skipped, so a model with embedded weights costs no copy.
    """
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ValueError(f"{path.name} is empty")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = memoryview(mapped)
            try:
                return _summarise(data)
            except (IndexError, ValueError) as exc:
                raise ValueError(f"an .onnx file is not a valid ONNX model: {exc}") from None
            finally:
                data.release()


def _summarise(data: memoryview) -> _OnnxSummary:
    graph = next((value for number, value in _fields(data, 0, len(data)) if number == 7), None)
    if not isinstance(graph, tuple):
        raise ValueError("no graph")
    nodes, initializers = [], {}
    for number, value in _fields(data, *graph):
        if number == 1:
            nodes.append(_node(data, value))
        elif number == 5:
            name, data_type, dims, location = _tensor(data, value)
            initializers[name] = (data_type, dims, location)
    parameters: dict[str, int] = {}
    accounted: set[str] = set()

    def add(precision: str, count: int) -> None:
        parameters[precision] = parameters.get(precision, 0) + count

    for op_type, inputs, attributes in nodes:
        if op_type == "MatMulNBits":
            add(f"int{attributes.get('bits', 4)}", attributes.get("K", 0) * attributes.get("N", 0))
            accounted.update(inputs[1:4])
        elif op_type == "GatherBlockQuantized":
            accounted.update(inputs[2:4])
            if inputs and inputs[0] in initializers and inputs[0] not in accounted:
                _, dims, _ = initializers[inputs[0]]
                add(f"int{attributes.get('bits', 4)}", _product(dims) * 8 // attributes.get("bits", 4))
                accounted.add(inputs[0])
    for name, (data_type, dims, _) in initializers.items():
        if name in accounted or any(skipped in name for skipped in _SKIPPED_INITIALIZERS):
            continue
        if data_type in _ONNX_WEIGHT_TYPES and len(dims) >= 1:
            add(_ONNX_WEIGHT_TYPES[data_type], _product(dims))
    external = {location for _, _, location in initializers.values() if location}
    return _OnnxSummary(parameters=parameters, external=external)


def _product(dims: list[int]) -> int:
    result = 1
    for dim in dims:
        result *= dim
    return result


def _node(data: memoryview, span: tuple[int, int]) -> tuple[str, list[str], dict[str, int]]:
    op_type, inputs, attributes = "", [], {}
    for number, value in _fields(data, *span):
        if number == 1:
            inputs.append(_text(data, value))
        elif number == 4:
            op_type = _text(data, value)
        elif number == 5:
            name, integer = "", None
            for field, item in _fields(data, *value):
                if field == 1:
                    name = _text(data, item)
                elif field == 3:
                    integer = item
            if integer is not None:
                attributes[name] = integer
    return op_type, inputs, attributes


def _tensor(data: memoryview, span: tuple[int, int]) -> tuple[str, int, list[int], str | None]:
    name, data_type, dims, location = "", 0, [], None
    for number, value in _fields(data, *span):
        if number == 1:
            if isinstance(value, tuple):  # packed
                position, end = value
                while position < end:
                    dim, position = _varint(data, position)
                    dims.append(dim)
            else:
                dims.append(value)
        elif number == 2:
            data_type = value
        elif number == 8:
            name = _text(data, value)
        elif number == 13:  # external_data: key/value entries
            entry = dict((field, _text(data, item)) for field, item in _fields(data, *value))
            if entry.get(1) == "location":
                location = entry.get(2)
    return name, data_type, dims, location


def _text(data: memoryview, span: tuple[int, int]) -> str:
    return bytes(data[span[0] : span[1]]).decode("utf-8", "replace")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message: varints as ints, length-delimited as spans.

    The value is typed Any: which of the two a field holds is fixed by the schema the caller reads.
    """
    position = start
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise ValueError("truncated field")
            yield number, (position, position + length)
            position += length
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
