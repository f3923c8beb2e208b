"""The GGUF -> ONNX converter's command line without a two-minute conversion: the default precision it
picks from the GGUF's tensor types, and the progress it shows.

The progress tests run the real command (`python -m modelyard_onnx.convert ... --venv DIR`) with a build
environment whose Python runs the real converter module with its two heavy steps (transformers and the
model builder) replaced by quick ones, so every stage line, the hand-over between the two processes and
the summary are the real ones.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from modelyard.store.bundled import smollm2_gguf
from modelyard_onnx import convert

CONVERTER = Path(convert.__file__).resolve()

# The build environment's Python: the real converter with quick stand-ins for transformers and the builder.
QUICK_PYTHON = """#!{python}
import importlib.util, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("converter", sys.argv[1])
converter = sys.modules["converter"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(converter)


def quick_builder(command, on_line=None):
    out = Path(command[command.index("-o") + 1])
    out.mkdir(parents=True)
    (out / "genai_config.json").write_text("{{}}")
    (out / "model.onnx").write_bytes(bytes(2500))
    if on_line is not None:
        on_line("quantizing 30 weights")


converter._hf_folder = lambda source, folder, tiny, say: say("dequantizing")
converter._run = quick_builder
sys.exit(converter.main(sys.argv[2:]))
"""


def gguf_header(path: Path, file_type: int, tensor_type: int) -> Path:
    """A GGUF file with a header only: `general.file_type` and one 4096x4096 tensor of `tensor_type`."""
    key = b"general.file_type"
    name = b"blk.0.ffn_up.weight"
    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    data += struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, file_type)  # 4: uint32
    data += struct.pack("<Q", len(name)) + name + struct.pack("<IQQIQ", 2, 4096, 4096, tensor_type, 0)
    path.write_bytes(data)
    return path


@pytest.fixture
def quick_venv(tmp_path: Path) -> Path:
    """A build environment that `ensure_build_venv` takes as ready, whose Python converts quickly."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(QUICK_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    (venv / ".modelyard-convert").write_text(" ".join(convert.BUILD_PACKAGES) + "\n")
    return venv


def run_converter(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "modelyard_onnx.convert", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def without_clock(output: str) -> list[str]:
    """The lines of plain progress output without their elapsed-time prefix."""
    return [re.sub(r"^\[\s*\d+\.\d+s\] ", "", line) for line in output.splitlines()]


def test_a_4_bit_gguf_defaults_to_int8_and_says_why():
    precision, why = convert.choose_precision(smollm2_gguf())
    assert precision == "int8"
    assert why.startswith("the GGUF is already Q4_1 (79% of its weights in 4 bits or fewer)")
    assert why.endswith("--precision int4 overrides")


def test_an_8_and_16_bit_gguf_defaults_to_int4(tmp_path):
    assert convert.choose_precision(gguf_header(tmp_path / "f16.gguf", file_type=1, tensor_type=1)) == (
        "int4",
        "the GGUF is F16",
    )
    assert convert.choose_precision(gguf_header(tmp_path / "q8.gguf", file_type=7, tensor_type=8)) == (
        "int4",
        "the GGUF is Q8_0",
    )
    assert convert.choose_precision(gguf_header(tmp_path / "q4k.gguf", file_type=15, tensor_type=12))[0] == "int8"


def test_plain_progress_lines_name_every_stage_and_end_with_a_summary(tmp_path, quick_venv):
    out = tmp_path / "smollm2-onnx"
    done = run_converter(str(smollm2_gguf()), str(out), "--venv", str(quick_venv))
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr  # not a terminal: no live display
    lines = without_clock(done.stderr)
    assert lines[0].startswith("precision int8: the GGUF is already Q4_1")
    stages = [line for line in lines if re.match(r"(environment|conversion|quantization): ", line)]
    assert [re.sub(r"done in \d+\.\d s", "done in N s", line) for line in stages] == [
        f"environment: using {quick_venv} (ready)",
        "environment: done in N s",
        "conversion: reading SmolLM2-135M-Instruct.Q4_1.gguf: dequantizing the GGUF's weights (transformers)",
        "conversion: done in N s",
        "quantization: building the ONNX graph for cpu and quantizing to int8",
        "quantization: done in N s",
    ]
    summary = dict(line.split(maxsplit=1) for line in lines[-5:])
    assert summary.keys() == {"output", "precision", "provider", "size", "time"}
    assert (summary["output"], summary["precision"], summary["provider"], summary["size"]) == (
        str(out),
        "int8",
        "cpu",
        "2.5 KB",
    )
    assert re.fullmatch(r"\d+\.\d s", summary["time"])
    assert (out / "genai_config.json").is_file()


def test_an_explicit_precision_wins_without_a_note(tmp_path, quick_venv):
    out = tmp_path / "int4"
    done = run_converter(
        str(smollm2_gguf()), str(out), "--venv", str(quick_venv), "--precision", "int4", "--provider", "cuda"
    )
    assert done.returncode == 0, done.stderr
    lines = without_clock(done.stderr)
    assert not any(line.startswith("precision int8") for line in lines)
    assert "quantization: building the ONNX graph for cuda and quantizing to int4" in lines
    assert "precision  int4" in lines and "provider   cuda" in lines


def test_fp16_has_no_quantization_stage(tmp_path, quick_venv):
    done = run_converter(str(smollm2_gguf()), str(tmp_path / "fp16"), "--venv", str(quick_venv), "--precision", "fp16")
    assert done.returncode == 0, done.stderr
    lines = without_clock(done.stderr)
    assert "onnx graph: building the ONNX graph for cpu in fp16" in lines
    assert not any(line.startswith("quantization") for line in lines)


def test_a_failed_step_says_so_with_its_output(tmp_path, quick_venv):
    python = quick_venv / "bin" / "python"
    python.write_text(
        python.read_text().replace('on_line("quantizing 30 weights")', 'raise RuntimeError("builder: out of memory")')
    )
    done = run_converter(str(smollm2_gguf()), str(tmp_path / "out"), "--venv", str(quick_venv))
    assert done.returncode == 1
    assert "conversion failed: " in done.stderr and "builder: out of memory" in done.stderr


def test_a_terminal_gets_the_live_display(tmp_path, quick_venv):
    out = tmp_path / "live"
    command = [sys.executable, "-m", "modelyard_onnx.convert", str(smollm2_gguf()), str(out), "--venv", str(quick_venv)]
    terminal = pexpect.spawn(
        command[0], command[1:], env={**os.environ, "TERM": "xterm", "COLUMNS": "160"}, encoding="utf-8", timeout=120
    )
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 0, terminal.before
    assert "\x1b[" in terminal.before  # a live display draws with escape codes
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.before)
    # Each stage ends ticked off, with what it did and its time.
    assert re.search(rf"✓ environment +using {quick_venv} \(ready\) +0:00:\d\d", screen)
    assert re.search(r"✓ conversion +reading SmolLM2-135M-Instruct.Q4_1.gguf: dequantizing", screen)
    assert re.search(r"✓ quantization +building the ONNX graph for cpu and quantizing to int8 +0:00:\d\d", screen)
    assert f"output     {out}" in screen and "precision  int8" in screen


def test_plain_output_repeats_the_latest_detail_when_a_step_is_quiet():
    stream = io.StringIO()
    display = convert.Display(stream=stream, live=False)
    display.QUIET_SECONDS = 0.5  # instead of 15: the test waits for the line, it does not time it
    try:
        display.stage("environment", "installing 7 packages with pip")
        display.detail("Collecting torch==2.13.0")
        deadline = time.monotonic() + 30
        while "still working" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        display.close()
    lines = without_clock(stream.getvalue())
    assert lines[:2] == ["environment: installing 7 packages with pip", "environment: Collecting torch==2.13.0"]
    # Then, with no newer detail, a sign of life.
    assert re.fullmatch(r"environment: still working \(\d+ s\)", lines[2]), lines
