"""The suite's mutation score: how many deviations from the Ollama API it notices.

    modelyard-conformance --mutation-score --backend llamacpp
    modelyard-conformance --mutation-score --base-url http://127.0.0.1:11434 --model llama3.2
    modelyard-conformance --mutation-score --backend echo --mutant generate-ignores-system

The suite first runs once through the mutating proxy (proxy.py) with no mutant: the cases that pass then are
the ones that can notice a mutant. Then, for each mutant of the catalogue (mutants.yaml), the proxy applies
it and the passing cases of the endpoints it touches run until one fails: the mutant is killed, or it
survives every one of them. The score is killed / (killed + survived); a mutant that changed nothing in its
run (its endpoints' cases never produced what it changes) is reported as not applied, a catalogue problem.
Each request is capped (`--case-timeout`) so that a mutant that makes generation run on cannot stall it,
and after a killed mutant the `conformance-*` models the interrupted case left behind are deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec

from .mutants import Mutant, default_catalogue, load_catalogue
from .proxy import MutatingProxy
from .schema import Case, DataError, Expectations, expectations_dir, load_cases, load_expectations, resolve_expectations
from .target import Target, TargetError, run_variables

START = "<!-- mutation-score:start -->"
END = "<!-- mutation-score:end -->"
DEFAULT_CASE_TIMEOUT = 60.0
SCRATCH_PREFIX = "conformance-"

Outcome = Literal["killed", "survived", "not-applied"]


class Test(msgspec.Struct, frozen=True):
    """One case in one streaming mode."""

    case: Case
    mode: str | None

    @property
    def name(self) -> str:
        return self.case.id if self.mode is None else f"{self.case.id}[{self.mode}]"


class MutantResult(msgspec.Struct, kw_only=True):
    id: str
    description: str
    outcome: Outcome
    killed_by: str | None = None  # the test that noticed it
    detail: str = ""  # the first lines of that test's failure
    survives: str | None = None  # the catalogue's reason for accepting it
    tests_run: int = 0
    changes: int = 0  # how often the proxy changed a request or an answer
    seconds: float = 0.0


class ScoreReport(msgspec.Struct, kw_only=True):
    target: dict[str, Any]
    catalogue: str
    baseline_passed: int
    baseline_failed: list[str]
    results: list[MutantResult]
    seconds: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for result in self.results if result.outcome == outcome)

    @property
    def score(self) -> float:
        scored = self.count("killed") + self.count("survived")
        return self.count("killed") / scored if scored else 0.0

    def survivors(self) -> list[MutantResult]:
        return [result for result in self.results if result.outcome == "survived"]

    def summary(self) -> str:
        killed, survived = self.count("killed"), self.count("survived")
        line = f"mutation score: {killed} of {killed + survived} mutants killed ({100 * self.score:.1f}%)"
        if self.count("not-applied"):
            line += f", {self.count('not-applied')} not applied"
        return line


# --- choosing and ordering tests ------------------------------------------------------------------------


def relevant(mutant: Mutant, tests: Iterable[Test], seconds: dict[str, float]) -> list[Test]:
    """The tests that send a request the mutant touches, those most likely to notice it first: the ones
    that name the fields it changes, then the quickest."""
    words = mutant.words()
    chosen = [test for test in tests if any(mutant.touches(verb, path) for verb, path in test.case.endpoints())]

    def priority(test: Test) -> tuple[int, float]:
        text = json.dumps(msgspec.to_builtins(test.case))
        return (-sum(1 for word in words if word in text), seconds.get(test.name, 0.0))

    return sorted(chosen, key=priority)


def every_test(cases: tuple[Case, ...]) -> list[Test]:
    return [Test(case=case, mode=mode) for case in cases for mode in case.modes]


def runnable(test: Test, target: Target, expectations: Expectations | None, skip_extensions: bool) -> bool:
    from .runner import requirement_problem

    if test.case.extension and skip_extensions:
        return False
    if expectations is not None and expectations.gap(test.case.id, test.mode) is not None:
        return False
    return requirement_problem(test.case, target) is None


# --- running --------------------------------------------------------------------------------------------


def first_failure(tests: list[Test], target: Target) -> tuple[Test | None, str, int]:
    """Run tests until one fails: (that test, why, how many ran), or (None, "", all of them)."""
    from .runner import run_case

    for number, test in enumerate(tests, start=1):
        target.variables.update(run_variables())  # a fresh blob per test: blob cases expect a new one
        try:
            run_case(test.case, test.mode, target)
        except Exception as exc:  # noqa: BLE001 - any failure of a case is the suite noticing the mutant
            return test, str(exc), number
    return None, "", len(tests)


def remove_scratch_models(http: httpx.Client) -> None:
    """Delete the `conformance-*` models a case stopped half-way left behind (straight, not through the proxy)."""
    try:
        listed = http.get("/api/tags").json().get("models") or []
    except (httpx.HTTPError, ValueError):
        return
    for model in listed:
        name = str(model.get("name", ""))
        if name.split("/")[-1].startswith(SCRATCH_PREFIX):
            try:
                http.request("DELETE", "/api/delete", json={"model": name})
            except httpx.HTTPError:
                pass


def load_the_model(direct: Target) -> None:
    """Load the model under test (straight, without a time cap), so that the capped requests of the next
    cases do not pay for loading it (again, after an interrupted case unloaded it)."""
    try:
        direct.http.post("/api/generate", json={"model": direct.model, "stream": False}, timeout=600)
    except httpx.HTTPError:
        pass  # the cases will say what is wrong


def score(
    direct: Target,
    mutants: list[Mutant],
    *,
    catalogue: Path,
    expectations: Expectations | None = None,
    skip_extensions: bool = False,
    case_timeout: float = DEFAULT_CASE_TIMEOUT,
    cases: tuple[Case, ...] | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> ScoreReport:
    """Score the suite's cases against `mutants`, applied one at a time in front of `direct`."""
    started = time.monotonic()
    load_the_model(direct)
    proxy = MutatingProxy(direct.base_url, timeout=case_timeout).start()
    proxied = Target(proxy.url, direct.model, backend=direct.backend)
    proxied.model_capabilities = direct.model_capabilities
    proxied.extra_capabilities = direct.extra_capabilities
    proxied.traits = direct.traits
    proxied.request_timeout = case_timeout
    try:
        tests = [
            test
            for test in every_test(cases if cases is not None else load_cases())
            if runnable(test, proxied, expectations, skip_extensions)
        ]
        needed = [test for test in tests if any(m.touches(v, p) for m in mutants for v, p in test.case.endpoints())]
        passing: list[Test] = []
        failed: list[Test] = []
        seconds: dict[str, float] = {}
        for test in needed:
            begun = time.monotonic()
            culprit, why, _ = first_failure([test], proxied)
            if culprit:  # once more: a busy machine can push one answer past the cap
                remove_scratch_models(direct.http)
                load_the_model(direct)
                culprit, why, _ = first_failure([test], proxied)
            seconds[test.name] = time.monotonic() - begun
            (failed if culprit else passing).append(test)
            if culprit:
                progress(f"baseline: {test.name} fails without a mutant: {why.splitlines()[0]}")
                remove_scratch_models(direct.http)
                load_the_model(direct)
        progress(f"baseline: {len(passing)} tests pass through the proxy, {len(failed)} fail")
        results = []
        for mutant in mutants:
            begun = time.monotonic()
            chosen = relevant(mutant, passing, seconds)
            proxy.use(mutant)
            culprit, why, ran = first_failure(chosen, proxied)
            changes = proxy.changes
            proxy.use(None)
            if culprit is not None:
                remove_scratch_models(direct.http)
                load_the_model(direct)
            outcome: Outcome = "not-applied" if changes == 0 else "killed" if culprit else "survived"
            result = MutantResult(
                id=mutant.id,
                description=mutant.description,
                outcome=outcome,
                killed_by=culprit.name if culprit else None,
                detail="\n".join(why.splitlines()[:3]),
                survives=mutant.survives,
                tests_run=ran,
                changes=changes,
                seconds=round(time.monotonic() - begun, 2),
            )
            results.append(result)
            by = f" by {result.killed_by}" if result.killed_by else ""
            progress(f"{outcome:<11} {mutant.id}{by} ({ran} tests, {result.seconds:.1f} s)")
        return ScoreReport(
            target={**direct.describe(), "case_timeout": case_timeout},
            catalogue=catalogue.name,
            baseline_passed=len(passing),
            baseline_failed=[test.name for test in failed],
            results=results,
            seconds=round(time.monotonic() - started, 1),
        )
    finally:
        proxied.close()
        proxy.close()


