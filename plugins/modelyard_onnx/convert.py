"""Convert a GGUF model into an ONNX Runtime GenAI folder, offline.

    python -m modelyard_onnx.convert SOURCE.gguf OUT_FOLDER [--precision int8] [--venv DIR]

The conversion needs torch, transformers, onnx, onnx-ir, accelerate and gguf, which modelyard does not
install. Give `--venv DIR` and the command makes (once) a virtual environment there with the system's
Python and pip, installs them into it, and runs the conversion in it; or run it with a Python that has
them. Then serve the folder with a Modelfile saying `FROM ./OUT_FOLDER` (docs/onnx.md).

How: transformers reads the GGUF (dequantizing its weights), the dense weights are copied into a model
built from the same config (transformers does not save a model loaded from a GGUF), saved as a Hugging
Face folder with the GGUF's tokenizer and chat template, and onnxruntime-genai's model builder turns
that folder into the ONNX one. `--tiny` keeps the tokenizer and chat template but replaces the network
with a small random one (the test fixture in tests/fixtures/onnx).

Progress: the stages (environment, conversion, quantization) on a rich display when stderr is a
terminal, plain lines otherwise, then a summary. The conversion in the build environment reports its
stages to this process as marked lines on its stdout.

This module imports only the standard library at the top, so that it runs by file path in a Python
that has no modelyard installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# Bump when the output of a conversion changes: caches key on it.
VERSION = 3

# What the conversion needs, pinned so that a conversion is repeatable (a change here is a new VERSION).
# torch 2.13.0 from pip is the CPU build on Linux (uv would pick a CUDA one).
BUILD_PACKAGES = (
    "torch==2.13.0",
    "transformers==5.24.0",
    "onnx==1.23.2",
    "onnx-ir==1.1.0",
    "accelerate==1.15.0",
    "gguf==0.19.0",
    "onnxruntime-genai==0.18.0",
)

# The random network of --tiny: SmolLM2's vocabulary on two layers of width 64.
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


# GGUF tensor types of 4 bits or fewer: such weights quantized again to int4 drift (docs/onnx.md).
LOW_BIT_TYPES = frozenset(
    "Q4_0 Q4_1 Q2_K Q3_K Q4_K IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS TQ1_0 TQ2_0 MXFP4".split()
)

# How the conversion in the build environment tells this process where it is: `MARK stage NAME<tab>TEXT`
# (a stage's name may have spaces) and `MARK detail TEXT`.
MARK = "::modelyard-convert::"


class Display:
    """Progress of a conversion: a rich live display on a terminal, plain lines otherwise (tests, CI).

    `stage` starts a stage (and ends the one before), `detail` says what the stage is doing now (the
    latest line of pip or of the builder), `note` is a line worth keeping, `summary` ends the display.
    Plain output prints the latest detail after every `QUIET_SECONDS` without a line, so a long step
    (pip, transformers dequantizing) is never silent and never floods a CI log.
    """

    QUIET_SECONDS = 15.0

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.stage_name = ""
        self.stage_text = ""
        self.stage_started = self.started
        self.latest = ""
        self.last_plain = self.started
        self.lock = threading.Lock()  # plain lines come from the caller and from the quiet-time thread
        self.stopped = threading.Event()
        self.progress: Any = None
        self.task: Any = None
        if live if live is not None else self.stream.isatty():
            try:
                from rich.console import Console
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            except ImportError:  # a build Python without rich: plain lines
                pass
            else:
                self.progress = Progress(
                    SpinnerColumn(finished_text="[green]✓"),
                    TextColumn("[bold]{task.fields[stage]:<13}"),
                    TextColumn("{task.description}"),
                    TimeElapsedColumn(),
                    console=Console(file=self.stream),
                )
                self.progress.start()
                return
        threading.Thread(target=self._while_quiet, name="convert-progress", daemon=True).start()

    def _plain(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {text}", file=self.stream, flush=True)
        self.last_plain = time.monotonic()

    def _while_quiet(self) -> None:
        while not self.stopped.wait(1.0):
            with self.lock:
                if self.stage_name and time.monotonic() - self.last_plain >= self.QUIET_SECONDS:
                    working = f"still working ({time.monotonic() - self.stage_started:.0f} s)"
                    self._plain(f"{self.stage_name}: {self.latest or working}")
                    self.latest = ""

    def end_stage(self) -> None:
        """Mark the current stage done, with its time."""
        with self.lock:
            if not self.stage_name:
                return
            if self.progress is not None:
                # Ticked off with what the stage was, not its last detail; the time column shows how long.
                self.progress.update(self.task, total=1, completed=1, description=self.stage_text)
            else:
                self._plain(f"{self.stage_name}: done in {time.monotonic() - self.stage_started:.1f} s")
            self.stage_name = ""

    def stage(self, name: str, text: str) -> None:
        self.end_stage()
        with self.lock:
            self.stage_name, self.stage_text, self.stage_started, self.latest = name, text, time.monotonic(), ""
            if self.progress is not None:
                self.task = self.progress.add_task(text, total=None, stage=name)
            else:
                self._plain(f"{name}: {text}")

    def detail(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        text = text if len(text) <= 100 else text[:97] + "..."
        with self.lock:
            self.latest = text
            if self.progress is not None and self.stage_name:
                self.progress.update(self.task, description=text)

    def note(self, text: str) -> None:
        with self.lock:
            if self.progress is not None:
                self.progress.console.print(text, markup=False, highlight=False)
            else:
                self._plain(text)

    def summary(self, rows: list[tuple[str, str]]) -> None:
        self.end_stage()
        self.close()
        width = max(len(key) for key, _ in rows)
        print("\n".join(f"{key:<{width}}  {value}" for key, value in rows), file=self.stream, flush=True)

    def close(self) -> None:
        self.stopped.set()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@contextlib.contextmanager
def _shown_on(display: Display | None) -> Iterator[Display]:
    """The caller's display, or a new one that is closed when the step ends (a live one has a thread)."""
    if display is not None:
        yield display
        return
    own = Display()
    try:
        yield own
        own.end_stage()
    finally:
        own.close()


