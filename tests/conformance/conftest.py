"""Runs of the conformance suite, shared by the tests of this folder.

Each run is a real `python -m modelyard_conformance ...` subprocess (what `modelyard conformance` and a CI
pipeline run), which starts its own `modelyard serve` on a free port. The echo and llama.cpp runs are made
once per session: the suite tests and the matrix freshness test read the same reports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.suite import SuiteRun, run_suite

MODEL = "smollm2:135m"
# Servers the suite starts enter only SmolLM2 into their stores (assembling Gemma 3 costs a second and 250 MB).
ONLY_SMOLLM2 = ["--server-env", f"MODELYARD_BUNDLED_MODELS={MODEL}"]
# The onnx runs enter their model with --create-from, into a store without the bundled models.
NO_BUNDLED = ["--server-env", "MODELYARD_BUNDLED_MODELS=none"]


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


@pytest.fixture(scope="session")
def onnx_tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> SuiteRun:
    """The onnx backend on the random-weight tiny model, with its expectations file (onnx-tiny)."""
    report = tmp_path_factory.mktemp("onnx-tiny") / "report.json"
    arguments = ["--backend", "onnx", "--model", "tiny-smollm2", "--create-from", str(tiny_folder), *NO_BUNDLED]
    return run_suite([*arguments, "--expectations", "onnx-tiny"], report)


@pytest.fixture(scope="session")
def onnx_real_run(tmp_path_factory: pytest.TempPathFactory, real_folder: Path) -> SuiteRun:
    """The onnx backend on SmolLM2 converted from the bundled GGUF, with no expectations file."""
    report = tmp_path_factory.mktemp("onnx-real") / "report.json"
    arguments = ["--backend", "onnx", "--model", MODEL, "--create-from", str(real_folder), *NO_BUNDLED]
    return run_suite(arguments, report, timeout=420)
