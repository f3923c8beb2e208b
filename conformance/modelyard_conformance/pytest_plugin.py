"""The pytest plugin (entry point `pytest11`): turns the suite's cases into tests.

It does nothing unless `--backend` or `--base-url` is given:

    pytest --pyargs modelyard_conformance --backend echo --model smollm2:135m
    pytest --pyargs modelyard_conformance --base-url http://127.0.0.1:11434 --model smollm2:135m

Each case becomes one test per streaming mode, named after its id: `generate/final-chunk-has-stats[stream]`.
The server is started (or reached) when the first case runs, and stopped at the end of the session.

pytest loads this module in every session of every project that has modelyard installed, so it imports
nothing of the suite until the suite is asked for (`session.py` holds the rest).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest


def _names_taken(parser: pytest.Parser) -> set[str]:
    taken: set[str] = set()
    for group in [*getattr(parser, "_groups", []), getattr(parser, "_anonymous", None)]:
        for option in getattr(group, "options", []):
            taken.update(option.names())
    return taken


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelyard-conformance", "modelyard conformance suite (docs/conformance.md)")
    taken = _names_taken(parser)

    def add(short: str, long: str, **attrs: Any) -> None:
        # The short names are the documented ones; another plugin may own one (pytest-base-url has
        # --base-url), and then only the prefixed name is ours.
        names = [long] if short in taken else [short, long]
        group.addoption(*names, **attrs)

    add(
        "--backend",
        "--conformance-backend",
        dest="conformance_backend",
        metavar="NAME",
        help="start `modelyard serve` with only this backend (and a temporary model store) and run the suite on it",
    )
    add(
        "--base-url",
        "--conformance-base-url",
        dest="conformance_base_url",
        metavar="URL",
        help="run the suite against the Ollama-compatible server at URL",
    )
    add(
        "--model",
        "--conformance-model",
        dest="conformance_model",
        metavar="MODEL",
        help="the model the cases use (it must be in the server's store)",
    )
    group.addoption(
        "--expectations",
        dest="conformance_expectations",
        metavar="FILE",
        help="known gaps of the server under test, as strict xfails (a path, or the name of a file "
        "shipped in modelyard_conformance/expectations; --backend NAME uses NAME's by default)",
    )
    group.addoption(
        "--capability",
        dest="conformance_capabilities",
        action="append",
        default=[],
        metavar="NAME",
        help="a capability to assume besides those /api/show reports (e.g. fault-injection)",
    )
    group.addoption(
        "--server-env",
        dest="conformance_server_env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server that --backend starts",
    )
    group.addoption(
        "--models-dir",
        dest="conformance_models_dir",
        metavar="DIR",
        help="with --backend: serve this model store instead of a temporary one",
    )
    group.addoption(
        "--create-from",
        dest="conformance_create_from",
        metavar="PATH",
        help="create --model from PATH before the run: a Modelfile, a model folder (ONNX) or a GGUF file",
    )
    group.addoption(
        "--api",
        dest="conformance_api",
        choices=("all", "openai"),
        default="all",
        help="openai: run only the cases of the OpenAI- and Anthropic-compatible endpoints (/v1/...), for a server "
        "that serves no Ollama API; the model is looked up in /v1/models (default: all)",
    )
    group.addoption(
        "--no-extensions",
        dest="conformance_no_extensions",
        action="store_true",
        help="skip the cases of modelyard's extensions to the Ollama API (for other servers)",
    )
    group.addoption(
        "--conformance-report",
        dest="conformance_report",
        metavar="PATH",
        help="write a JSON report of every case's outcome to PATH",
    )


def active(config: pytest.Config) -> bool:
    return bool(config.getoption("conformance_backend", None) or config.getoption("conformance_base_url", None))


def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    from .session import STATE, ConformanceState

    state = ConformanceState(config)
    state.validate()
    config.stash[STATE] = state


def _state(config: pytest.Config) -> Any:
    if not active(config):
        return None
    from .session import STATE

    return config.stash.get(STATE, None)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".yaml" or _state(parent.config) is None:
        return None
    from .schema import cases_dir
    from .session import CaseFile

    if file_path.parent.resolve() == cases_dir().resolve():
        return CaseFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    state = _state(item.config)
    if state is not None:
        state.record(item, report)
    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    state = _state(session.config)
    if state is not None:
        state.started = time.monotonic()


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = _state(session.config)
    if state is None:
        return
    state.close()
    if state.report_path:
        report = state.report
        report.seconds = round(time.monotonic() - state.started, 1)
        Path(state.report_path).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = _state(config)
    if state is None:
        return None
    where = f"backend {state.backend}" if state.backend else state.base_url
    gaps = f", expectations: {state.expectations.backend}" if state.expectations else ""
    return [f"modelyard conformance: {where}, model {state.model}{gaps}"]