class MarkedLines:
    """The conversion's side of the protocol: stages and details as marked lines on stdout."""

    def stage(self, name: str, text: str) -> None:
        print(f"{MARK} stage {name}\t{text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"{MARK} detail {text}", flush=True)


def relay(display: Display) -> Callable[[str], None]:
    """A line handler that shows the conversion's marked lines, and its other output as details."""

    def show(line: str) -> None:
        if line.startswith(MARK + " stage "):
            name, _, text = line[len(MARK) + 7 :].partition("\t")
            display.stage(name, text)
        elif line.startswith(MARK + " detail "):
            display.detail(line[len(MARK) + 8 :])
        else:
            display.detail(line)

    return show


def _run(command: list[str], on_line: Callable[[str], None] | None = None) -> None:
    """Run a step, handing each line of its output to `on_line`; its last lines become the error when it fails."""
    tail: deque[str] = deque(maxlen=60)
    # Text mode splits at "\r" too, so a progress bar's updates arrive as lines.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)
    if child.returncode != 0:
        output = "\n".join(line for line in tail if not line.startswith(MARK))
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({child.returncode}):\n{output[-4000:]}")


def choose_precision(source: Path) -> tuple[str, str]:
    """The default precision for a GGUF, and why: int8 when most of its weights are already 4-bit or
    smaller (int4 would quantize them a second time, and they drift: docs/onnx.md), else int4."""
    try:
        from modelyard.plugin import read_gguf_header as read_header
    except ImportError:  # run by file path in a Python without modelyard
        return "int4", "the default (this Python cannot read the GGUF's types)"
    header = read_header(source)
    elements: dict[str, int] = {}
    for tensor in header.tensors:
        count = 1
        for dim in tensor.shape:
            count *= dim
        elements[tensor.type] = elements.get(tensor.type, 0) + count
    total = sum(elements.values()) or 1
    low_bit = sum(count for kind, count in elements.items() if kind in LOW_BIT_TYPES) / total
    if low_bit > 0.5:
        return "int8", (
            f"the GGUF is already {header.file_type} ({low_bit:.0%} of its weights in 4 bits or fewer): "
            "int4 would quantize them again and they drift, int8 keeps them; --precision int4 overrides"
        )
    return "int4", f"the GGUF is {header.file_type}"


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def has_build_packages(python: str = sys.executable) -> bool:
    probe = "import torch, transformers, onnx, onnx_ir, accelerate, gguf, onnxruntime_genai"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def ensure_build_venv(folder: Path, base_python: str | None = None, display: Display | None = None) -> str:
    """The Python of a virtual environment at `folder` with the conversion packages (made once).

    It is made with `base_python`, else the system's python3, else this Python, and filled with pip.
    """
    with _shown_on(display) as display:
        return _ensure_build_venv(folder, base_python, display)


def _ensure_build_venv(folder: Path, base_python: str | None, display: Display) -> str:
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = folder / ".modelyard-convert"
    wanted = " ".join(BUILD_PACKAGES) + "\n"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        display.stage("environment", f"using {folder} (ready)")
        return str(python)
    display.stage("environment", f"creating a virtual environment in {folder}")
    base = base_python or shutil.which("python3") or sys.executable
    _run([base, "-m", "venv", "--clear", str(folder)])
    display.stage("environment", f"installing {len(BUILD_PACKAGES)} packages with pip (a few minutes the first time)")
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        *BUILD_PACKAGES,
    ]
    _run(command, display.detail)
    marker.write_text(wanted)
    return str(python)


