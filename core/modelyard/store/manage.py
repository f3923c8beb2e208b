"""/api/create, /api/copy, /api/delete and /api/blobs: changing the store the way Ollama does.

Every check that can fail with a status runs before the first progress line. Blobs are written (and
verified) before the manifest that names them, and the manifest is renamed into place last, so a crash
at any moment leaves the old model or the new one, never a listed model with a missing blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from modelyard.errors import BadRequest, NotFound
from modelyard.runtime.options import OPTION_KINDS
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import Scheduler
from modelyard.store.formats import Blob, ModelFormat, NewModel
from modelyard.store.formats.gguf import gguf_config
from modelyard.store.formats.remote import remote_url
from modelyard.store.gguf import FILE_TYPES
from modelyard.store.local import (
    ADAPTER_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    DIGEST_PATTERN,
    LICENSE_MEDIA_TYPE,
    MESSAGES_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    PARAMS_MEDIA_TYPE,
    SYSTEM_MEDIA_TYPE,
    TEMPLATE_MEDIA_TYPE,
    Layer,
    Manifest,
    ModelConfig,
    ModelStore,
    StoredModel,
    sha256_file,
)
from modelyard.store.names import ModelName, strip_source
from modelyard.store.operations import CreateRequest, ProgressResponse


def check_digest(digest: str) -> str:
    """The digest as `sha256:<hex>`, or Ollama's 400."""
    match = DIGEST_PATTERN.fullmatch(digest or "")
    if not match:
        raise BadRequest("invalid digest format")
    return f"sha256:{match.group(1).lower()}"


def typed_parameter(key: str, value: Any, backend_parameters: dict[str, Any] | None = None) -> Any:
    """A Modelfile PARAMETER value converted to the option's type; unknown names are refused.

    Besides Ollama's options, a backend may declare parameters of its own (`parameters`, name -> type,
    e.g. the onnx backend's `provider`): they are stored with the model for the backend to read.
    """
    kind = OPTION_KINDS.get(key)
    values = value if isinstance(value, list) else [value]
    if kind is None and backend_parameters and key in backend_parameters:
        if len(values) != 1:
            raise BadRequest(f"parameter '{key}' takes one value")
        try:
            return msgspec.convert(values[0], backend_parameters[key], strict=False)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid value for parameter '{key}': {exc}") from None
    if kind is None:
        raise BadRequest(f"unknown parameter '{key}'")
    if kind == "array":
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"invalid value for parameter '{key}': expected strings")
        return list(values)
    if len(values) != 1:
        raise BadRequest(f"parameter '{key}' takes one value")
    item = values[0]
    try:
        if kind == "integer":
            return int(float(item)) if isinstance(item, str) else int(item)
        if kind == "float32":
            return float(item)
        if isinstance(item, str):
            if item.lower() not in ("true", "false"):
                raise ValueError(item)
            return item.lower() == "true"
        return bool(item)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"invalid value for parameter '{key}': {item!r} is not of type {kind}") from exc


def progress(status: str, **fields: Any) -> ProgressResponse:
    return ProgressResponse(status=status, **fields)


