"""One session of the suite inside pytest: its options, the target, the collected cases and the report.

Imported by the pytest plugin only when the suite is asked for, so an inert plugin costs nothing.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from .report import Report
from .runner import CaseFailure, requirement_problem, run_case
from .schema import (
    Case,
    DataError,
    Expectations,
    KnownGap,
    expectations_dir,
    load_case_file,
    load_expectations,
    resolve_expectations,
)
from .target import NEEDS_MODELYARD, Target, TargetError

STATE = pytest.StashKey["ConformanceState"]()


class ConformanceState:
    """What one session of the suite shares: options, the target (started lazily) and the results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.backend: str | None = config.getoption("conformance_backend")
        self.base_url: str | None = config.getoption("conformance_base_url")
        self.model: str | None = config.getoption("conformance_model")
        self.capabilities = tuple(config.getoption("conformance_capabilities"))
        self.skip_extensions: bool = config.getoption("conformance_no_extensions")
        self.api: str = config.getoption("conformance_api", "all")
        self.report_path: str | None = config.getoption("conformance_report")
        self.server_env_items: list[str] = config.getoption("conformance_server_env")
        models_dir = config.getoption("conformance_models_dir")
        self.models_dir = Path(models_dir) if models_dir else None
        create_from = config.getoption("conformance_create_from")
        self.create_from = Path(create_from) if create_from else None
        self.expectations = self._expectations(config.getoption("conformance_expectations"))
        self.started = time.monotonic()
        self.report = Report()
        self.report.target = {
            "mode": "backend" if self.backend else "base-url",
            "backend": self.backend,
            "base_url": self.base_url,
            "model": self.model,
            "api": self.api,
            "expectations": self.expectations.backend if self.expectations else None,
        }
        self._target: Target | None = None
        self._target_error: BaseException | None = None

    def _expectations(self, given: str | None) -> Expectations | None:
        try:
            if given:
                return load_expectations(resolve_expectations(given))
            if self.backend and (expectations_dir() / f"{self.backend}.yaml").exists():
                return load_expectations(expectations_dir() / f"{self.backend}.yaml")
        except (DataError, OSError) as exc:
            raise pytest.UsageError(f"modelyard conformance: {exc}") from exc
        return None

    def validate(self) -> None:
        if bool(self.backend) == bool(self.base_url):
            raise pytest.UsageError("modelyard conformance: give either --backend NAME or --base-url URL")
        if not self.model:
            raise pytest.UsageError("modelyard conformance: --model MODEL is required")
        for item in self.server_env_items:
            if "=" not in item:
                raise pytest.UsageError(f"--server-env {item!r}: expected KEY=VALUE")
        if self.create_from is not None and not self.create_from.exists():
            raise pytest.UsageError(f"--create-from {self.create_from}: no such file or folder")
        if (self.backend or self.create_from) and importlib.util.find_spec("modelyard") is None:
            option = "--backend" if self.backend else "--create-from"
            raise pytest.UsageError(f"modelyard conformance: {option} {NEEDS_MODELYARD}")

    def target(self) -> Target:
        """The server under test, started or reached at the first case that needs it."""
        if self._target is None:
            if self._target_error is not None:
                raise TargetError(f"the server under test is not available: {self._target_error}")
            try:
                if self.backend:
                    self._target = Target.start_backend(
                        self.backend,
                        self.model or "",
                        env=dict(item.split("=", 1) for item in self.server_env_items),
                        models_dir=self.models_dir,
                        extra_capabilities=self.capabilities,
                        create_from=self.create_from,
                        api=self.api,
                    )
                else:
                    self._target = Target.connect(
                        self.base_url or "",
                        self.model or "",
                        extra_capabilities=self.capabilities,
                        create_from=self.create_from,
                        api=self.api,
                    )
            except Exception as exc:
                self._target_error = exc
                raise
            self.report.target.update(self._target.describe())
        return self._target

    def record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        if isinstance(item, CaseItem):
            self.report.record(item.case, item.mode, item.gap, report)

    def close(self) -> None:
        if self._target is not None:
            self._target.close()
            self._target = None


def gap_reason(gap: KnownGap) -> str:
    issue = f"#{gap.issue}" if isinstance(gap.issue, int) else gap.issue
    return f"known gap, {issue}: {gap.reason}"


class CaseFile(pytest.File):
    """A YAML file of cases: one test per case and streaming mode."""

    def collect(self) -> list[pytest.Item]:
        state = self.config.stash[STATE]
        try:
            cases = load_case_file(self.path).cases
        except DataError as exc:
            raise self.CollectError(str(exc)) from exc
        items: list[pytest.Item] = []
        for case in cases:
            if state.api == "openai" and not case.is_openai:
                continue  # --api openai: the server serves no Ollama API
            for mode in case.modes:
                name = case.id if mode is None else f"{case.id}[{mode}]"
                item = CaseItem.from_parent(self, name=name, case=case, mode=mode)
                gap = state.expectations.gap(case.id, mode) if state.expectations else None
                if gap is not None:
                    item.gap = gap
                    item.add_marker(pytest.mark.xfail(reason=gap_reason(gap), strict=True, raises=CaseFailure))
                items.append(item)
        return items


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, mode: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.mode = mode
        self.gap: KnownGap | None = None

    def runtest(self) -> None:
        state: ConformanceState = self.config.stash[STATE]
        if self.case.extension and state.skip_extensions:
            pytest.skip(f"modelyard extension ({self.case.extension}), skipped by --no-extensions")
        target = state.target()
        problem = requirement_problem(self.case, target)
        if problem:
            pytest.skip(problem)
        run_case(self.case, self.mode, target)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, (CaseFailure, TargetError)):
            return f"{self.case.id} ({self.case.reference}): {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