# --- the generated section of docs/compatibility.md -----------------------------------------------------


def render(report: ScoreReport) -> str:
    """The section of compatibility.md: the score and every survivor with the reason it is accepted."""
    target = report.target
    where = target.get("backend") or target.get("base_url")
    lines = [
        "Generated by `modelyard-conformance --mutation-score --backend llamacpp --write-doc docs/compatibility.md`",
        "(docs/conformance.md); `tests/conformance/test_mutation_score.py` (`-m mutation`) fails when it is stale",
        "or below 95%.",
        "",
        f"On {where} ({target.get('model')}): **{report.summary().removeprefix('mutation score: ')}**, the "
        f"mutants of `{report.catalogue}` each applied alone by the mutating proxy to the "
        f"{report.baseline_passed} tests that pass without one.",
        "",
    ]
    survivors = report.survivors()
    if survivors:
        lines += ["| Surviving mutant | What it changes | Why the suite accepts it |", "|---|---|---|"]
        lines += [f"| `{r.id}` | {r.description} | {r.survives or '**no reason given**'} |" for r in survivors]
    else:
        lines.append("No mutant survives.")
    not_applied = [result.id for result in report.results if result.outcome == "not-applied"]
    if not_applied:
        lines += ["", "Not applied (they changed nothing): " + ", ".join(f"`{name}`" for name in not_applied)]
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    if START not in document or END not in document:
        raise ValueError(f"the document has no {START} ... {END} markers")
    head, rest = document.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}{END}{tail}"