class Management:
    def __init__(self, store: ModelStore, backends: Backends, scheduler: Scheduler, prune: bool) -> None:
        self.store = store
        self.backends = backends
        self.scheduler = scheduler
        self.prune = prune

    # --- blobs ---------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        return self.store.has_blob(check_digest(digest))

    async def receive_blob(self, digest: str, body: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob after checking its digest; False when it was already there."""
        digest = check_digest(digest)
        if self.store.has_blob(digest):
            return False
        self.store.blobs.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.store.blobs, prefix=".tmp-")
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as file:
                async for chunk in body:
                    hasher.update(chunk)
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())
            actual = f"sha256:{hasher.hexdigest()}"
            if actual != digest:
                raise BadRequest(f'digest mismatch, expected "{digest}", got "{actual}"')
            os.replace(temporary, self.store.blob_path(digest))
        finally:
            Path(temporary).unlink(missing_ok=True)
        return True

    # --- copy and delete -----------------------------------------------------------------------

    def copy(self, source: str | None, destination: str | None) -> None:
        try:
            source_name = ModelName.parse(source or "")
        except BadRequest:
            raise BadRequest(f'source "{source or ""}" is invalid') from None
        try:
            destination_name = ModelName.parse(destination or "")
        except BadRequest:
            raise BadRequest(f'destination "{destination or ""}" is invalid') from None
        model = self.store.find(source_name)
        if model is None:
            raise NotFound(f'model "{source}" not found')
        self.store.write_manifest(destination_name, model.manifest)

    async def delete(self, requested: str | None) -> None:
        if not requested:
            raise BadRequest("model is required")
        try:
            name = ModelName.parse(requested)
        except BadRequest:
            raise BadRequest(f'name "{requested}" is invalid') from None
        model = self.store.find(name)
        if model is None:
            raise NotFound(f"model '{requested}' not found")
        await self.scheduler.unload(model.view)
        self.store.remove_manifest(model)
        if self.prune:
            await asyncio.to_thread(self.store.prune)

    # --- create --------------------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> AsyncIterator[ProgressResponse]:
        try:
            name = ModelName.parse(request.model or request.name or "")
        except BadRequest:
            raise BadRequest("invalid model name") from None
        if not request.from_ and not request.files:
            raise BadRequest("neither 'from' or 'files' was specified")
        if request.from_ and request.remote_host:
            # A model on another server (Ollama's remote models): its name there, nothing local to read.
            remote = ModelConfig(remote_host=remote_url(request.remote_host), remote_model=strip_source(request.from_))
            base = None
        else:
            remote = None
            base = self._base(request.from_) if request.from_ else None
        files = self._checked_files(request.files or {}) if remote is None else {}
        adapters = list(self._checked_files(request.adapters or {}).values())
        if len(adapters) > 1:
            raise BadRequest("only one adapter is currently supported")
        # PARAMETER tool_choice: the model's default tool_choice (an extension, docs/tools.md).
        backend_parameters = {**self._backend_parameters(), "tool_choice": str}
        parameters = {
            key: typed_parameter(key, value, backend_parameters) for key, value in (request.parameters or {}).items()
        }
        quantize = request.quantize or request.quantization
        layers = list(base.manifest.layers) if base else []
        config = remote or (base.config if base else ModelConfig())
        # The format of the new files, else the base model's: it decides what else the request may ask.
        new_format = self.store.formats.detect(files) if files else None
        model_format = new_format
        if model_format is None and remote is not None:
            model_format = self.store.formats.get("remote")
        elif model_format is None and base is not None:
            model_format = base.model_format
        if model_format is not None and not model_format.quantizes and quantize:
            raise BadRequest(f"quantization is only supported for GGUF models (this model is {model_format.title})")
        if model_format is not None and not model_format.adapters and adapters:
            raise BadRequest(f"adapters are only supported for GGUF models (this model is {model_format.title})")
        if new_format is not None:
            new_model = await asyncio.to_thread(new_format.create, files)
        if quantize:
            weights = new_model.layers if new_format is not None else layers
            source = next((layer.digest for layer in weights if layer.mediaType == MODEL_MEDIA_TYPE), None)
            quantizing = self._quantize_plan(source, quantize)

        if new_format is not None:
            yield progress(new_format.create_status)
            layers = self._with_new_files(layers, new_format, new_model)
            config = new_model.config
        elif base:
            for layer in base.manifest.layers:
                yield progress(f"using existing layer {layer.digest}")

        if quantize:
            async for update in self._quantize(layers, *quantizing):
                if isinstance(update, ProgressResponse):
                    yield update
                else:
                    layers, config = update

        for adapter in adapters:
            layers = [layer for layer in layers if layer.mediaType != ADAPTER_MEDIA_TYPE]
            layers.append(Layer(mediaType=ADAPTER_MEDIA_TYPE, digest=adapter.digest, size=adapter.size))
        if parameters and base is not None:
            parameters = {**base.parameters, **parameters}
        texts: list[tuple[str, bytes | None]] = [
            (TEMPLATE_MEDIA_TYPE, request.template.encode() if request.template is not None else None),
            (SYSTEM_MEDIA_TYPE, request.system.encode() if request.system is not None else None),
            (PARAMS_MEDIA_TYPE, msgspec.json.encode(parameters) if parameters else None),
            (MESSAGES_MEDIA_TYPE, msgspec.json.encode(request.messages) if request.messages is not None else None),
        ]
        for media_type, data in texts:
            if data is None:
                continue
            layer, created = self._text_layer(media_type, data)
            yield progress(f"{'creating new' if created else 'using existing'} layer {layer.digest}")
            layers = [existing for existing in layers if existing.mediaType != media_type] + [layer]
        if request.license is not None:
            licenses = [request.license] if isinstance(request.license, str) else request.license
            layers = [existing for existing in layers if existing.mediaType != LICENSE_MEDIA_TYPE]
            for text in licenses:
                layer, created = self._text_layer(LICENSE_MEDIA_TYPE, text.encode())
                yield progress(f"{'creating new' if created else 'using existing'} layer {layer.digest}")
                layers.append(layer)

        for field in ("renderer", "parser"):
            if (value := getattr(request, field)) is not None:
                config = msgspec.structs.replace(config, **{field: value})
        config = msgspec.structs.replace(
            config, rootfs=msgspec.structs.replace(config.rootfs, diff_ids=[layer.digest for layer in layers])
        )
        config_layer, _ = self._text_layer(CONFIG_MEDIA_TYPE, msgspec.json.encode(config))
        yield progress("writing manifest")
        previous = self.store.find(name)
        self.store.write_manifest(name, Manifest(config=config_layer, layers=layers))
        if previous is not None and self.prune:
            yield progress("removing unused layers")
            await asyncio.to_thread(self.store.prune)
        yield progress("success")

    def _base(self, requested: str) -> StoredModel:
        model = self.store.find(ModelName.parse(requested))
        if model is None:
            raise NotFound(f'model "{requested}" not found')
        return model

    def _checked_files(self, files: dict[str, str]) -> dict[str, Blob]:
        """The named blobs by path, after Ollama's checks on paths and digests."""
        checked = {}
        for path, digest in files.items():
            if path.startswith("/") or ".." in Path(path).parts or "\\" in path:
                raise BadRequest("file path must be relative")
            digest = check_digest(digest)
            if not self.store.has_blob(digest):
                raise BadRequest(f'blob "{digest}" not found, upload it to /api/blobs first')
            checked[path] = Blob(digest=digest, path=self.store.blob_path(digest))
        return checked

    def _with_new_files(self, layers: list[Layer], new_format: ModelFormat, new_model: NewModel) -> list[Layer]:
        """The new files' layers first, in place of the base model's files (of any format), and of its
        adapter when the new format takes none."""
        replaced = self.store.formats.media_types
        if not new_format.adapters:
            replaced |= {ADAPTER_MEDIA_TYPE}
        return new_model.layers + [layer for layer in layers if layer.mediaType not in replaced]

    def _backend_parameters(self) -> dict[str, Any]:
        """Modelfile parameters the installed backends declare (name -> type)."""
        declared: dict[str, Any] = {}
        for backend in self.backends.backends:
            declared.update(backend.parameters)
        return declared

    def _text_layer(self, media_type: str, data: bytes) -> tuple[Layer, bool]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        created = not self.store.has_blob(digest)
        layer = self.store.write_blob(data)
        return Layer(mediaType=media_type, digest=layer.digest, size=layer.size), created

    def _quantize_plan(self, source: str | None, kind: str) -> tuple[str, str, Any]:
        """(source file type, target file type, quantizing backend), or the reason it cannot be done."""
        if source is None:
            raise BadRequest("quantization needs a model layer")
        target_type = next((value for value in FILE_TYPES.values() if value.lower() == kind.lower()), None)
        if target_type is None:
            raise BadRequest(f"unsupported quantization type {kind}")
        source_type = self.store.gguf_header(source).file_type
        if source_type not in ("F16", "F32", "BF16"):
            raise BadRequest(f"quantization is only supported for F16 and F32 models (this model is {source_type})")
        quantizer = next((b for b in self.backends.backends if b.quantizes), None)
        if quantizer is None:
            raise BadRequest("no installed backend can quantize models (the llamacpp backend can)")
        return source_type, target_type, quantizer

    async def _quantize(
        self, layers: list[Layer], source_type: str, target_type: str, quantizer: Any
    ) -> AsyncIterator[Any]:
        """Progress lines, then the (layers, config) with the quantized model layer."""
        model_layer = next(layer for layer in layers if layer.mediaType == MODEL_MEDIA_TYPE)
        yield progress(f"quantizing {source_type} model to {target_type}", digest="0" * 19, total=model_layer.size)
        self.store.blobs.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.store.blobs, prefix=".tmp-")
        os.close(fd)
        try:
            await quantizer.quantize(self.store.blob_path(model_layer.digest), Path(temporary), target_type)
            yield progress("verifying conversion")
            digest = "sha256:" + await asyncio.to_thread(sha256_file, Path(temporary))
            with open(temporary, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(temporary, self.store.blob_path(digest))
        finally:
            Path(temporary).unlink(missing_ok=True)
        quantized = Layer(mediaType=MODEL_MEDIA_TYPE, digest=digest, size=self.store.blob_path(digest).stat().st_size)
        yield progress(f"creating new layer {digest}")
        config = gguf_config(self.store.gguf_header(digest), digest)
        yield [quantized if layer is model_layer else layer for layer in layers], config
