"""The JSON report of one run of the suite (`--conformance-report PATH`).

    {"suite": "modelyard-conformance", "format": 1,
     "target": {"mode": "backend", "backend": "echo", "model": "smollm2:135m", "capabilities": [...], ...},
     "seconds": 12.3,
     "summary": {"passed": 140, "skipped": 8, "xfailed": 2},
     "results": [{"case": "chat/answers-messages", "mode": "stream", "reference": "3.3 Response",
                  "outcome": "passed", "detail": "", "issue": null, "seconds": 0.05}, ...]}

Outcomes: passed, failed, skipped (detail: why), xfailed (a known gap; issue: the issue that fixes it),
xpassed (a known gap that no longer fails: the expectations file needs updating), error.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest

from .schema import Case, KnownGap

FORMAT = 1


class Result(msgspec.Struct, kw_only=True):
    case: str
    mode: str | None
    reference: str
    outcome: str
    detail: str = ""
    issue: int | str | None = None
    seconds: float = 0.0


class Report:
    def __init__(self) -> None:
        self.target: dict[str, Any] = {}
        self.seconds = 0.0
        self.results: dict[tuple[str, str | None], Result] = {}

    def record(self, case: Case, mode: str | None, gap: KnownGap | None, report: pytest.TestReport) -> None:
        key = (case.id, mode)
        outcome, detail = _outcome(report, gap)
        if outcome is None:
            return
        previous = self.results.get(key)
        if previous is not None and report.when == "teardown" and outcome != "error":
            return
        self.results[key] = Result(
            case=case.id,
            mode=mode,
            reference=case.reference,
            outcome=outcome,
            detail=detail,
            issue=gap.issue if gap is not None else None,
            seconds=round(report.duration + (previous.seconds if previous else 0.0), 3),
        )

    def summary(self) -> dict[str, int]:
        return dict(sorted(Counter(result.outcome for result in self.results.values()).items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": "modelyard-conformance",
            "format": FORMAT,
            "target": self.target,
            "seconds": self.seconds,
            "summary": self.summary(),
            "results": [msgspec.to_builtins(result) for result in self.results.values()],
        }


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def _outcome(report: pytest.TestReport, gap: KnownGap | None) -> tuple[str | None, str]:
    if report.when == "setup":
        if report.failed:
            return "error", _first_line(str(report.longrepr))
        if report.skipped:
            return "skipped", _skip_reason(report)
        return None, ""
    if report.when == "teardown":
        return ("error", _first_line(str(report.longrepr))) if report.failed else (None, "")
    if report.passed:
        return "passed", ""
    if report.skipped:
        if hasattr(report, "wasxfail"):
            return "xfailed", report.wasxfail
        return "skipped", _skip_reason(report)
    text = str(report.longrepr)
    if gap is not None and "XPASS(strict)" in text:
        return "xpassed", _first_line(text)
    return "failed", _first_line(text)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return _first_line(str(longrepr))
