"""One run of the conformance suite as a CI pipeline runs it: `python -m modelyard_conformance ...` in a
subprocess, which starts its own `modelyard serve` on a free port and writes a JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from modelyard_conformance.schema import Case, load_cases

REPO = Path(__file__).resolve().parents[2]


class SuiteRun(msgspec.Struct):
    returncode: int
    output: str
    report: dict[str, Any]

    def results(self, outcome: str) -> list[str]:
        return sorted(
            f"{r['case']}[{r['mode']}]" if r["mode"] else r["case"]
            for r in self.report.get("results", [])
            if r["outcome"] == outcome
        )

    def reported(self) -> set[str]:
        """Every test the report names, whatever its outcome."""
        return {f"{r['case']}[{r['mode']}]" if r["mode"] else r["case"] for r in self.report["results"]}

    def explain(self) -> str:
        """What went wrong, for an assertion message: the failing cases, then pytest's output."""
        failed = self.results("failed") + self.results("error") + self.results("xpassed")
        return "failing: " + ", ".join(failed) + "\n\n" + self.output[-12000:]


def run_suite(
    arguments: list[str],
    report: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> SuiteRun:
    environment = {**os.environ, **(env or {})}
    completed = subprocess.run(
        [sys.executable, "-m", "modelyard_conformance", *arguments, "-q", "--conformance-report", str(report)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return SuiteRun(completed.returncode, completed.stdout + completed.stderr, data)


def every_test(cases: tuple[Case, ...] | None = None) -> set[str]:
    """Every test a full run has: one per case and streaming mode."""
    return {case.id if mode is None else f"{case.id}[{mode}]" for case in cases or load_cases() for mode in case.modes}
