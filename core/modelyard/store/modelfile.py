"""Ollama's Modelfile: FROM, PARAMETER, TEMPLATE, SYSTEM, MESSAGE, LICENSE, ADAPTER, RENDERER, PARSER.

Instructions are case-insensitive; an argument may be "quoted" or span lines in \"\"\"triple quotes\"\"\";
lines starting with # are comments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

INSTRUCTIONS = ("from", "parameter", "template", "system", "message", "license", "adapter", "renderer", "parser")
ROLES = ("system", "user", "assistant", "tool")


class ModelfileError(ValueError):
    pass


class Modelfile(msgspec.Struct, kw_only=True):
    from_: str = ""
    parameters: dict[str, list[str]] = msgspec.field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, str]] = msgspec.field(default_factory=list)
    licenses: list[str] = msgspec.field(default_factory=list)
    adapters: list[str] = msgspec.field(default_factory=list)
    renderer: str | None = None
    parser: str | None = None  # the tool-call syntax of the model's output (docs/tools.md)


def _argument(text: str, position: int) -> tuple[str, int]:
    """The argument starting at `position` (after the instruction) and where the next line starts."""
    rest = text[position:].lstrip(" \t")
    start = len(text) - len(rest)
    if rest.startswith('"""'):
        end = text.find('"""', start + 3)
        if end < 0:
            raise ModelfileError("unterminated triple-quoted string")
        newline = text.find("\n", end + 3)
        return text[start + 3 : end], len(text) if newline < 0 else newline + 1
    if rest.startswith('"'):
        # "quoted", possibly over several lines (Ollama quotes a multi-line value without quotes so).
        end = text.find('"', start + 1)
        newline = text.find("\n", end + 1) if end >= 0 else -1
        if end >= 0 and not text[end + 1 : len(text) if newline < 0 else newline].strip():
            return text[start + 1 : end], len(text) if newline < 0 else newline + 1
    newline = text.find("\n", start)
    line_end = len(text) if newline < 0 else newline
    value = text[start:line_end].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value, line_end + 1


def parse_modelfile(text: str) -> Modelfile:
    result = Modelfile()
    position = 0
    while position < len(text):
        newline = text.find("\n", position)
        line = text[position : len(text) if newline < 0 else newline]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            position = len(text) if newline < 0 else newline + 1
            continue
        word = stripped.split(None, 1)[0]
        instruction = word.lower()
        if instruction not in INSTRUCTIONS:
            raise ModelfileError(f"unknown instruction: {word}")
        after = position + line.index(word) + len(word)
        if instruction in ("parameter", "message"):
            rest = text[after:].lstrip(" \t")
            key = rest.split(None, 1)[0] if rest.strip() else ""
            if not key or key.startswith('"'):
                raise ModelfileError(f"{word} needs a name and a value")
            after = len(text) - len(rest) + len(key)
            value, position = _argument(text, after)
            if instruction == "parameter":
                result.parameters.setdefault(key.lower(), []).append(value)
            else:
                if key.lower() not in ROLES:
                    raise ModelfileError(f"invalid message role: {key}")
                result.messages.append({"role": key.lower(), "content": value})
            continue
        value, position = _argument(text, after)
        if instruction == "from":
            result.from_ = value
        elif instruction == "template":
            result.template = value
        elif instruction == "system":
            result.system = value
        elif instruction == "license":
            result.licenses.append(value)
        elif instruction == "renderer":
            result.renderer = value
        elif instruction == "parser":
            result.parser = value
        else:
            result.adapters.append(value)
    if not result.from_:
        raise ModelfileError("no FROM line")
    return result


def source_modelfile(path: Path) -> tuple[Modelfile, Path]:
    """The Modelfile at `path`, or `FROM path` for a model file or folder; and the folder FROM is relative to."""
    if path.is_dir() or path.suffix.lower() == ".gguf":
        return Modelfile(from_=str(path.resolve())), path.parent
    return parse_modelfile(path.read_text()), path.parent


def create_request(modelfile: Modelfile, base: Path, upload: Callable[[Path], str]) -> dict[str, Any]:
    """The body of /api/create for `modelfile` (without the model's name).

    A FROM naming a folder (ONNX Runtime GenAI) or a file, relative to `base`, is uploaded with `upload`
    (path -> digest); any other FROM names a model.
    """
    body: dict[str, Any] = {}
    source = base / Path(modelfile.from_).expanduser()
    if source.is_dir():
        # A model folder: every file but hidden ones, by its path inside the folder.
        found = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
        if not found:
            raise ModelfileError(f"{modelfile.from_}: the folder has no files")
        body["files"] = {p.relative_to(source).as_posix(): upload(p) for p in found}
    elif modelfile.from_.startswith((".", "/", "~")) or source.is_file():
        if not source.is_file():
            raise ModelfileError(f"{modelfile.from_}: no such file")
        body["files"] = {source.name: upload(source)}
    else:
        body["from"] = modelfile.from_
    if modelfile.adapters:
        adapter = base / Path(modelfile.adapters[0]).expanduser()
        body["adapters"] = {adapter.name: upload(adapter)}
    fields = (
        ("template", modelfile.template),
        ("system", modelfile.system),
        ("renderer", modelfile.renderer),
        ("parser", modelfile.parser),
    )
    for field, value in fields:
        if value is not None:
            body[field] = value
    if modelfile.parameters:
        body["parameters"] = modelfile.parameters
    if modelfile.messages:
        body["messages"] = modelfile.messages
    if modelfile.licenses:
        body["license"] = modelfile.licenses
    return body
