"""docs/compatibility.md's case × backend matrix is what the suite's runs of this session say.

When a case or a result changes, regenerate it: `MODELYARD_UPDATE_MATRIX=1 uv run pytest tests/conformance`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from modelyard_conformance.matrix import END, START, current_section, render, replace_section

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"


@pytest.mark.slow
def test_the_compatibility_matrix_is_fresh(echo_run, llamacpp_run, onnx_tiny_run, onnx_real_run) -> None:
    fresh = render([run.report for run in (echo_run, llamacpp_run, onnx_tiny_run, onnx_real_run)])
    text = DOCUMENT.read_text(encoding="utf-8")
    if os.environ.get("MODELYARD_UPDATE_MATRIX"):
        DOCUMENT.write_text(replace_section(text, fresh), encoding="utf-8")
    stale = current_section(DOCUMENT.read_text(encoding="utf-8"))
    diff = "".join(difflib.unified_diff(stale.splitlines(True), fresh.splitlines(True), "committed", "fresh"))
    assert stale == fresh, f"docs/compatibility.md's matrix is stale; run with MODELYARD_UPDATE_MATRIX=1:\n{diff}"


def test_replacing_the_matrix_keeps_the_rest_of_the_document() -> None:
    document = f"# Title\n\ntext\n\n{START}\nold\n{END}\n\nafter\n"
    replaced = replace_section(document, "new\n")
    assert replaced == f"# Title\n\ntext\n\n{START}\nnew\n{END}\n\nafter\n"
    assert current_section(replaced) == "new\n"
    with pytest.raises(ValueError):
        replace_section("no markers", "new\n")
