"""`--api openai`: the suite's /v1 cases (OpenAI's and Anthropic's APIs, streamed as server-sent events and
not) against servers that serve no Ollama API: llama-cpp-python's own server and llama.cpp's `llama-server`,
each with the bundled SmolLM2, their known gaps as strict xfails (expectations/llama-cpp-python.yaml,
expectations/llama-server.yaml); and modelyard itself passing every one of them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.llama_server_build import llama_server as build_llama_server
from support.external import external_server
from support.suite import every_test

from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import free_port
from modelyard_conformance.schema import expectations_dir, load_cases, load_expectations

ALIAS = "smollm2"  # the name both servers give the model in /v1/models
OPENAI_ONLY = ["--api", "openai"]


def openai_tests() -> set[str]:
    return every_test(tuple(case for case in load_cases() if case.is_openai))


def known_gaps(name: str) -> list[str]:
    """The tests an expectations file turns into strict xfails."""
    gaps = {gap.case for gap in load_expectations(expectations_dir() / f"{name}.yaml").xfail}
    return sorted(test for test in openai_tests() if test.split("[")[0] in gaps)


@pytest.fixture(scope="module")
def llama_cpp_python_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", ALIAS]
    # interrupt_requests false: by default a new request cuts the stream still running (the suite hangs up on some).
    command += ["--port", str(free_port()), "--n_ctx", "2048", "--verbose", "false", "--interrupt_requests", "false"]
    with external_server(command, tmp_path_factory.mktemp("llama-cpp-python") / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Built once per machine (about 20 minutes on 2 cores; .ci/run builds it before the tests), then cached.
    binary = build_llama_server()
    command = [str(binary), "--model", str(smollm2_gguf()), "--alias", ALIAS, "--port", str(free_port())]
    command += ["--host", "127.0.0.1", "--ctx-size", "2048", "--threads", "2", "--parallel", "1"]
    with external_server(command, tmp_path_factory.mktemp("llama-server") / "server.log") as server:
        yield server.url


def test_modelyard_passes_every_openai_case_and_the_mode_runs_nothing_else(suite, tmp_path: Path) -> None:
    """The echo backend through modelyard's /v1: every case of the mode passes, and no Ollama case ran."""
    run = suite(["--backend", "echo", "--model", "smollm2:135m", *OPENAI_ONLY], tmp_path / "report.json")
    assert run.returncode == 0, run.explain()
    assert run.reported() == openai_tests()
    assert run.report["target"]["api"] == "openai"
    assert any("[stream]" in test for test in run.results("passed")), "the streamed cases must run"


def test_llama_cpp_python_server_passes_the_openai_mode_but_its_known_gaps(
    suite, llama_cpp_python_server: str, tmp_path: Path
) -> None:
    arguments = ["--base-url", llama_cpp_python_server, "--model", ALIAS, *OPENAI_ONLY]
    run = suite([*arguments, "--expectations", "llama-cpp-python"], tmp_path / "report.json")
    assert run.returncode == 0, run.explain()
    assert run.reported() == openai_tests()
    assert run.results("xfailed") == known_gaps("llama-cpp-python")
    assert "openai/chat-completion-streams-chunks-then-done[stream]" in run.results("passed")


def test_a_model_missing_from_v1_models_stops_the_run(suite, llama_cpp_python_server: str, tmp_path: Path) -> None:
    run = suite(["--base-url", llama_cpp_python_server, "--model", "absent", *OPENAI_ONLY], tmp_path / "report.json")
    assert run.returncode != 0
    assert "has no model 'absent' in /v1/models" in run.output


@pytest.mark.timeout(3600)  # the first run on a machine builds llama-server (about 20 minutes)
def test_llama_server_passes_the_openai_mode_but_its_known_gaps(suite, llama_server: str, tmp_path: Path) -> None:
    arguments = ["--base-url", llama_server, "--model", ALIAS, *OPENAI_ONLY]
    run = suite([*arguments, "--expectations", "llama-server"], tmp_path / "report.json")
    assert run.returncode == 0, run.explain()
    assert run.reported() == openai_tests()
    assert run.results("xfailed") == known_gaps("llama-server")
    assert "openai/chat-completion-streams-chunks-then-done[stream]" in run.results("passed")
