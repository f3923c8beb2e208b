"""The case × backend matrix of docs/compatibility.md, generated from the JSON reports of suite runs.

    python -m modelyard_conformance.matrix echo.json llamacpp.json              # print it
    python -m modelyard_conformance.matrix echo.json llamacpp.json --write docs/compatibility.md

It replaces what lies between the `<!-- conformance-matrix:start -->` and `<!-- conformance-matrix:end -->`
markers; tests/conformance/test_conformance_matrix.py fails when the committed matrix differs from a fresh run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .schema import Case, load_cases
from .selfcheck import heading_number

START = "<!-- conformance-matrix:start -->"
END = "<!-- conformance-matrix:end -->"


def column_label(report: dict[str, Any]) -> str:
    target = report.get("target", {})
    where = target.get("backend") or target.get("base_url") or "?"
    return f"{where} ({target.get('model')})"


def cell(case: Case, results: list[dict[str, Any]], capabilities: set[str]) -> str:
    """One case on one backend, its streaming modes folded into one word where they agree."""
    if not results:
        return "not run"
    outcomes = {result["outcome"] for result in results}
    if outcomes == {"passed"}:
        return "pass"
    if outcomes == {"skipped"}:
        missing = [name for name in case.requires if name not in capabilities]
        present = [name for name in case.lacks if name in capabilities]
        if missing:
            return f"skip: needs {', '.join(missing)}"
        if present:
            return f"n/a: has {', '.join(present)}"
        return "skip"
    issues = sorted(
        {f"#{r['issue']}" if isinstance(r["issue"], int) else str(r["issue"]) for r in results if r["issue"]}
    )
    if outcomes == {"xfailed"}:
        return f"xfail {' '.join(issues)}"
    bad = [result for result in results if result["outcome"] in ("failed", "error", "xpassed")]
    if bad:
        word = "XPASS" if all(result["outcome"] == "xpassed" for result in bad) else "FAIL"
        modes = [result["mode"] for result in bad if result["mode"]]
        return f"**{word}**" + (f" ({', '.join(modes)})" if modes and len(bad) < len(results) else "")
    return "/".join(sorted(outcomes))


def coverage_line(cases: tuple[Case, ...]) -> str:
    """How much of the reference the cases cover (the rest is pending in coverage.yaml)."""
    from .schema import load_coverage
    from .selfcheck import load_index

    index = load_index()
    used = {endpoint for case in cases for endpoint in case.endpoints()}
    endpoints = sum(1 for endpoint in index.endpoints if any(endpoint.matches(*pair) for pair in used))
    rows = {row.key for row in index.errors}
    covered = len(rows & {row for case in cases for row in case.covers})
    unfiled = sum(1 for entry in load_coverage().pending if entry.issue is None)
    tests = sum(len(case.modes) for case in cases)
    return (
        f"{len(cases)} cases ({tests} tests with the streaming modes). They cover {endpoints} of the "
        f"{len(index.endpoints)} endpoints of the reference's inventory and {covered} of the {len(rows)} rows "
        f"of its error catalogue; the rest is pending in `coverage.yaml` ({unfiled} entries wait for an "
        "issue to be filed)."
    )


def render(reports: list[dict[str, Any]], cases: tuple[Case, ...] | None = None) -> str:
    cases = cases if cases is not None else load_cases()
    labels = [column_label(report) for report in reports]
    by_case: list[dict[str, list[dict[str, Any]]]] = []
    for report in reports:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for result in report.get("results", []):
            grouped.setdefault(result["case"], []).append(result)
        by_case.append(grouped)
    lines = [
        "Generated from the JSON reports of the conformance suite (docs/conformance.md) by",
        "`python -m modelyard_conformance.matrix`; `tests/conformance/test_conformance_matrix.py` fails when it is",
        "stale. A case runs once per streaming mode where that applies, and `pass` means in every mode.",
        "`skip: needs X`: the model lacks capability X. `n/a: has X`: the case is about models without X.",
        "`xfail #N`: a known gap, listed in the backend's expectations file with the issue that fixes it.",
        "",
    ]
    lines += [coverage_line(cases), ""]
    for label, report in zip(labels, reports, strict=False):
        counts = Counter(result["outcome"] for result in report.get("results", []))
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        lines.append(f"- {label}: {summary} (tests, counting each streaming mode)")
    lines += ["", "| Case | § | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for case in cases:
        cells = []
        for report, grouped in zip(reports, by_case, strict=False):
            capabilities = set(report.get("target", {}).get("capabilities", []))
            cells.append(cell(case, grouped.get(case.id, []), capabilities))
        lines.append(f"| `{case.id}` | {heading_number(case.reference)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_section(document: str, matrix: str) -> str:
    if START not in document or END not in document:
        raise ValueError(f"the document has no {START} ... {END} markers")
    head, rest = document.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{matrix}{END}{tail}"


def current_section(document: str) -> str:
    return document.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard_conformance.matrix", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("reports", nargs="+", type=Path, help="JSON reports (--conformance-report), one per column")
    parser.add_argument("--write", type=Path, metavar="MARKDOWN", help="replace the matrix between the markers")
    args = parser.parse_args(argv)
    matrix = render([json.loads(path.read_text(encoding="utf-8")) for path in args.reports])
    if args.write:
        args.write.write_text(replace_section(args.write.read_text(encoding="utf-8"), matrix), encoding="utf-8")
        print(f"wrote the matrix into {args.write}")
    else:
        sys.stdout.write(matrix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
