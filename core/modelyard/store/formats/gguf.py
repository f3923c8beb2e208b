"""GGUF, llama.cpp's single-file format: what Ollama stores, and the store's default format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.errors import BadRequest
from modelyard.runtime.contract import Details
from modelyard.store.formats import Blob, ModelFormat, NewModel
from modelyard.store.gguf import GGUFHeader, Tensor, human_number, is_gguf, read_header
from modelyard.store.local import ADAPTER_MEDIA_TYPE, MODEL_MEDIA_TYPE, Layer, ModelConfig, RootFS, StoredModel

# Ollama drops these from model_info: the name is noise, the template is shown separately.
HIDDEN_METADATA = ("general.name", "tokenizer.chat_template")
# /api/show leaves arrays longer than this out of model_info unless asked to be verbose.
SHORT_ARRAY_ITEMS = 5


def gguf_config(header: GGUFHeader, digest: str) -> ModelConfig:
    """The config blob Ollama writes for a GGUF model, with details read from the file's header."""
    return ModelConfig(
        model_format="gguf",
        model_family=header.architecture,
        model_families=[header.architecture],
        model_type=human_number(header.parameter_count),
        file_type=header.file_type,
        architecture="amd64",
        os="linux",
        rootfs=RootFS(diff_ids=[digest]),
    )


class GGUFFormat(ModelFormat):
    name = "gguf"
    label = "GGUF"
    priority = 1000  # after the folder formats: their folders may hold a stray .gguf
    create_status = "parsing GGUF"
    adapters = True
    quantizes = True
    media_types = frozenset({MODEL_MEDIA_TYPE})

    def detects(self, files: Mapping[str, Blob]) -> bool:
        return any(is_gguf(blob.path) for blob in files.values())

    def create(self, files: Mapping[str, Blob]) -> NewModel:
        if not files:
            raise BadRequest("no files provided to convert")
        ggufs = [blob for blob in files.values() if is_gguf(blob.path)]
        if not ggufs:
            raise BadRequest("supplied file was not in GGUF format")
        if len(ggufs) > 1 or len(files) > 1:
            raise BadRequest("more than one file was given: create takes one GGUF file")
        blob = ggufs[0]
        layer = Layer(mediaType=MODEL_MEDIA_TYPE, digest=blob.digest, size=blob.size)
        return NewModel(layers=[layer], config=gguf_config(read_header(blob.path), blob.digest))

    # --- a stored model ---------------------------------------------------------------------------

    def header(self, model: StoredModel) -> GGUFHeader:
        """The model's GGUF header (read once per blob by the store)."""
        layer = model.layer(MODEL_MEDIA_TYPE)
        if layer is None:
            raise FileNotFoundError(f"{model.name.display} has no model layer")
        return model.store.gguf_header(layer.digest)

    def files(self, model: StoredModel) -> dict[str, Path]:
        """ "model", and "adapter" when the model has a LoRA adapter (Modelfile ADAPTER)."""
        files = {"model": self._weights(model)}
        adapter = model.layer(ADAPTER_MEDIA_TYPE)
        if adapter is not None:
            files["adapter"] = model.store.blob_path(adapter.digest)
        return files

    def model_path(self, model: StoredModel) -> Path | None:
        return self._weights(model)

    def _weights(self, model: StoredModel) -> Path:
        layer = model.layer(MODEL_MEDIA_TYPE)
        if layer is None:
            raise FileNotFoundError(f"{model.name.display} has no model layer")
        return model.store.blob_path(layer.digest)

    def metadata(self, model: StoredModel) -> Mapping[str, Any]:
        return self.header(model).metadata

    def details(self, model: StoredModel) -> Details:
        config = model.config
        if config.model_family and config.model_type:
            return super().details(model)
        # A config written by an older tool: the header says the rest.
        header = self.header(model)
        return Details(
            format=model.format,
            family=header.architecture,
            families=[header.architecture],
            parameter_size=human_number(header.parameter_count),
            quantization_level=header.file_type,
        )

    def model_info(self, model: StoredModel, verbose: bool) -> dict[str, Any]:
        header = self.header(model)
        metadata = header.metadata
        info: dict[str, Any] = {}
        for key in metadata:
            if key in HIDDEN_METADATA:
                continue
            length = metadata.array_length(key)  # long arrays stay in the file unless verbose asks for them
            info[key] = [] if length is not None and length > SHORT_ARRAY_ITEMS and not verbose else metadata[key]
        info.setdefault("general.parameter_count", header.parameter_count)
        return info

    def chat_template(self, model: StoredModel) -> str:
        return str(self.header(model).metadata.get("tokenizer.chat_template", ""))

    def tensors(self, model: StoredModel) -> list[Tensor] | None:
        return list(self.header(model).tensors)
