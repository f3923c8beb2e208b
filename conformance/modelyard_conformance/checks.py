"""The small language of expectations: paths into a JSON value, and checks on what they find.

A path is dotted (`message.role`), with `*` for every element of a list (`models.*.digest`), a number for
one element (`models.0.name`, the first), `[key=value]`
for the first element whose `key` equals `value` (`models[name=smollm2:135m].size`) and `["a.b"]` for a
key that contains dots (`model_info["general.architecture"]`).

A check is a literal (the value must equal it) or a mapping of operators, all of which must hold:

    equals, not_equals, one_of, type, pattern, min, max, min_length, max_length, contains,
    not_contains, absent, present, format, seconds_from_now, json, schema, sorted, sorted_by
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import msgspec

MISSING = msgspec.UNSET  # what a path finds where nothing is

JsonType = Literal["string", "integer", "number", "boolean", "array", "object", "null"]
Format = Literal["rfc3339", "rfc3339-utc", "sha256-hex", "semver"]

FORMATS = {
    "rfc3339": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)"),
    "rfc3339-utc": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"),
    "sha256-hex": re.compile(r"[0-9a-f]{64}"),
    "semver": re.compile(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?"),
}


class Range(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    min: float | None = None
    max: float | None = None


class Check(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    equals: Any = msgspec.UNSET
    not_equals: Any = msgspec.UNSET
    one_of: list[Any] | None = None
    type: JsonType | list[JsonType] | None = None
    pattern: str | None = None  # a regular expression that must match somewhere (anchor it with ^ $)
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    contains: Any = msgspec.UNSET  # a substring of a string, or an element of an array
    not_contains: Any = msgspec.UNSET
    absent: bool | None = None
    present: bool | None = None
    format: Format | None = None
    seconds_from_now: Range | None = None  # a timestamp this many seconds in the future (negative: past)
    json: dict[str, Any] | bool | None = None  # a string holding JSON that validates against this schema
    schema: dict[str, Any] | None = None  # the value itself validates against this JSON Schema
    sorted: Literal["ascending", "descending"] | None = None  # an array in this order (timestamps understood)
    sorted_by: str | None = None  # with `sorted`: the key of each element (an object) to order by

    def __post_init__(self) -> None:
        if self.pattern is not None:
            re.compile(self.pattern)
        for schema in (self.schema, self.json if isinstance(self.json, dict) else None):
            if schema is not None:
                jsonschema.validators.validator_for(schema).check_schema(schema)


OPERATORS = frozenset(Check.__struct_fields__)


def parse_check(value: Any) -> Check:
    """A check from its YAML form: an operator mapping, or a literal to compare with."""
    if isinstance(value, dict):
        unknown = set(value) - OPERATORS
        if unknown:
            raise ValueError(
                f"unknown check operator(s) {', '.join(sorted(unknown))}; to compare with a mapping use "
                f"`equals:`; operators: {', '.join(sorted(OPERATORS))}"
            )
        return msgspec.convert(value, Check)
    return Check(equals=value)


def parse_checks(mapping: dict[str, Any], lowercase_keys: bool = False) -> dict[str, Check]:
    checks = {}
    for path, value in mapping.items():
        parse_path(path)
        checks[path.lower() if lowercase_keys else path] = parse_check(value)
    return checks


# --- paths ------------------------------------------------------------------------------------------

_SEGMENT = re.compile(
    r'\.?(?:\["(?P<key>[^"]*)"\]|\[(?P<field>[^=\]]+)=(?P<value>[^\]]*)\]|(?P<star>\*)|(?P<name>[^.\[\]]+))'
)


class Segment(msgspec.Struct, frozen=True):
    kind: Literal["key", "star", "filter"]
    key: str = ""
    value: str = ""


def parse_path(path: str) -> list[Segment]:
    if path == "$":
        return []
    segments, position = [], 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if not match or (position == 0 and path.startswith(".")):
            raise ValueError(f"bad path {path!r} at character {position}")
        if match["key"] is not None:
            segments.append(Segment("key", match["key"]))
        elif match["field"] is not None:
            segments.append(Segment("filter", match["field"], match["value"]))
        elif match["star"]:
            segments.append(Segment("star"))
        else:
            segments.append(Segment("key", match["name"]))
        position = match.end()
    return segments


def resolve(document: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for every place `path` names; the value is MISSING where nothing is."""

    def walk(value: Any, segments: list[Segment], where: str) -> Iterator[tuple[str, Any]]:
        if not segments:
            yield where or "$", value
            return
        head, rest = segments[0], segments[1:]
        if head.kind == "key":
            if isinstance(value, list) and head.key.isdigit():
                found = value[int(head.key)] if int(head.key) < len(value) else MISSING
            else:
                found = value.get(head.key, MISSING) if isinstance(value, dict) else MISSING
            if found is MISSING:
                yield f"{where}.{head.key}".lstrip("."), MISSING
            else:
                yield from walk(found, rest, f"{where}.{head.key}".lstrip("."))
        elif head.kind == "star":
            items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
            for index, item in items:
                yield from walk(item, rest, f"{where}[{index}]")
        else:
            candidates = value if isinstance(value, list) else []
            for index, item in enumerate(candidates):
                if isinstance(item, dict) and str(item.get(head.key)) == head.value:
                    yield from walk(item, rest, f"{where}[{index}]")
                    return
            yield f"{where}[{head.key}={head.value}]", MISSING

    yield from walk(document, parse_path(path), "")


