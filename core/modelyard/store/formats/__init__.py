"""The format registry: what the store knows of each kind of model files.

A format says which files of an /api/create are its own (`detects`), what layers and config blob they
become (`create`), and, for a stored model, its details, /api/show's model_info and chat template, the
metadata and files a backend sees, and its tensors. GGUF (gguf.py) and remote models (remote.py) are
built in; a plugin adds others through the `register_formats` hook (the onnx plugin's ONNX folders).

`Management.create` dispatches to the format that detects the files; `StoredModel` asks the format named
by its config (`model_format`, or "remote" when the config names a remote host).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pluggy

from modelyard.errors import BadRequest
from modelyard.runtime.contract import Details
from modelyard.store.gguf import Tensor
from modelyard.store.local import Layer, ModelConfig, StoredModel

log = logging.getLogger(__name__)

# What /api/create answers when no format recognises the files (Ollama's words: it knows only GGUF).
NOT_RECOGNISED = "supplied file was not in GGUF format"


class Blob(msgspec.Struct, frozen=True):
    """One uploaded file of an /api/create: its digest ("sha256:<hex>") and where its blob is."""

    digest: str
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


class NewModel(msgspec.Struct, frozen=True):
    """What a format makes of the files of an /api/create: the layers holding them, and the config."""

    layers: list[Layer]
    config: ModelConfig


class ModelFormat:
    """One kind of model files. Subclass it, set `name`, and override what the format knows.

    The defaults fit a format the store knows nothing about (a model pulled in a format no installed
    plugin reads): details come from the config blob, the files are the layers titled with a path, and
    there is no metadata, model_info, chat template or tensor list.
    """

    name: ClassVar[str] = ""  # the config blob's model_format, ModelView.format, details.format
    label: ClassVar[str] = ""  # how error messages name it ("ONNX"); the name when empty
    priority: ClassVar[int] = 100  # lower first: the first format that detects the files takes them
    # Media types of the layers that hold the model's files: a create with new files replaces them.
    media_types: ClassVar[frozenset[str]] = frozenset()
    create_status: ClassVar[str] = "parsing model"  # the progress line of /api/create
    adapters: ClassVar[bool] = False  # it takes a LoRA adapter (Modelfile ADAPTER)
    quantizes: ClassVar[bool] = False  # /api/create `quantize` applies to it

    @property
    def title(self) -> str:
        return self.label or self.name

    # --- /api/create ------------------------------------------------------------------------------

    def detects(self, files: Mapping[str, Blob]) -> bool:
        """Whether these files (relative path as sent -> blob) are a model of this format."""
        return False

    def create(self, files: Mapping[str, Blob]) -> NewModel:
        """The layers and config of a model made of the files `detects` accepted.

        Runs in a worker thread before the first progress line: raise BadRequest with a message for the
        client when the files are not a model this format can store.
        """
        raise BadRequest(f"{self.title} models cannot be created from files")

    # --- a stored model ---------------------------------------------------------------------------

    def files(self, model: StoredModel) -> dict[str, Path]:
        """ModelView.files: the model's files by name, as a backend opens them."""
        return dict(model.titled_files)

    def model_path(self, model: StoredModel) -> Path | None:
        """The weights file the Modelfile's FROM names (None: the model has none here)."""
        return None

    def metadata(self, model: StoredModel) -> Mapping[str, Any]:
        """ModelView.metadata: what the model's own files say about it (read when asked)."""
        return {}

    def details(self, model: StoredModel) -> Details:
        config = model.config
        return Details(
            format=model.format,
            family=config.model_family,
            families=config.model_families,
            parameter_size=config.model_type,
            quantization_level=config.file_type,
        )

    def model_info(self, model: StoredModel, verbose: bool) -> dict[str, Any]:
        """/api/show's model_info, under GGUF's key names (long arrays only when `verbose`)."""
        return {}

    def chat_template(self, model: StoredModel) -> str:
        """The chat template the model's files carry ("" if none); a Modelfile TEMPLATE takes precedence."""
        return ""

    def tensors(self, model: StoredModel) -> list[Tensor] | None:
        """/api/show's tensor list, for formats that have one."""
        return None


class UnknownFormat(ModelFormat):
    """A stored model whose format no installed format reads: shown from its config, run by no backend
    unless one claims the format by name."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def title(self) -> str:
        return self._name


class Formats:
    """The formats of one store, by name, and in the order in which they are asked to detect files."""

    def __init__(self, formats: list[ModelFormat]) -> None:
        self.formats = sorted(formats, key=lambda model_format: model_format.priority)
        self._by_name = {model_format.name: model_format for model_format in reversed(self.formats)}

    @classmethod
    def builtin(cls) -> list[ModelFormat]:
        from modelyard.store.formats.gguf import GGUFFormat
        from modelyard.store.formats.remote import RemoteFormat

        return [GGUFFormat(), RemoteFormat()]

    @classmethod
    def discover(cls, manager: pluggy.PluginManager) -> Formats:
        """The built-in formats and those the plugins register (`register_formats`)."""
        classes: list[type[ModelFormat]] = []
        manager.hook.register_formats(register=classes.append)
        formats = cls.builtin()
        for format_class in classes:
            if not (isinstance(format_class, type) and issubclass(format_class, ModelFormat) and format_class.name):
                raise ValueError(f"{format_class!r} is not a format: formats subclass ModelFormat and have a name")
            formats.append(format_class())
        return cls(formats)

    @classmethod
    def installed(cls) -> Formats:
        """The formats of the installed plugins (entry points), for a store made outside a server."""
        from modelyard.runtime.plugins import build_plugin_manager

        return cls.discover(build_plugin_manager())

    def get(self, name: str) -> ModelFormat:
        """The format of this name; one that knows only the config blob when none is installed."""
        found = self._by_name.get(name)
        return found if found is not None else UnknownFormat(name)

    def detect(self, files: Mapping[str, Blob]) -> ModelFormat:
        """The first format (by priority) that recognises the files, or Ollama's 400."""
        for model_format in self.formats:
            if model_format.detects(files):
                return model_format
        raise BadRequest(NOT_RECOGNISED)

    @property
    def media_types(self) -> frozenset[str]:
        """Every media type a format keeps its files in (replaced when a create brings new files)."""
        return frozenset().union(*(model_format.media_types for model_format in self.formats))

    def __repr__(self) -> str:
        return f"Formats({', '.join(model_format.name for model_format in self.formats)})"
