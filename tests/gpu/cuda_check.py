"""The onnx backend on CUDA, for a machine with an NVIDIA GPU and onnxruntime-genai-cuda installed.

    python tests/gpu/cuda_check.py --real FOLDER [--out DIR]

FOLDER is an ONNX GenAI folder of the real SmolLM2 built for CUDA:

    python -m modelyard_onnx.convert SMOLLM2.gguf FOLDER --provider cuda --venv ~/.cache/modelyard/onnx-build

It checks, in order, and writes what it found to DIR/cuda-check.json:
1. the build: onnxruntime-genai's version and `is_cuda_available()`;
2. the conformance suite with MODELYARD_ONNX_PROVIDER=cuda, on the committed tiny model (with its
   expectations file) and on the real model (with none);
3. that the server really computes on the GPU: the server process holds GPU memory (nvidia-smi) and
   /api/ps reports the model in VRAM;
4. decode rate and time to first token, server vs raw onnxruntime-genai on the same folder and provider,
   greedy, 128 tokens, rounds interleaved (the method of tests/benchmarks/test_onnx_decode.py).

It is not part of `uv run pytest` (the test machines have no GPU); the CPU runs cover the same code, and
tests/onnx covers the provider selection and its errors without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from support.models import create_from_folder  # noqa: E402
from support.suite import run_suite  # noqa: E402
from test_onnx_decode import PROMPT, ROUNDS, Timing, time_raw, time_server  # noqa: E402

from modelyard.api.ollama.wire import Message  # noqa: E402
from modelyard.templates.chat_template import ChatTemplate  # noqa: E402
from modelyard_conformance.launcher import ServerProcess  # noqa: E402

TINY_FOLDER = REPO / "tests" / "fixtures" / "onnx" / "smollm2-tiny"


def server_env(provider: str) -> dict[str, str]:
    return {"MODELYARD_BACKENDS": "onnx", "MODELYARD_BUNDLED_MODELS": "none", "MODELYARD_ONNX_PROVIDER": provider}


def step(results: dict[str, Any], name: str, action: Callable[[], Any]) -> None:
    """Run one check; its result or its error goes into `results`, and the next check runs either way."""
    started = time.monotonic()
    try:
        results[name] = action()
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    results[name + "_seconds"] = round(time.monotonic() - started, 1)
    print(f"== {name}: {json.dumps(results[name], default=str)[:3000]}", flush=True)


def build_info() -> dict[str, Any]:
    import onnxruntime_genai as og

    gpu = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader").strip()
    return {"onnxruntime_genai": og.__version__, "is_cuda_available": og.is_cuda_available(), "gpu": gpu}


def conformance(model: str, folder: Path, expectations: str | None, out: Path, provider: str) -> dict[str, Any]:
    report = out / f"conformance-{model.replace(':', '-')}-{provider}.json"
    arguments = ["--backend", "onnx", "--model", model, "--create-from", str(folder)]
    for key, value in server_env(provider).items():
        if key != "MODELYARD_BACKENDS":
            arguments += ["--server-env", f"{key}={value}"]
    if expectations:
        arguments += ["--expectations", expectations]
    run = run_suite(arguments, report, timeout=900)
    counts: dict[str, int] = {}
    for result in run.report.get("results", []):
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return {"returncode": run.returncode, "outcomes": counts, "failing": run.explain()[:2500] if run.returncode else ""}


def nvidia_smi(*arguments: str) -> str:
    """nvidia-smi's output ("" where there is none: a machine without a GPU)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    return subprocess.run(["nvidia-smi", *arguments], capture_output=True, text=True).stdout


def family(pid: int) -> set[int]:
    """`pid` and its descendants (the server runs each ONNX model in a child process)."""
    found = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found |= family(int(child))
    return found


def gpu_memory_of(pid: int) -> int:
    """MiB of GPU memory that process `pid` and its children hold, from nvidia-smi (0 if none)."""
    pids = family(pid)
    listing = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    return sum(int(used) for line in listing.splitlines() if "," in line
               for process, used in [line.split(",")] if int(process) in pids)  # fmt: skip


def decode(folder: Path, work: Path, provider: str) -> dict[str, Any]:
    import onnxruntime_genai as og

    name = "smollm2-onnx:135m"
    template = (folder / "chat_template.jinja").read_text()
    prompt = ChatTemplate(template).render([Message(role="user", content=PROMPT)])
    with ServerProcess(work / "bench" / "models", server_env(provider)) as server:
        created = create_from_folder(server.url, name, folder)
        if created.status_code != 200:
            raise RuntimeError(f"create answered {created.status_code}: {created.text}")
        time_server(server.url, name, prompt)  # loads the model
        on_gpu = {
            "server_gpu_mib": gpu_memory_of(server.process.pid),
            "ps": httpx.get(server.url + "/api/ps").json(),
        }
        config = og.Config(str(folder))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        engine = og.Model(config)
        tokenizer = og.Tokenizer(engine)
        time_raw(og, engine, tokenizer, prompt)
        ours: list[Timing] = []
        raw: list[Timing] = []
        for _ in range(ROUNDS):
            ours.append(time_server(server.url, name, prompt))
            raw.append(time_raw(og, engine, tokenizer, prompt))

    def rate(timings: list[Timing]) -> float:
        return statistics.median(t.rate for t in timings)

    def ttft_ms(timings: list[Timing]) -> float:
        return 1000 * statistics.median(t.first for t in timings)

    return {
        **on_gpu,
        "tokens": [t.count for t in ours[:1] + raw[:1]],
        "server_tokens_per_s": round(rate(ours), 1),
        "raw_tokens_per_s": round(rate(raw), 1),
        "decode_rate_ratio_vs_raw": round(rate(ours) / rate(raw), 3),
        "server_ttft_ms": round(ttft_ms(ours), 1),
        "raw_ttft_ms": round(ttft_ms(raw), 1),
        "ttft_extra_ms_vs_raw": round(ttft_ms(ours) - ttft_ms(raw), 1),
        "server_prompt_eval_ms": round(1000 * statistics.median(t.engine_first for t in ours), 1),
        # The engine process's own clock: below the client's rate, the loss is in the engine's loop; equal
        # to it, in the way to the client.
        "server_engine_tokens_per_s": round(statistics.median(t.engine_rate or 0 for t in ours), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, required=True, help="SmolLM2 as an ONNX GenAI folder built for CUDA")
    parser.add_argument("--provider", default="cuda", help="cuda; cpu tries the script on a machine without a GPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."), help="where the reports go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-cuda-") as work:
        step(results, "build", build_info)
        tiny, real = ("tiny-smollm2", TINY_FOLDER, "onnx-tiny"), ("smollm2:135m", args.real, None)
        step(results, "conformance_tiny", lambda: conformance(*tiny, args.out, args.provider))
        step(results, "conformance_real", lambda: conformance(*real, args.out, args.provider))
        step(results, "decode", lambda: decode(args.real, Path(work), args.provider))
    (args.out / "cuda-check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    passed = all(results[name].get("returncode") == 0 for name in ("conformance_tiny", "conformance_real"))
    return 0 if passed and "error" not in results["decode"] else 1


if __name__ == "__main__":
    sys.exit(main())
