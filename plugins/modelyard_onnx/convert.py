"""Convert a GGUF model into an ONNX Runtime GenAI folder, offline.

    python -m modelyard_onnx.convert SOURCE.gguf OUT_FOLDER [--precision int4] [--venv DIR]

The conversion needs torch, transformers, onnx, onnx-ir, accelerate and gguf, which modelyard does not
install. Give `--venv DIR` and the command makes (once) a virtual environment there with the system's
Python and pip, installs them into it, and runs the conversion in it; or run it with a Python that has
them. Then serve the folder with a Modelfile saying `FROM ./OUT_FOLDER` (docs/onnx.md).

How: transformers reads the GGUF (dequantizing its weights), the dense weights are copied into a model
built from the same config (transformers does not save a model loaded from a GGUF), saved as a Hugging
Face folder with the GGUF's tokenizer and chat template, and onnxruntime-genai's model builder turns
that folder into the ONNX one. `--tiny` keeps the tokenizer and chat template but replaces the network
with a small random one (the test fixture in tests/fixtures/onnx).

This module imports only the standard library at the top, so that it runs by file path in a Python
that has no modelyard installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def _run(command: list[str]) -> None:
    """Run a step quietly; its output becomes the error when it fails."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stdout[-4000:]}")


def has_build_packages(python: str = sys.executable) -> bool:
    probe = "import torch, transformers, onnx, onnx_ir, accelerate, gguf, onnxruntime_genai"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def ensure_build_venv(folder: Path, base_python: str | None = None) -> str:
    """The Python of a virtual environment at `folder` with the conversion packages (made once).

    It is made with `base_python`, else the system's python3, else this Python, and filled with pip.
    """
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = folder / ".modelyard-convert"
    wanted = " ".join(BUILD_PACKAGES) + "\n"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        return str(python)
    base = base_python or shutil.which("python3") or sys.executable
    _run([base, "-m", "venv", "--clear", str(folder)])
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *BUILD_PACKAGES])
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


def run_conversion(python: str, source: Path, out: Path, recipe: Recipe = Recipe()) -> None:
    """Run `convert()` in another Python (one that has the conversion packages)."""
    _run([python, str(Path(__file__).resolve()), str(source), str(out), *recipe.arguments()])


def cached_conversion(source: Path, cache: Path, *, precision: str = "int4", provider: str = "cpu") -> Path:
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
    python = ensure_build_venv(cache / "onnx-build")
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        run_conversion(python, source, building / "model", Recipe(precision=precision, provider=provider))
        try:
            (building / "model").rename(folder)
        except OSError:  # another run finished first
            if not (folder / "genai_config.json").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def _hf_folder(source: Path, folder: Path, tiny: bool) -> None:
    """A Hugging Face folder (config, safetensors, tokenizer with the chat template) from the GGUF."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if tiny:
        for key, value in TINY_SHAPE.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # From the plain config: the loaded model's says "gguf quantized", which the builder refuses.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def convert(source: Path, out: Path, recipe: Recipe = Recipe()) -> None:
    """Write the ONNX GenAI folder for the GGUF `source` into `out` (replaced if it exists)."""
    algo = recipe.algo or ("default" if recipe.tiny else "k_quant")
    with tempfile.TemporaryDirectory(prefix="modelyard-convert-") as work:
        hf = Path(work) / "hf"
        _hf_folder(source, hf, recipe.tiny)
        built = Path(work) / "onnx"
        extra = ["hf_token=false"]
        if recipe.precision == "int4":
            extra.append(f"algo_config={algo}")
        command = [
            sys.executable, "-m", "onnxruntime_genai.models.builder",
            "-i", str(hf), "-o", str(built), "-p", recipe.precision, "-e", recipe.provider, "-c", str(Path(work) / "cache"),
            "--extra_options", *extra,
        ]  # fmt: skip
        _run(command)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the GGUF file")
    parser.add_argument("out", type=Path, help="the ONNX GenAI folder to write")
    parser.add_argument("--precision", default="int4", choices=["int4", "int8", "fp16", "fp32"], help="default int4")
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "dml"], help="build the graph for this provider")
    parser.add_argument("--algo", help="int4 quantization: k_quant (default), rtn, default... (the builder's algo_config)")
    parser.add_argument("--tiny", action="store_true", help="a small random network with the GGUF's tokenizer")
    parser.add_argument("--venv", type=Path, help="make and use a virtual environment there for the conversion")
    args = parser.parse_args(argv)
    recipe = Recipe(precision=args.precision, provider=args.provider, algo=args.algo, tiny=args.tiny)
    if args.venv is not None:
        run_conversion(ensure_build_venv(args.venv), args.source.resolve(), args.out.resolve(), recipe)
        return 0
    if not has_build_packages():
        parser.error("this Python lacks " + " ".join(BUILD_PACKAGES) + ": install them or give --venv DIR")
    convert(args.source.resolve(), args.out.resolve(), recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
