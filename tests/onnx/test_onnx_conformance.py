"""The conformance suite on the onnx backend, as a CI pipeline runs it: `--backend onnx` starts a server
with only that backend, and `--create-from` enters the ONNX folder into its temporary store first."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.suite import every_test, run_suite

NO_BUNDLED = ["--server-env", "MODELYARD_BUNDLED_MODELS=none"]


def test_the_tiny_model_passes_the_suite_but_its_known_gaps(tiny_folder: Path, tmp_path: Path) -> None:
    """Random weights pass every case but the four that need sensible text, which are strict xfails."""
    run = run_suite(
        ["--backend", "onnx", "--model", "tiny-smollm2", "--create-from", str(tiny_folder), *NO_BUNDLED,
         "--expectations", "onnx-tiny"],
        tmp_path / "report.json",
    )
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()
    assert run.report["target"]["backend"] == "onnx"
    assert "format:onnx" in run.report["target"]["capabilities"]
    assert run.results("xfailed") == sorted(
        f"{kind}/{case}[{mode}]"
        for kind in ("generate", "chat")
        for case in ("stop-sequence-ends-the-answer", "format-json-gives-json")
        for mode in ("stream", "no-stream")
    ), run.output


@pytest.mark.slow
def test_the_converted_smollm2_passes_the_whole_suite(real_folder: Path, tmp_path: Path) -> None:
    """The real model, with no expectations file: every case that needs sensible text passes too."""
    run = run_suite(
        ["--backend", "onnx", "--model", "smollm2:135m", "--create-from", str(real_folder), *NO_BUNDLED],
        tmp_path / "report.json",
        timeout=420,
    )
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()
    assert not run.results("xfailed")
    assert "generate/stop-sequence-ends-the-answer[stream]" in run.results("passed")
    assert "chat/format-json-gives-json[no-stream]" in run.results("passed")


def test_a_missing_create_from_path_is_a_usage_error(tmp_path: Path) -> None:
    run = run_suite(
        ["--backend", "onnx", "--model", "m", "--create-from", str(tmp_path / "absent"), *NO_BUNDLED],
        tmp_path / "report.json",
    )
    assert run.returncode == 4, run.output  # pytest's usage error
    assert "--create-from" in run.output and "no such file or folder" in run.output


def test_a_folder_the_server_refuses_stops_the_run_with_the_servers_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    run = run_suite(
        ["--backend", "onnx", "--model", "m", "--create-from", str(folder), *NO_BUNDLED, "-x"],
        tmp_path / "report.json",
    )
    assert run.returncode != 0
    assert "could not create m" in run.output and "/api/create answered 400" in run.output, run.output
