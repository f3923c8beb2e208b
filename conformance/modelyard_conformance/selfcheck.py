"""The suite checks itself: unique ids, declarative descriptions, references that resolve to headings of the
Ollama reference, known capability names, expectations that name real cases, and coverage: every endpoint
of the reference's inventory (§1) and every row of its error catalogue (§6) has a case or a pending entry
in coverage.yaml.

The reference (`ollama-api.md`) lives outside this package, so its headings, endpoints and error rows are
kept in `reference_index.json`, next to this file; `index_problems()` tells when that index is stale
(run `python -m modelyard_conformance.selfcheck --update-index`).

    python -m modelyard_conformance.selfcheck            # print problems, exit 1 if there are any
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import msgspec

from .schema import Case, Coverage, expectations_dir, load_cases, load_coverage, load_expectations, package_dir

REFERENCE_ENV = "MODELYARD_OLLAMA_REFERENCE"
INDEX_FILE = "reference_index.json"

# Capabilities of Ollama's /api/show, and the traits and test hooks the suite adds (docs/conformance.md).
MODEL_CAPABILITIES = frozenset({"completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"})
SUITE_CAPABILITIES = frozenset({"loopback", "fault-injection", "prunes-blobs"})
TRAIT_PATTERN = re.compile(r"format:[a-z0-9_-]+")

IMPERATIVE = re.compile(r"^(tests?|checks?|verif(y|ies)|ensures?|make sure|asserts?|should|it should)\b", re.I)
MAX_DESCRIPTION = 140


class Endpoint(msgspec.Struct, frozen=True):
    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (or a route) is this endpoint: `:digest` and `{digest:str}` match any segment."""
        mine, theirs = self.path.split("/"), path.split("/")
        return (
            method == self.method
            and len(mine) == len(theirs)
            and all(_is_parameter(a) or _is_parameter(b) or a == b for a, b in zip(mine, theirs, strict=False))
        )


def _is_parameter(segment: str) -> bool:
    return segment.startswith(":") or (segment.startswith("{") and segment.endswith("}"))


class ErrorRow(msgspec.Struct, frozen=True):
    situation: str
    endpoints: str
    status: str
    message: str

    @property
    def key(self) -> str:
        return f"{self.situation} | {self.endpoints}"


class ReferenceIndex(msgspec.Struct):
    """What the self-check needs of the reference document."""

    headings: list[str]
    endpoints: list[Endpoint]
    errors: list[ErrorRow]


# --- the reference --------------------------------------------------------------------------------


def find_reference() -> Path | None:
    """ollama-api.md: $MODELYARD_OLLAMA_REFERENCE, else `shared/reference/` beside or above the checkout."""
    if os.environ.get(REFERENCE_ENV):
        return Path(os.environ[REFERENCE_ENV])
    for folder in package_dir().resolve().parents:
        for candidate in (folder / "shared" / "reference" / "ollama-api.md",):
            if candidate.is_file():
                return candidate
    return None


def _section(lines: list[str], title_start: str) -> list[str]:
    """The lines of the `## ` section whose title starts with `title_start`."""
    inside, found = False, []
    for line in lines:
        if line.startswith("## "):
            if inside:
                break
            inside = line[3:].strip().startswith(title_start)
            continue
        if inside:
            found.append(line)
    return found


def _table_rows(lines: Iterable[str]) -> list[list[str]]:
    rows = []
    for line in lines:
        if not line.startswith("|") or set(line.replace("|", "").strip()) <= {"-", " "}:
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def index_from_markdown(text: str) -> ReferenceIndex:
    lines = text.splitlines()
    headings = [line.lstrip("#").strip() for line in lines if re.match(r"#{1,6} ", line)]
    endpoints = []
    for cells in _table_rows(_section(lines, "1. Endpoint inventory")):
        for method in cells[0].split(","):
            endpoints.append(Endpoint(method.strip(), cells[1].strip("`")))
    errors = [
        ErrorRow(situation=cells[0], endpoints=cells[1], status=cells[2], message=cells[3])
        for cells in _table_rows(_section(lines, "6. Error catalogue"))
    ]
    return ReferenceIndex(headings=headings, endpoints=endpoints, errors=errors)


