"""Mutants: deviations from the Ollama API, as data (`mutants.yaml`), and the functions that apply them.

A mutant changes what a server receives (a request mutation: the server "ignores" an input) or what the
client gets back (a response mutation: a field dropped, renamed, scaled, retyped, a status, content type or
error message changed, stream lines reordered, merged or split, list entries reordered). The mutating proxy
(proxy.py) applies one at a time between the suite and a real server; mutation.py scores the suite by how
many of them it notices.

    - id: generate-durations-in-milliseconds
      description: Durations are reported in milliseconds instead of nanoseconds.
      endpoints: ["POST /api/generate"]       # the requests it touches: only these endpoints' cases run
      where: {final: true}                     # optional: which JSON objects (or responses) it changes
      response: {scale: {total_duration: 1.0e-6, eval_duration: 1.0e-6}}
      survives: why the suite accepts it       # optional: a survivor the suite cannot or need not kill

Paths are those of the check language (checks.py): `message.role`, `models.*.digest`,
`model_info["general.architecture"]`; `*` stands for every element of a list or every key of an object.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from .checks import MISSING, Segment, parse_path
from .schema import DataError, Strict, package_dir

MUTANT_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
LineOperation = Literal["reverse", "merge", "split", "drop-first", "drop-last", "duplicate-last", "one-object"]


class RequestMutation(Strict, kw_only=True):
    """What the server receives instead of the request: inputs it ignores or misreads."""

    drop: list[str] = msgspec.field(default_factory=list)  # body paths removed
    set: dict[str, Any] = msgspec.field(default_factory=dict)  # body paths given another value
    prepend: dict[str, Any] = msgspec.field(default_factory=dict)  # a value put first in the array at a path


class ResponseMutation(Strict, kw_only=True):
    """What the client receives instead of the answer."""

    drop: list[str] = msgspec.field(default_factory=list)  # fields removed
    rename: dict[str, str] = msgspec.field(default_factory=dict)  # path -> the field's new name
    scale: dict[str, float] = msgspec.field(default_factory=dict)  # numbers multiplied (integers stay integers)
    set: dict[str, Any] = msgspec.field(default_factory=dict)  # values replaced (wrong values, wrong types)
    stringify: list[str] = msgspec.field(default_factory=list)  # values replaced by their JSON text
    reverse: list[str] = msgspec.field(default_factory=list)  # arrays (list entries) in reverse order
    status: int | None = None  # the HTTP status
    content_type: str | None = None  # the Content-Type header
    error: str | None = None  # the message of an error body or error line
    lines: LineOperation | None = None  # the NDJSON stream's lines reordered, merged, split, dropped
    body: str | None = None  # the whole body replaced by this text
    drop_headers: list[str] = msgspec.field(default_factory=list)  # response headers removed


class Where(Strict, kw_only=True):
    """Which responses and JSON objects a mutation changes; every given condition must hold."""

    status: list[int] | None = None  # upstream statuses (default: any)
    final: bool | None = None  # True: only final objects (done true, status success, errors); False: only chunks
    equals: dict[str, Any] = msgspec.field(default_factory=dict)  # only objects whose path has this value
    streamed: bool | None = None  # True: only NDJSON answers; False: only single JSON objects


class Mutant(Strict, kw_only=True):
    id: str
    description: str
    endpoints: list[str]  # "POST /api/generate", "HEAD /api/blobs/*" (shell patterns on the path)
    request: RequestMutation | None = None
    response: ResponseMutation | None = None
    where: Where = msgspec.field(default_factory=Where)
    survives: str | None = None  # why the suite accepts this deviation (docs/compatibility.md shows it)

    def __post_init__(self) -> None:
        if not re.match(MUTANT_ID, self.id):
            raise ValueError(f"mutant id {self.id!r} must be lowercase words joined by dashes")
        if self.request is None and self.response is None:
            raise ValueError(f"mutant {self.id}: give a `request` or a `response` mutation")
        for endpoint in self.endpoints:
            method, _, path = endpoint.partition(" ")
            if method not in ("GET", "HEAD", "POST", "DELETE", "OPTIONS") or not path.startswith("/"):
                raise ValueError(f"mutant {self.id}: endpoint {endpoint!r} must look like `POST /api/generate`")
        for paths in self.paths():
            parse_path(paths)

    def paths(self) -> list[str]:
        request = self.request or RequestMutation()
        response = self.response or ResponseMutation()
        return [
            *request.drop,
            *request.set,
            *request.prepend,
            *response.drop,
            *response.rename,
            *response.scale,
            *response.set,
            *response.stringify,
            *response.reverse,
            *self.where.equals,
        ]

    def touches(self, method: str, path: str) -> bool:
        """Whether a request of this method to this path (the query left aside) is one the mutant changes."""
        path = path.split("?", 1)[0]
        for endpoint in self.endpoints:
            wanted_method, _, pattern = endpoint.partition(" ")
            if method == wanted_method and fnmatch.fnmatchcase(path, pattern):
                return True
        return False

    def words(self) -> set[str]:
        """The field names the mutant is about, for putting the cases most likely to notice it first."""
        names: set[str] = set()
        for path in self.paths():
            names.update(segment.key for segment in parse_path(path) if segment.kind == "key" and segment.key)
        return names


class Catalogue(msgspec.Struct, kw_only=True):
    path: Path
    mutants: list[Mutant]


def default_catalogue() -> Path:
    return package_dir() / "mutants.yaml"


@cache
def load_catalogue(path: Path | None = None) -> Catalogue:
    path = path or default_catalogue()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        mutants = msgspec.convert(data, list[Mutant])
    except (yaml.YAMLError, msgspec.ValidationError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from exc
    seen: set[str] = set()
    for mutant in mutants:
        if mutant.id in seen:
            raise DataError(f"{path}: mutant id {mutant.id} is not unique")
        seen.add(mutant.id)
    return Catalogue(path=path, mutants=mutants)


# --- changing JSON values -------------------------------------------------------------------------------


def _parents(value: Any, segments: list[Segment]) -> list[tuple[Any, Any]]:
    """(container, key) for every place the path names, where the container exists (the key may not)."""
    if not segments:
        return []
    places: list[tuple[Any, Any]] = []
    head, rest = segments[0], segments[1:]
    if head.kind == "key":
        if isinstance(value, dict):
            key: Any = head.key
        elif isinstance(value, list) and head.key.isdigit() and int(head.key) < len(value):
            key = int(head.key)
        else:
            return []
        if not rest:
            return [(value, key)]
        return _parents(value[key], rest) if (isinstance(value, list) or key in value) else []
    if head.kind == "star":
        keys = list(value) if isinstance(value, dict) else range(len(value)) if isinstance(value, list) else []
        for key in keys:
            places.extend([(value, key)] if not rest else _parents(value[key], rest))
        return places
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict) and str(item.get(head.key)) == head.value:
            return [(value, index)] if not rest else _parents(item, rest)
    return []


def _present(container: Any, key: Any) -> bool:
    return key in container if isinstance(container, dict) else 0 <= key < len(container)


def _scaled(number: Any, factor: float) -> Any:
    if isinstance(number, bool) or not isinstance(number, int | float):
        return number
    result = number * factor
    return int(result) if isinstance(number, int) else result


def mutate_object(document: dict[str, Any], response: ResponseMutation) -> dict[str, Any]:
    """A copy of one JSON object with the field operations applied."""
    result = copy.deepcopy(document)
    for path in response.drop:
        for container, key in reversed(_parents(result, parse_path(path))):
            if _present(container, key):
                del container[key]
    for path, name in response.rename.items():
        for container, key in _parents(result, parse_path(path)):
            if isinstance(container, dict) and key in container:
                container[name] = container.pop(key)
    for path, factor in response.scale.items():
        for container, key in _parents(result, parse_path(path)):
            if _present(container, key):
                container[key] = _scaled(container[key], factor)
    for path, value in response.set.items():
        for container, key in _parents(result, parse_path(path)):
            if isinstance(container, dict) or _present(container, key):
                container[key] = value
    for path in response.stringify:
        for container, key in _parents(result, parse_path(path)):
            if _present(container, key):
                container[key] = json.dumps(container[key])
    for path in response.reverse:
        for container, key in _parents(result, parse_path(path)):
            if _present(container, key) and isinstance(container[key], list):
                container[key] = list(reversed(container[key]))
    if response.error is not None and isinstance(result.get("error"), str):
        result["error"] = response.error
    return result


def mutate_request_body(body: Any, request: RequestMutation) -> Any:
    if not isinstance(body, dict):
        return body
    result = copy.deepcopy(body)
    for path in request.drop:
        for container, key in reversed(_parents(result, parse_path(path))):
            if _present(container, key):
                del container[key]
    for path, value in request.set.items():
        for container, key in _parents(result, parse_path(path)):
            if isinstance(container, dict) or _present(container, key):
                container[key] = value
    for path, value in request.prepend.items():
        for container, key in _parents(result, parse_path(path)):
            if _present(container, key) and isinstance(container[key], list) and container[key]:
                container[key] = [value, *container[key]]
    return result


def is_final(document: dict[str, Any]) -> bool:
    """The object that ends an answer: a final chunk, a progress stream's success line, an error."""
    return document.get("done") is True or document.get("status") == "success" or "error" in document