@dataclass(frozen=True)
class Recipe:
    """How to convert: the precision and provider the graph is built for, the int4 method, tiny or not.

    `provider` is the execution provider the graph is built for (the builder's `-e`): a folder built for
    `cpu` computes in fp32 and also loads on CUDA, where the attention runs on the CPU; one built for
    `cuda` computes in fp16 there. int4 uses the builder's `k_quant` unless `algo` says otherwise. A
    4-bit GGUF quantized again to int4 loses more: for a small model, `int8` keeps the GGUF's weights
    nearly exactly (docs/onnx.md).
    """

    precision: str = "int4"
    provider: str = "cpu"
    algo: str | None = None
    tiny: bool = False

    def arguments(self) -> list[str]:
        """The command-line options that ask `main` for this recipe."""
        options = ["--precision", self.precision, "--provider", self.provider]
        if self.algo:
            options += ["--algo", self.algo]
        return options + (["--tiny"] if self.tiny else [])


def run_conversion(
    python: str, source: Path, out: Path, recipe: Recipe = Recipe(), display: Display | None = None
) -> None:
    """Run `convert()` in another Python (one that has the conversion packages), showing its stages."""
    command = [python, str(Path(__file__).resolve()), str(source), str(out), *recipe.arguments(), "--marked-progress"]
    with _shown_on(display) as display:
        _run(command, relay(display))