def load_index() -> ReferenceIndex:
    return msgspec.json.decode((package_dir() / INDEX_FILE).read_bytes(), type=ReferenceIndex)


def write_index(reference: Path) -> Path:
    index = index_from_markdown(reference.read_text(encoding="utf-8"))
    path = package_dir() / INDEX_FILE
    path.write_text(json.dumps(msgspec.to_builtins(index), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def index_problems(reference: Path) -> list[str]:
    """Whether reference_index.json still says what the reference document says."""
    fresh = index_from_markdown(reference.read_text(encoding="utf-8"))
    if fresh != load_index():
        return [
            f"{INDEX_FILE} is stale against {reference}: run `python -m modelyard_conformance.selfcheck "
            "--update-index` and look at what changed"
        ]
    return []


def resolve_reference(reference: str, headings: list[str]) -> list[str]:
    """The headings a case's `reference` names: those that start with it, at a word boundary."""
    return [
        heading
        for heading in headings
        if heading.startswith(reference) and (len(heading) == len(reference) or not heading[len(reference)].isalnum())
    ]


def heading_number(reference: str) -> str:
    return reference.split(" ", 1)[0].rstrip(".")


# --- the checks -----------------------------------------------------------------------------------


def description_problems(case: Case) -> list[str]:
    text = case.description
    problems = []
    first = text.split(" ", 1)[0]
    if not (text[:1].isupper() or text[:1].isdigit() or text[:1] in "`\"'" or re.search(r"[_./]", first)):
        problems.append("starts with an upper-case letter (or a code name such as num_predict or /api/ps)")
    if not text.endswith("."):
        problems.append("ends with a full stop")
    if re.search(r"(?<!e\.g)(?<!i\.e)\. +[A-Z]", text):
        problems.append("is one sentence")
    if IMPERATIVE.search(text) or re.search(r"\bshould\b", text, re.I):
        problems.append("states what holds (no `Test...`, `Check...`, `should`)")
    if len(text) > MAX_DESCRIPTION:
        problems.append(f"fits in {MAX_DESCRIPTION} characters")
    return [f"{case.id}: the description {problem}: {text!r}" for problem in problems]


def case_problems(cases: tuple[Case, ...], index: ReferenceIndex) -> list[str]:
    problems = []
    for case_id, count in Counter(case.id for case in cases).items():
        if count > 1:
            problems.append(f"{case_id}: the id is used by {count} cases")
    rows = {row.key for row in index.errors}
    for case in cases:
        problems.extend(description_problems(case))
        matches = resolve_reference(case.reference, index.headings)
        if len(matches) != 1:
            problems.append(
                f"{case.id}: reference {case.reference!r} must name one heading of the reference, names {len(matches)}"
            )
        for name in [*case.requires, *case.lacks]:
            if name not in MODEL_CAPABILITIES | SUITE_CAPABILITIES and not TRAIT_PATTERN.fullmatch(name):
                problems.append(f"{case.id}: unknown capability {name!r} (a typo would skip the case for ever)")
        for row in case.covers:
            if row not in rows:
                problems.append(f"{case.id}: covers {row!r}, which is no row of the error catalogue")
        for step in case.requests():
            assert step.request is not None
            body = step.request.body
            if case.stream == "both" and step.request.is_streaming and isinstance(body, dict) and "stream" in body:
                problems.append(f"{case.id}: sets `stream` in a body but runs in both modes (use `stream: as-is`)")
    return problems


def coverage_problems(
    cases: tuple[Case, ...],
    index: ReferenceIndex,
    coverage: Coverage,
    implemented: Iterable[tuple[str, str]] | None = None,
) -> list[str]:
    problems = []
    pending_endpoints = {entry.endpoint: entry for entry in coverage.pending if entry.endpoint}
    pending_rows = {entry.row: entry for entry in coverage.pending if entry.row}
    used = {(method, path) for case in cases for method, path in case.endpoints()}
    known = {str(endpoint) for endpoint in index.endpoints}
    for name in pending_endpoints:
        if name not in known:
            problems.append(f"coverage.yaml: pending endpoint {name!r} is not in the reference's inventory")
    for endpoint in index.endpoints:
        covered = any(endpoint.matches(method, path) for method, path in used)
        pending = str(endpoint) in pending_endpoints
        if covered and pending:
            problems.append(f"{endpoint}: has cases and is still pending in coverage.yaml")
        elif not covered and not pending:
            problems.append(f"{endpoint}: no case and not pending in coverage.yaml")
    covered_rows = {row for case in cases for row in case.covers}
    keys = {row.key for row in index.errors}
    for name in pending_rows:
        if name not in keys:
            problems.append(f"coverage.yaml: pending row {name!r} is not in the error catalogue")
    for row in index.errors:
        if row.key in covered_rows and row.key in pending_rows:
            problems.append(f"error row {row.key!r}: has cases and is still pending in coverage.yaml")
        elif row.key not in covered_rows and row.key not in pending_rows:
            problems.append(f"error row {row.key!r}: no case covers it and it is not pending in coverage.yaml")
    for method, path in implemented or ():
        if not any(Endpoint(method, path).matches(*pair) for pair in used):
            problems.append(f"{method} {path}: the server implements it, but no case requests it")
        if any(Endpoint(*name.split(" ", 1)).matches(method, path) for name in pending_endpoints):
            problems.append(f"{method} {path}: the server implements it, but coverage.yaml says pending")
    return problems


def expectations_problems(cases: tuple[Case, ...]) -> list[str]:
    problems = []
    by_id = {case.id: case for case in cases}
    for path in sorted(expectations_dir().glob("*.yaml")):
        expectations = load_expectations(path)
        # NAME.yaml applies to `--backend NAME` by default; NAME-VARIANT.yaml (onnx-tiny) is asked for by name.
        if path.stem != expectations.backend and not path.stem.startswith(expectations.backend + "-"):
            problems.append(f"{path.name}: backend {expectations.backend!r} must match the file name")
        for gap in expectations.xfail:
            case = by_id.get(gap.case)
            if case is None:
                problems.append(f"{path.name}: {gap.case!r} is no case")
            elif gap.modes and case.modes == (None,):
                problems.append(f"{path.name}: {gap.case} runs once, so it has no modes")
            if isinstance(gap.issue, int) and gap.issue < 1:
                problems.append(f"{path.name}: {gap.case}: issue must be an issue number or a URL")
    return problems


def problems(implemented: Iterable[tuple[str, str]] | None = None) -> list[str]:
    """Everything wrong with the suite, or nothing."""
    cases = load_cases()
    index = load_index()
    found = case_problems(cases, index)
    found += coverage_problems(cases, index, load_coverage(), implemented)
    found += expectations_problems(cases)
    reference = find_reference()
    if reference is not None:
        found += index_problems(reference)
    return found


def unfiled() -> list[str]:
    """Pending entries that wait for an issue nobody has filed yet."""
    return [entry.endpoint or entry.row or "" for entry in load_coverage().pending if entry.issue is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard_conformance.selfcheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--update-index", action="store_true", help=f"rewrite {INDEX_FILE} from the reference")
    parser.add_argument(
        "--reference", type=Path, help=f"ollama-api.md (default: ${REFERENCE_ENV} or shared/reference/)"
    )
    args = parser.parse_args(argv)
    if args.update_index:
        reference = args.reference or find_reference()
        if reference is None:
            print(f"ollama-api.md not found: give --reference or set {REFERENCE_ENV}", file=sys.stderr)
            return 2
        print(f"wrote {write_index(reference)}")
    found = problems()
    for problem in found:
        print(problem)
    cases = load_cases()
    print(f"{len(cases)} cases; {len(found)} problems", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