# --- evaluation -------------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_timestamp(text: str) -> dt.datetime:
    """An RFC 3339 timestamp with up to nine fractional digits (Go's), as an aware datetime."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    head, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return dt.datetime.fromisoformat(f"{head}.{micro}{zone}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if value is not MISSING else "<missing>"
    return text if len(text) <= 200 else text[:197] + "..."


def failures(check: Check, value: Any) -> list[str]:
    """Why `value` does not pass `check` (empty when it does)."""
    if check.absent:
        return [] if value is MISSING else [f"must be absent, is {_short(value)}"]
    if value is MISSING:
        return ["is missing"]
    problems: list[str] = []

    def fail(message: str) -> None:
        problems.append(f"{message} (is {_short(value)})")

    kind = json_type(value)
    if check.equals is not msgspec.UNSET and not _same(value, check.equals):
        fail(f"must equal {_short(check.equals)}")
    if check.not_equals is not msgspec.UNSET and _same(value, check.not_equals):
        fail(f"must not equal {_short(check.not_equals)}")
    if check.one_of is not None and not any(_same(value, option) for option in check.one_of):
        fail(f"must be one of {_short(check.one_of)}")
    if check.type is not None:
        wanted = [check.type] if isinstance(check.type, str) else check.type
        if kind not in wanted and not (kind == "integer" and "number" in wanted):
            fail(f"must be of type {' or '.join(wanted)}")
    if check.pattern is not None and (kind != "string" or not re.search(check.pattern, value)):
        fail(f"must match /{check.pattern}/")
    if check.min is not None or check.max is not None:
        if kind not in ("integer", "number"):
            fail("must be a number")
        elif (check.min is not None and value < check.min) or (check.max is not None and value > check.max):
            fail(f"must be within [{check.min}, {check.max}]")
    if check.min_length is not None or check.max_length is not None:
        if kind not in ("string", "array", "object"):
            fail("must have a length")
        elif (check.min_length is not None and len(value) < check.min_length) or (
            check.max_length is not None and len(value) > check.max_length
        ):
            fail(f"length must be within [{check.min_length}, {check.max_length}]")
    if check.contains is not msgspec.UNSET and not _contains(value, check.contains):
        fail(f"must contain {_short(check.contains)}")
    if check.not_contains is not msgspec.UNSET and _contains(value, check.not_contains):
        fail(f"must not contain {_short(check.not_contains)}")
    if check.format is not None and (kind != "string" or not FORMATS[check.format].fullmatch(value)):
        fail(f"must be formatted as {check.format}")
    if check.seconds_from_now is not None:
        try:
            delta = (parse_timestamp(value) - dt.datetime.now(dt.UTC)).total_seconds()
        except (TypeError, ValueError):
            fail("must be an RFC 3339 timestamp")
        else:
            window = check.seconds_from_now
            if (window.min is not None and delta < window.min) or (window.max is not None and delta > window.max):
                fail(f"must be [{window.min}, {window.max}] s from now, is {delta:.0f} s")
    if check.json is not None:
        try:
            parsed = json.loads(value) if kind == "string" else MISSING
        except ValueError as exc:
            fail(f"must be JSON: {exc}")
        else:
            if parsed is MISSING:
                fail("must be a string holding JSON")
            elif isinstance(check.json, dict):
                problems.extend(_schema_errors(parsed, check.json, "its JSON"))
    if check.schema is not None:
        problems.extend(_schema_errors(value, check.schema, "it"))
    if check.sorted is not None:
        if kind != "array":
            fail("must be an array")
        else:
            keys = [
                _sort_key(item.get(check.sorted_by) if check.sorted_by and isinstance(item, dict) else item)
                for item in value
            ]
            ordered = sorted(keys, reverse=check.sorted == "descending")
            if keys != ordered:
                fail(f"must be sorted {check.sorted}")
    return problems


def _schema_errors(value: Any, schema: dict[str, Any], what: str) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{what} does not validate against the schema at {'/'.join(map(str, error.absolute_path)) or '$'}: "
        f"{error.message}"
        for error in validator.iter_errors(value)
    ]


def _sort_key(item: Any) -> Any:
    if isinstance(item, str):
        try:
            return parse_timestamp(item)
        except ValueError:
            return item
    return item


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: 1 and 1.0 are equal, True and 1 are not."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    return value == expected


def _contains(value: Any, part: Any) -> bool:
    if isinstance(value, str):
        return isinstance(part, str) and part in value
    if isinstance(value, list):
        return any(_same(item, part) for item in value)
    if isinstance(value, dict):
        return part in value
    return False


def check_paths(document: Any, checks: dict[str, Check], where: str) -> list[str]:
    """Every failure of the path checks on `document`, each prefixed with where it happened."""
    problems: list[str] = []
    for path, check in checks.items():
        for concrete, value in resolve(document, path):
            problems.extend(f"{where} {concrete}: {problem}" for problem in failures(check, value))
    return problems
