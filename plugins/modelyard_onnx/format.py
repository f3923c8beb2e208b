"""ONNX Runtime GenAI folders in the store: a format of the format registry (modelyard.plugin.ModelFormat).

A folder (genai_config.json, the .onnx graphs and their external weights, tokenizer files, a chat
template) is stored as one layer per file, titled by its relative path, so push and pull keep the names.
Its details come from genai_config.json and the graphs: the parameter count and precision are read from
the ONNX protobuf itself (a small reader below: only the fields needed, tensor payloads skipped).

Registered under its own entry point (`onnx-format`), so a server without the onnx backend still lists
and shows ONNX models; it imports nothing of the engine.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from modelyard.plugin import (
    TITLE_ANNOTATION,
    BadRequest,
    Blob,
    Layer,
    ModelConfig,
    ModelFormat,
    NewModel,
    StoredModel,
    hookimpl,
    human_number,
)

# One file of a model folder; its relative path is the layer's title annotation.
ONNX_FILE_MEDIA_TYPE = "application/vnd.modelyard.onnx.file"
ONNX_CONFIG_FILE = "genai_config.json"


class OnnxFolderFormat(ModelFormat):
    name = "onnx"
    label = "ONNX"
    priority = 50  # before GGUF: a folder is recognised by its genai_config.json
    media_types = frozenset({ONNX_FILE_MEDIA_TYPE})
    create_status = "parsing ONNX model"

    def detects(self, files: Mapping[str, Blob]) -> bool:
        return ONNX_CONFIG_FILE in {Path(path).as_posix() for path in files}

    def create(self, files: Mapping[str, Blob]) -> NewModel:
        folder = {Path(path).as_posix(): blob for path, blob in files.items()}
        if len(folder) != len(files) or "." in folder:
            raise BadRequest("file paths must be distinct and name files")
        try:
            config = onnx_model_config({path: blob.path for path, blob in folder.items()})
        except (OSError, ValueError) as exc:
            raise BadRequest(f"not an ONNX Runtime GenAI model: {exc}") from None
        layers = [
            Layer(
                mediaType=ONNX_FILE_MEDIA_TYPE, digest=blob.digest, size=blob.size, annotations={TITLE_ANNOTATION: path}
            )
            for path, blob in sorted(folder.items())
        ]
        return NewModel(layers=layers, config=config)

    # --- a stored model ---------------------------------------------------------------------------

    def model_path(self, model: StoredModel) -> Path | None:
        """The decoder's graph (`model.onnx` unless genai_config.json names another)."""
        graph = model.metadata.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
        return model.files.get(graph)

    def metadata(self, model: StoredModel) -> Mapping[str, Any]:
        """genai_config.json ({} when the folder has none)."""
        path = model.files.get(ONNX_CONFIG_FILE)
        return msgspec.json.decode(path.read_bytes()) if path else {}

    def chat_template(self, model: StoredModel) -> str:
        return folder_chat_template(model.files)

    def model_info(self, model: StoredModel, verbose: bool) -> dict[str, Any]:
        """/api/show's model_info for an ONNX model, under the GGUF key names clients read."""
        genai = model.metadata.get("model", {})
        decoder = genai.get("decoder", {})
        family = model.config.model_family or str(genai.get("type", ""))
        graphs = [path for name, path in model.files.items() if name.endswith(".onnx")]
        info: dict[str, Any] = {
            "general.architecture": family,
            "general.parameter_count": sum(sum(_read_onnx(path).parameters.values()) for path in graphs),
            f"{family}.context_length": genai.get("context_length"),
            f"{family}.embedding_length": decoder.get("hidden_size"),
            f"{family}.block_count": decoder.get("num_hidden_layers"),
            f"{family}.attention.head_count": decoder.get("num_attention_heads"),
            f"{family}.attention.head_count_kv": decoder.get("num_key_value_heads"),
            f"{family}.vocab_size": genai.get("vocab_size"),
            "tokenizer.ggml.bos_token_id": genai.get("bos_token_id"),
            "tokenizer.ggml.eos_token_id": genai.get("eos_token_id"),
        }
        return {key: value for key, value in info.items() if value is not None}


@hookimpl
def register_formats(register: Any) -> None:
    register(OnnxFolderFormat)


def folder_chat_template(files: Mapping[str, Path]) -> str:
    """A model folder's chat template: chat_template.jinja, else tokenizer_config.json's ("" if none)."""
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].read_text(encoding="utf-8")
    if "tokenizer_config.json" in files:
        try:
            template = msgspec.json.decode(files["tokenizer_config.json"].read_bytes()).get("chat_template")
        except (msgspec.DecodeError, AttributeError):
            return ""
        return template if isinstance(template, str) else ""
    return ""


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
