"""A reader for the header of a GGUF file: its key/value metadata and its tensor table.

Only the header is read (no weights), so /api/show and /api/tags stay cheap and need no engine. Long
arrays (the vocabulary, its scores and merges: 49k strings for SmolLM2, 262k for Gemma 3) are skipped and
read from the file again when asked for, so a header held per model costs kilobytes, not tens of MB.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

GGUF_MAGIC = b"GGUF"

# value type -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_LENGTH = struct.Struct("<Q")

# Arrays with more items than this stay in the file until a caller asks for them.
LAZY_ARRAY_ITEMS = 64

# llama_ftype -> the name Ollama shows as quantization_level
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}

# ggml tensor type -> name, for /api/show's tensor list
TENSOR_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


class Tensor(msgspec.Struct, frozen=True):
    name: str
    type: str
    shape: list[int]


class _ArraySpan(msgspec.Struct, frozen=True):
    """Where a long array's items start in the file, their type and how many there are."""

    offset: int
    item_type: int
    count: int


class Metadata(Mapping[str, Any]):
    """A GGUF file's key/value metadata, in file order; long arrays are read from the file on access.

    A long array is read again at each access and not kept: callers that need one (the vocabulary at
    model load, /api/show verbose) use it once.
    """

    def __init__(self, path: Path, values: dict[str, Any]) -> None:
        self.path = path
        self._values = values  # a value, or an _ArraySpan for an array left in the file

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if isinstance(value, _ArraySpan):
            return _read_array(self.path, value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def array_item(self, key: str, index: int) -> Any:
        """One item of an array value (IndexError if out of range), reading no more of the file than needed."""
        value = self._values[key]
        if not isinstance(value, _ArraySpan):
            return value[index]
        if not 0 <= index < value.count:
            raise IndexError(f"{key} has {value.count} items")
        return _read_array(self.path, value, index)

    def array_length(self, key: str) -> int | None:
        """The number of items of an array value, without reading it (None for other values)."""
        value = self._values.get(key)
        if isinstance(value, _ArraySpan):
            return value.count
        return len(value) if isinstance(value, list) else None


class GGUFHeader(msgspec.Struct, frozen=True):
    metadata: Metadata
    tensors: list[Tensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def parameter_count(self) -> int:
        counted = self.metadata.get("general.parameter_count")
        if isinstance(counted, int) and counted > 0:
            return counted
        total = 0
        for tensor in self.tensors:
            elements = 1
            for dim in tensor.shape:
                elements *= dim
            total += elements
        return total

    @property
    def file_type(self) -> str:
        return FILE_TYPES.get(self.metadata.get("general.file_type", -1), "unknown")

    def arch_value(self, key: str) -> Any:
        """`<architecture>.<key>`, e.g. context_length."""
        return self.metadata.get(f"{self.architecture}.{key}")


class _Cursor:
    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        except struct.error as exc:
            raise GGUFError("truncated GGUF header") from exc
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise GGUFError("truncated GGUF header")
        text = bytes(self.buffer[self.offset : end]).decode("utf-8", errors="replace")
        self.offset = end
        return text

    def skip_array(self) -> _ArraySpan | None:
        """Past a long array, returning where it is; None (and nothing consumed) for a short one."""
        start = self.offset
        item_type, count = self.unpack("<I"), self.unpack("<Q")
        if count <= LAZY_ARRAY_ITEMS:
            self.offset = start
            return None
        span = _ArraySpan(offset=self.offset, item_type=item_type, count=count)
        if item_type in _SCALARS:
            self.offset += struct.calcsize(_SCALARS[item_type]) * count
        elif item_type == _STRING:
            offset, unpack = self.offset, _LENGTH.unpack_from
            try:
                for _ in range(count):
                    offset += 8 + unpack(self.buffer, offset)[0]
            except struct.error as exc:
                raise GGUFError("truncated GGUF header") from exc
            self.offset = offset
        else:  # arrays of arrays: rare and never long; read them whole
            self.offset = start
            return None
        if self.offset > len(self.buffer):
            raise GGUFError("truncated GGUF header")
        return span

    def value(self, value_type: int) -> Any:
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type in _SCALARS and item_type != 7:
                fmt = _SCALARS[item_type]
                size = struct.calcsize(fmt)
                values = list(struct.iter_unpack(fmt, self.buffer[self.offset : self.offset + size * count]))
                if len(values) != count:
                    raise GGUFError("truncated GGUF header")
                self.offset += size * count
                return [item for (item,) in values]
            return [self.value(item_type) for _ in range(count)]
        raise GGUFError(f"unknown GGUF value type {value_type}")


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == GGUF_MAGIC


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor table of the GGUF file at `path` (long arrays left in the file)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        cursor = _Cursor(memoryview(mapped))
        try:
            return _parse(cursor, path)
        finally:
            cursor.buffer.release()


def _read_array(path: Path, span: _ArraySpan, index: int | None = None) -> Any:
    """The items of an array left in the file, or only the one at `index`."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        cursor = _Cursor(memoryview(mapped))
        try:
            cursor.offset = span.offset
            if index is not None:
                if span.item_type in _SCALARS:
                    cursor.offset += struct.calcsize(_SCALARS[span.item_type]) * index
                else:  # strings: step over the ones before it
                    for _ in range(index):
                        length = cursor.unpack("<Q")  # moves the cursor past the length itself
                        cursor.offset += length
                return cursor.value(span.item_type)
            if span.item_type in _SCALARS and span.item_type != 7:
                fmt = _SCALARS[span.item_type]
                end = span.offset + struct.calcsize(fmt) * span.count
                return [item for (item,) in struct.iter_unpack(fmt, cursor.buffer[span.offset : end])]
            return [cursor.value(span.item_type) for _ in range(span.count)]
        finally:
            cursor.buffer.release()


def _parse(cursor: _Cursor, path: Path) -> GGUFHeader:
    if bytes(cursor.buffer[:4]) != GGUF_MAGIC:
        raise GGUFError("supplied file was not in GGUF format")
    cursor.offset = 4
    version = cursor.unpack("<I")
    if version < 2:
        raise GGUFError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = cursor.unpack("<Q"), cursor.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        value_type = cursor.unpack("<I")
        span = cursor.skip_array() if value_type == _ARRAY else None
        metadata[key] = span if span is not None else cursor.value(value_type)
    tensors = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.unpack("<Q") for _ in range(cursor.unpack("<I"))]
        tensor_type = cursor.unpack("<I")
        cursor.unpack("<Q")  # offset of the tensor's data
        tensors.append(Tensor(name=name, type=TENSOR_TYPES.get(tensor_type, str(tensor_type)), shape=dims))
    return GGUFHeader(metadata=Metadata(path, metadata), tensors=tensors)


def human_number(value: int) -> str:
    """Ollama's format.HumanNumber: 134515008 -> "134.52M", 7_000_000_000 -> "7B"."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if value >= scale:
            number = value / scale
            if unit == "K" or number != int(number):
                return f"{number:.{decimals}f}{unit}"
            return f"{number:.0f}{unit}"
    return str(value)