def cached_conversion(
    source: Path, cache: Path, *, precision: str = "int4", provider: str = "cpu", display: Display | None = None
) -> Path:
    """The conversion of `source` under `cache`, made once (with a build venv in `cache/onnx-build`).

    The folder is named by the source's digest and this converter's version, and renamed into place
    whole, so concurrent or interrupted runs never leave a half-built model to be reused.
    """
    digest = hashlib.sha256()
    with open(source, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    variant = precision if provider == "cpu" else f"{precision}-{provider}"
    key = hashlib.sha256(f"{digest.hexdigest()}-{variant}-{VERSION}".encode()).hexdigest()[:16]
    name = "-".join(part for part in re.split(r"[^a-z0-9]+", source.stem.lower()) if part)
    folder = cache / f"onnx-{name}-{variant}-{key}"
    if (folder / "genai_config.json").is_file():
        return folder
    with _shown_on(display) as display:
        python = ensure_build_venv(cache / "onnx-build", display=display)
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
        try:
            run_conversion(python, source, building / "model", Recipe(precision=precision, provider=provider), display)
            try:
                (building / "model").rename(folder)
            except OSError:  # another run finished first
                if not (folder / "genai_config.json").is_file():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        display.end_stage()
        display.note(f"converted {source.name} ({precision}, {provider}) into {folder}")
    return folder


def _hf_folder(source: Path, folder: Path, tiny: bool, say: Callable[[str], None]) -> None:
    """A Hugging Face folder (config, safetensors, tokenizer with the chat template) from the GGUF."""
    say("importing torch and transformers")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    say("reading the GGUF's config and tokenizer")
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if tiny:
        for key, value in TINY_SHAPE.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        say("dequantizing the GGUF's weights")
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # From the plain config: the loaded model's says "gguf quantized", which the builder refuses.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
    say("saving the Hugging Face folder")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def convert(source: Path, out: Path, recipe: Recipe = Recipe(), report: Display | MarkedLines | None = None) -> None:
    """Write the ONNX GenAI folder for the GGUF `source` into `out` (replaced if it exists)."""
    if isinstance(report, MarkedLines):
        _convert(source, out, recipe, report)
        return
    with _shown_on(report) as display:
        _convert(source, out, recipe, display)


def _convert(source: Path, out: Path, recipe: Recipe, report: Display | MarkedLines) -> None:
    algo = recipe.algo or ("default" if recipe.tiny else "k_quant")
    with tempfile.TemporaryDirectory(prefix="modelyard-convert-") as work:
        hf = Path(work) / "hf"
        network = (
            "a small random network with the GGUF's tokenizer" if recipe.tiny else "dequantizing the GGUF's weights"
        )
        report.stage("conversion", f"reading {source.name}: {network} (transformers)")
        _hf_folder(source, hf, recipe.tiny, report.detail)
        built = Path(work) / "onnx"
        extra = ["hf_token=false"]
        if recipe.precision == "int4":
            extra.append(f"algo_config={algo}")
        command = [
            sys.executable, "-m", "onnxruntime_genai.models.builder",
            "-i", str(hf), "-o", str(built), "-p", recipe.precision, "-e", recipe.provider,
            "-c", str(Path(work) / "cache"),
            "--extra_options", *extra,
        ]  # fmt: skip
        quantizing = recipe.precision in ("int4", "int8")
        report.stage(
            "quantization" if quantizing else "onnx graph",
            f"building the ONNX graph for {recipe.provider}"
            + (f" and quantizing to {recipe.precision}" if quantizing else f" in {recipe.precision}"),
        )
        _run(command, report.detail)
        report.detail(f"writing {out}")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the GGUF file")
    parser.add_argument("out", type=Path, help="the ONNX GenAI folder to write")
    parser.add_argument(
        "--precision",
        choices=["int4", "int8", "fp16", "fp32"],
        help="default int4, or int8 for a GGUF already in 4 bits or fewer (int4 would quantize it again)",
    )
    parser.add_argument(
        "--provider", default="cpu", choices=["cpu", "cuda", "dml"], help="build the graph for this provider"
    )
    parser.add_argument(
        "--algo", help="int4 quantization: k_quant (default), rtn, default... (the builder's algo_config)"
    )
    parser.add_argument("--tiny", action="store_true", help="a small random network with the GGUF's tokenizer")
    parser.add_argument("--venv", type=Path, help="make and use a virtual environment there for the conversion")
    # Set by run_conversion: report stages as marked lines to the process that shows them.
    parser.add_argument("--marked-progress", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    source, out = args.source.resolve(), args.out.resolve()
    if args.marked_progress:
        convert(source, out, Recipe(args.precision or "int4", args.provider, args.algo, args.tiny), MarkedLines())
        return 0
    if not source.is_file():
        parser.error(f"{args.source}: no such file")
    if args.venv is None and not has_build_packages():
        parser.error("this Python lacks " + " ".join(BUILD_PACKAGES) + ": install them or give --venv DIR")
    display = Display()
    started = time.monotonic()
    try:
        precision = args.precision
        if precision is None and args.tiny:
            precision = "int4"  # a random network: nothing to keep
        elif precision is None:
            precision, why = choose_precision(source)
            display.note(f"precision {precision}: {why}")
        recipe = Recipe(precision=precision, provider=args.provider, algo=args.algo, tiny=args.tiny)
        if args.venv is not None:
            run_conversion(ensure_build_venv(args.venv, display=display), source, out, recipe, display)
        else:
            convert(source, out, recipe, display)
    except (RuntimeError, OSError) as exc:
        display.close()
        print(f"conversion failed: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        display.close()
        raise
    display.summary(
        [
            ("output", str(out)),
            ("precision", precision),
            ("provider", args.provider),
            ("size", human_size(folder_size(out))),
            ("time", f"{time.monotonic() - started:.1f} s"),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
