"""Runs of the conformance suite, shared by the tests of this folder.

Each run is a real `python -m modelyard_conformance ...` subprocess (what `modelyard conformance` and a CI
pipeline run), which starts its own `modelyard serve` on a free port. The echo and llama.cpp runs are made
once per session: the suite tests and the matrix freshness test read the same reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2:135m"
# Servers the suite starts enter only SmolLM2 into their stores (assembling Gemma 3 costs a second and 250 MB).
ONLY_SMOLLM2 = ["--server-env", f"MODELYARD_BUNDLED_MODELS={MODEL}"]


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


@pytest.fixture(scope="session")
def suite() -> Callable[..., SuiteRun]:
    """`suite(arguments, report, env=None, timeout=300)`: one run of the suite in a subprocess."""
    return run_suite


@pytest.fixture(scope="session")
def echo_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    report = tmp_path_factory.mktemp("echo") / "report.json"
    return run_suite(["--backend", "echo", "--model", MODEL, *ONLY_SMOLLM2], report)


@pytest.fixture(scope="session")
def llamacpp_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    report = tmp_path_factory.mktemp("llamacpp") / "report.json"
    return run_suite(["--backend", "llamacpp", "--model", MODEL, *ONLY_SMOLLM2], report, timeout=420)