def current_section(document: str) -> str:
    return document.split(START, 1)[1].split(END, 1)[0].removeprefix("\n")


# --- the command ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from .cli import DEFAULT_MODEL

    command = argparse.ArgumentParser(
        prog="modelyard-conformance --mutation-score", description=__doc__.split("\n\n")[0]
    )
    where = command.add_mutually_exclusive_group()
    where.add_argument("--backend", metavar="NAME", help="start `modelyard serve` with only this backend")
    where.add_argument("--base-url", metavar="URL", help="the server under test (default: OLLAMA_HOST's)")
    command.add_argument("--model", default=DEFAULT_MODEL, help=f"the model the cases use (default {DEFAULT_MODEL})")
    command.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    command.add_argument("--capability", action="append", default=[], metavar="NAME")
    command.add_argument("--expectations", metavar="FILE", help="known gaps: those cases are left out")
    command.add_argument("--no-extensions", action="store_true", help="leave out modelyard's extension cases")
    command.add_argument("--mutants", type=Path, metavar="FILE", help="a catalogue (default: the shipped one)")
    command.add_argument("--mutant", action="append", default=[], metavar="ID", help="only this mutant (repeatable)")
    command.add_argument("--case-timeout", type=float, default=DEFAULT_CASE_TIMEOUT, metavar="SECONDS")
    command.add_argument("--report", type=Path, metavar="PATH", help="write the JSON report here")
    command.add_argument("--write-doc", type=Path, metavar="MARKDOWN", help="replace the score section in this file")
    command.add_argument("--fail-under", type=float, metavar="PERCENT", help="exit 1 when the score is lower")
    return command


def expectations_for(given: str | None, backend: str | None) -> Expectations | None:
    if given:
        return load_expectations(resolve_expectations(given))
    if backend and (expectations_dir() / f"{backend}.yaml").exists():
        return load_expectations(expectations_dir() / f"{backend}.yaml")
    return None


def main(argv: list[str] | None = None) -> int:
    import os

    from .cli import ollama_host_url

    args = parser().parse_args(argv)
    try:
        catalogue = load_catalogue(args.mutants)
        expectations = expectations_for(args.expectations, args.backend)
    except (DataError, OSError) as exc:
        print(f"modelyard-conformance --mutation-score: {exc}", file=sys.stderr)
        return 2
    mutants = [mutant for mutant in catalogue.mutants if not args.mutant or mutant.id in args.mutant]
    unknown = set(args.mutant) - {mutant.id for mutant in catalogue.mutants}
    if unknown:
        print(f"no such mutant: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        if args.backend:
            env = dict(item.split("=", 1) for item in args.server_env)
            direct = Target.start_backend(args.backend, args.model, env=env, extra_capabilities=tuple(args.capability))
        else:
            base_url = args.base_url or ollama_host_url(os.environ.get("OLLAMA_HOST"))
            direct = Target.connect(base_url, args.model, extra_capabilities=tuple(args.capability))
    except TargetError as exc:
        print(f"modelyard-conformance --mutation-score: {exc}", file=sys.stderr)
        return 2
    try:
        report = score(
            direct,
            mutants,
            catalogue=args.mutants or default_catalogue(),
            expectations=expectations,
            skip_extensions=args.no_extensions,
            case_timeout=args.case_timeout,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        direct.close()
    print(f"\n{report.summary()} in {report.seconds:.0f} s")
    for survivor in report.survivors():
        reason = f" ({survivor.survives})" if survivor.survives else ""
        print(f"  survived: {survivor.id}: {survivor.description}{reason}")
    if args.report:
        args.report.write_text(json.dumps(msgspec.to_builtins(report), indent=2) + "\n", encoding="utf-8")
    if args.write_doc:
        args.write_doc.write_text(replace_section(args.write_doc.read_text(encoding="utf-8"), render(report)), "utf-8")
    if args.fail_under is not None and 100 * report.score < args.fail_under:
        return 1
    return 0
