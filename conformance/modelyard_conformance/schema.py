"""The schema of the suite's data files: cases, expectations files and the coverage file.

Every file is YAML, converted into these Structs with `forbid_unknown_fields`, so a misspelled key is an
error with its path (``Object contains unknown field `expcet` - at `$[3]` ``) rather than a check that
silently never runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from .checks import Check, parse_check, parse_checks

PACKAGE = "modelyard_conformance"
CASE_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*/[a-z0-9]+(-[a-z0-9]+)*")
# Endpoints whose answer is an NDJSON stream unless the body says `"stream": false`.
STREAMING_PATHS = ("/api/generate", "/api/chat", "/api/pull", "/api/push", "/api/create")


class Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename={"no_stream": "no-stream"}):
    """Base of every data-file Struct: unknown keys are errors."""


class Request(Strict, kw_only=True):
    """One HTTP request. `body` is sent as JSON; `raw` is sent as is (for empty and malformed bodies)."""

    method: Literal["GET", "HEAD", "POST", "DELETE", "OPTIONS"] | None = None  # default: POST with a body
    path: str
    body: Any = msgspec.UNSET
    raw: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Read this many lines of the streamed answer, then close the connection (a client that goes away).
    disconnect_after_lines: int | None = None
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.body is not msgspec.UNSET and self.raw is not None:
            raise ValueError("a request has `body` or `raw`, not both")
        if not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must start with /")

    @property
    def verb(self) -> str:
        if self.method:
            return self.method
        return "POST" if (self.body is not msgspec.UNSET or self.raw is not None) else "GET"

    @property
    def is_streaming(self) -> bool:
        """Whether the endpoint streams by default (generate, chat, pull, push, create)."""
        return self.path in STREAMING_PATHS


ContentKind = Literal["json", "ndjson", "sse", "text", "empty"]


class Expect(Strict, kw_only=True):
    """What must hold for one response. Unset fields fall back to the defaults the runner derives.

    `body`: checks on the response object (for a stream, its final line); `chunks`: checks on every line
    of a stream before the final one; `text`: a check on the generated text (`response` or
    `message.content`, joined over all lines); `error`: the exact `error` message, or a check on it.
    """

    status: int | list[int] | None = None  # a list: any of these
    content_type: list[ContentKind] | None = None
    headers: dict[str, Any] | None = None
    raw: Any = msgspec.UNSET
    body: dict[str, Any] | None = None
    chunks: dict[str, Any] | None = None
    line_count: Any = msgspec.UNSET
    text: Any = msgspec.UNSET
    error: Any = msgspec.UNSET
    max_seconds: float | None = None
    # The final object's durations are integer nanoseconds that fit the request's wall time and token counts.
    plausible_durations: bool | None = None
    # Overrides that apply in one streaming mode only.
    stream: Expect | None = None
    no_stream: Expect | None = None

    def for_mode(self, mode: str | None) -> Expect:
        """This expectation with the overrides of `mode` ("stream", "no-stream" or None) applied."""
        override = self.stream if mode == "stream" else self.no_stream if mode == "no-stream" else None
        base = msgspec.structs.replace(self, stream=None, no_stream=None)
        if override is None:
            return base
        changes = {
            field: getattr(override, field)
            for field in override.__struct_fields__
            if field not in ("stream", "no_stream") and getattr(override, field) not in (None, msgspec.UNSET)
        }
        return msgspec.structs.replace(base, **changes)

    def compiled(self) -> CompiledExpect:
        return CompiledExpect(
            status=self.status,
            content_type=self.content_type,
            headers=parse_checks(self.headers or {}, lowercase_keys=True),
            raw=None if self.raw is msgspec.UNSET else parse_check(self.raw),
            body=parse_checks(self.body or {}),
            chunks=parse_checks(self.chunks or {}),
            line_count=None if self.line_count is msgspec.UNSET else parse_check(self.line_count),
            text=None if self.text is msgspec.UNSET else parse_check(self.text),
            error=None if self.error is msgspec.UNSET else parse_check(self.error),
            max_seconds=self.max_seconds,
            plausible_durations=bool(self.plausible_durations),
        )


class CompiledExpect(msgspec.Struct, kw_only=True):
    status: int | list[int] | None
    content_type: list[ContentKind] | None
    headers: dict[str, Check]
    raw: Check | None
    body: dict[str, Check]
    chunks: dict[str, Check]
    line_count: Check | None
    text: Check | None
    error: Check | None
    max_seconds: float | None
    plausible_durations: bool


class Step(Strict, kw_only=True):
    """One request and what must hold for its answer, or `parallel` steps sent at the same time."""

    request: Request | None = None
    expect: Expect = msgspec.field(default_factory=Expect)
    # Values to remember for later steps: name -> a body path, or "$text" for the generated text.
    capture: dict[str, str] = msgspec.field(default_factory=dict)
    parallel: list[Step] | None = None

    def __post_init__(self) -> None:
        if (self.request is None) == (self.parallel is None):
            raise ValueError("a step has a `request` or `parallel` steps")
        if self.parallel is not None and any(step.parallel is not None for step in self.parallel):
            raise ValueError("parallel steps are single requests")

    def single(self) -> list[Step]:
        """The steps with one request each that this step sends."""
        return self.parallel if self.parallel is not None else [self]


class Case(Strict, kw_only=True):
    """One conformance case: a request (or a sequence of them) and what must hold."""

    id: str
    description: str
    reference: str  # the start of a heading of ollama-api.md, e.g. "2.3 Response"
    requires: list[str] = msgspec.field(default_factory=list)  # capabilities the model under test must have
    lacks: list[str] = msgspec.field(default_factory=list)  # capabilities it must not have
    covers: list[str] = msgspec.field(default_factory=list)  # rows of the error catalogue ("situation | endpoints")
    extension: str | None = None  # a modelyard extension of the Ollama API (docs/compatibility.md)
    # "both": every request to an endpoint that streams (generate, chat, pull, push, create) runs once
    # with stream true and once with false.
    # "as-is": the bodies are sent as written (for cases about the default of `stream`).
    stream: Literal["both", "as-is"] = "both"
    request: Request | None = None
    expect: Expect | None = None
    capture: dict[str, str] = msgspec.field(default_factory=dict)
    steps: list[Step] | None = None

    def __post_init__(self) -> None:
        if not CASE_ID.fullmatch(self.id):
            raise ValueError(f"case id {self.id!r} must look like `endpoint/what-holds` (lowercase, dashes)")
        if (self.steps is None) == (self.request is None):
            raise ValueError(f"case {self.id}: give either `request` (with `expect`) or `steps`")
        if self.steps is not None and (self.expect is not None or self.capture):
            raise ValueError(f"case {self.id}: `expect` and `capture` belong inside each step")
        for step in self.requests():
            step.expect.compiled()  # operator errors surface when the file is loaded

    def all_steps(self) -> list[Step]:
        if self.steps is not None:
            return self.steps
        assert self.request is not None
        return [Step(request=self.request, expect=self.expect or Expect(), capture=self.capture)]

    def requests(self) -> list[Step]:
        """Every step with a single request, parallel ones included."""
        return [single for step in self.all_steps() for single in step.single()]

    @property
    def modes(self) -> tuple[str | None, ...]:
        """The streaming modes this case runs in: ("stream", "no-stream"), or (None,) for one run."""
        if self.stream == "both" and any(step.request.is_streaming for step in self.requests() if step.request):
            return ("stream", "no-stream")
        return (None,)

    def endpoints(self) -> list[tuple[str, str]]:
        return [(step.request.verb, step.request.path) for step in self.requests() if step.request]


class CaseFile(msgspec.Struct, kw_only=True):
    path: Path
    cases: list[Case]


# --- expectations ---------------------------------------------------------------------------------


class KnownGap(Strict, kw_only=True):
    """A case a backend fails today, run as a strict xfail until `issue` fixes it."""

    case: str
    issue: int | str  # an issue number of this project, or the URL of another tracker
    reason: str
    modes: list[Literal["stream", "no-stream"]] | None = None  # default: every mode


class Expectations(Strict, kw_only=True):
    backend: str
    xfail: list[KnownGap] = msgspec.field(default_factory=list)

    def gap(self, case_id: str, mode: str | None) -> KnownGap | None:
        for gap in self.xfail:
            if gap.case == case_id and (gap.modes is None or mode in gap.modes):
                return gap
        return None


# --- coverage of the reference --------------------------------------------------------------------


class Pending(Strict, kw_only=True):
    """An endpoint or error row of the reference that modelyard does not implement yet."""

    issue: int | None  # None: no issue is filed yet (the self-check lists these)
    why: str
    endpoint: str | None = None  # "POST /api/pull", as in the reference's endpoint inventory
    row: str | None = None  # "Situation | Endpoint(s)", as in the reference's error catalogue

    def __post_init__(self) -> None:
        if (self.endpoint is None) == (self.row is None):
            raise ValueError("a pending entry names an `endpoint` or a `row`")


class Coverage(Strict, kw_only=True):
    pending: list[Pending] = msgspec.field(default_factory=list)


# --- loading ----------------------------------------------------------------------------------------


def package_dir() -> Path:
    return Path(str(resources.files(PACKAGE)))


def cases_dir() -> Path:
    return package_dir() / "cases"


def expectations_dir() -> Path:
    return package_dir() / "expectations"


class DataError(ValueError):
    """A data file that does not match its schema."""


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from exc


def load_case_file(path: Path) -> CaseFile:
    data = _load_yaml(path)
    try:
        cases = msgspec.convert(data, list[Case])
    except (msgspec.ValidationError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from exc
    return CaseFile(path=path, cases=cases)


def case_files(directory: Path | None = None) -> Iterator[Path]:
    yield from sorted((directory or cases_dir()).glob("*.yaml"))


@cache
def load_cases(directory: Path | None = None) -> tuple[Case, ...]:
    """Every case of the suite, in file order."""
    return tuple(case for path in case_files(directory) for case in load_case_file(path).cases)


def load_expectations(path: Path) -> Expectations:
    try:
        return msgspec.convert(_load_yaml(path), Expectations)
    except (msgspec.ValidationError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from exc


def resolve_expectations(name_or_path: str) -> Path:
    """A path as given, or the name of an expectations file shipped with the suite (`echo`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return expectations_dir() / f"{name_or_path}.yaml"


def load_coverage(path: Path | None = None) -> Coverage:
    path = path or package_dir() / "coverage.yaml"
    try:
        return msgspec.convert(_load_yaml(path), Coverage)
    except (msgspec.ValidationError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from exc