def selected(document: Any, where: Where, streamed: bool) -> bool:
    if not isinstance(document, dict):
        return False
    if where.streamed is not None and where.streamed != streamed:
        return False
    if where.final is not None and is_final(document) != where.final:
        return False
    for path, value in where.equals.items():
        found = MISSING
        for container, key in _parents(document, parse_path(path)):
            found = container[key] if _present(container, key) else MISSING
        if found is MISSING or found != value:
            return False
    return True


def mutate_lines(lines: list[bytes], operation: LineOperation) -> list[bytes]:
    """An NDJSON stream's lines (each with its newline) after a line operation."""
    if operation == "reverse":
        return list(reversed(lines))
    if operation == "drop-first":
        return lines[1:]
    if operation == "drop-last":
        return lines[:-1]
    if operation == "duplicate-last":
        return [*lines, lines[-1]] if lines else lines
    if operation == "merge":  # two objects on one line
        pairs = [lines[index : index + 2] for index in range(0, len(lines), 2)]
        return [pair[0].rstrip(b"\n") + (pair[1] if len(pair) > 1 else b"\n") for pair in pairs]
    if operation == "split":  # every object cut in two lines
        return [part for line in lines for part in (line[: len(line) // 2] + b"\n", line[len(line) // 2 :])]
    # one-object: the stream's objects folded into one, as if `stream` were ignored the other way
    documents = [json.loads(line) for line in lines if line.strip()]
    folded: dict[str, Any] = {}
    for document in documents:
        folded.update(document)
    return [json.dumps(folded).encode() + b"\n"]
