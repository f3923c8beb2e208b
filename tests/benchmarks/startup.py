"""What a user meets first: start-up time, memory and the cost of the endpoints clients poll.

    uv run python tests/benchmarks/startup.py                       # this checkout
    uv run python tests/benchmarks/startup.py --python /work/main/.venv/bin/python   # another one

On an existing store (prepared by one launch that is not measured), over several launches:

- launch -> first 200 from `/`;
- launch -> first streamed token of smollm2:135m (a generate sent as soon as `/` answers);
- RSS of the idle server, and with SmolLM2 loaded, next to a raw `llama_cpp.Llama` in its own process with
  the same file, context and batch as the server uses (num_ctx 4096, num_batch 512);
- /api/tags and /api/version requests per second, from keep-alive connections on loopback.

Medians are reported (the machine may be shared); nothing is asserted. The script needs only the standard
library, so it measures any checkout's interpreter: the server runs as `<python> -m modelyard serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2:135m"
NUM_CTX = 4096  # the server's default context length (OLLAMA_CONTEXT_LENGTH), below SmolLM2's 8192
NUM_BATCH = 512  # Ollama's default num_batch, which the server passes to llama.cpp
PROMPT = "Why is the sky blue?"

RAW_LLAMA = """
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=int(sys.argv[3]), n_ubatch=int(sys.argv[3]),
                      verbose=False)
for _ in llm.create_completion(sys.argv[4], max_tokens=8, temperature=0, stream=True):
    pass
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: less disturbed by a busy machine than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def http_request(port: int, method: str, path: str, body: bytes = b"", timeout: float = 60) -> tuple[int, bytes]:
    """One request on a fresh connection (stdlib only); the status and the whole body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        connection.sendall(head.encode() + body)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


class Server:
    def __init__(self, python: str, store: Path, log: Path, pycache: Path | None) -> None:
        self.port = free_port()
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{self.port}", "MODELYARD_MODELS": str(store)}
        if pycache is not None:  # compiled modules kept, as an installed package has them
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.log = open(log, "ab")
        self.launched = time.perf_counter()
        self.process = subprocess.Popen(
            [python, "-m", "modelyard", "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_root(self, timeout: float = 180) -> float:
        """Seconds from launch to the first 200 from `/` (polled every 5 ms)."""
        deadline = self.launched + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if http_request(self.port, "GET", "/", timeout=5)[0] == 200:
                    return time.perf_counter() - self.launched
            except OSError:
                pass
            time.sleep(0.005)
        raise TimeoutError("the server did not answer /")

    def first_token(self) -> float:
        """Seconds from launch to the first streamed token of a generate sent as soon as `/` answers."""
        self.wait_root()
        body = json.dumps(
            {"model": MODEL, "prompt": PROMPT, "stream": True, "options": {"num_predict": 8, "temperature": 0}}
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=120) as connection:
            head = f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            connection.sendall(head.encode() + body.encode())
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
                for line in data.split(b"\r\n\r\n", 1)[-1].split(b"\n"):
                    if b'"response":"' in line and b'"response":""' not in line:
                        elapsed = time.perf_counter() - self.launched
                        while connection.recv(65536):  # the rest, so the model is idle when RSS is read
                            pass
                        return elapsed
        raise RuntimeError(f"no token in the answer: {data[-500:]!r}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def requests_per_second(port: int, path: str, seconds: float, connections: int) -> tuple[float, int]:
    """Keep-alive GETs of `path` from several connections for `seconds`: requests per second, and how many."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.decode())
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - started), done


def raw_llama_rss(python: str, gguf: str) -> float:
    output = subprocess.run(
        [python, "-c", RAW_LLAMA, gguf, str(NUM_CTX), str(NUM_BATCH), PROMPT],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(output.split()[-1]) / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the checkout to measure")
    parser.add_argument("--store", type=Path, help="an existing store (default: one prepared in a temporary folder)")
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per requests-per-second run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="compile every module at each launch (PYTHONDONTWRITEBYTECODE without .pyc files); by default "
        "compiled modules are cached under a temporary PYTHONPYCACHEPREFIX, as an installed package has them",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modelyard-startup-"))
    store = args.store or work / "models"
    log = work / "server.log"
    pycache = None if args.no_bytecode else work / "pycache"
    print(f"python: {args.python}\nstore: {store}\nserver log: {log}\nbytecode cache: {pycache}")

    def launch() -> Server:
        return Server(args.python, store, log, pycache)

    # One unmeasured launch makes the store an existing one (bundled models installed) and fills the
    # bytecode cache of every module a first token needs.
    server = launch()
    server.first_token()
    tags = json.loads(http_request(server.port, "GET", "/api/tags")[1])
    server.stop()
    print("models:", ", ".join(m["name"] for m in tags["models"]))

    root_times, root_cpu, token_times, token_cpu, idle, idle_tags, loaded, loaded_tags = ([] for _ in range(8))
    for _ in range(args.launches):
        server = launch()
        try:
            root_times.append(server.wait_root())
            root_cpu.append(cpu_seconds(server.process.pid))
            time.sleep(1.0)  # let the lifespan's start-up work finish before reading the idle RSS
            idle.append(rss_mb(server.process.pid))
            http_request(server.port, "GET", "/api/tags")  # what Open WebUI asks every few seconds
            idle_tags.append(rss_mb(server.process.pid))
        finally:
            server.stop()
        server = launch()
        try:
            token_times.append(server.first_token())
            token_cpu.append(cpu_seconds(server.process.pid))
            loaded.append(rss_mb(server.process.pid))
            http_request(server.port, "GET", "/api/tags")
            loaded_tags.append(rss_mb(server.process.pid))
        finally:
            server.stop()

    gguf = subprocess.run(
        [args.python, "-c", "from modelyard.store.bundled import smollm2_gguf; print(smollm2_gguf())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    raw = [raw_llama_rss(args.python, gguf) for _ in range(3)]

    server = launch()
    try:
        server.wait_root()
        rates: dict[str, list[float]] = {}
        costs: dict[str, list[float]] = {}  # server CPU per request: what the client on the same cores hides
        for path in ("/api/tags", "/api/version", "/api/tags", "/api/version"):
            before = cpu_seconds(server.process.pid)
            rate, count = asyncio.run(requests_per_second(server.port, path, args.seconds, args.connections))
            rates.setdefault(path, []).append(rate)
            costs.setdefault(path, []).append((cpu_seconds(server.process.pid) - before) / count * 1e6)
    finally:
        server.stop()

    def seconds(values: list[float]) -> str:
        return f"median {median(values):.3f} s  (" + ", ".join(f"{v:.3f}" for v in values) + ")"

    print(f"launch -> / 200:            {seconds(root_times)}; server CPU {median(root_cpu):.2f} s")
    print(f"launch -> first token:      {seconds(token_times)}; server CPU {median(token_cpu):.2f} s")
    print(f"RSS idle:                   median {median(idle):.0f} MB; after one /api/tags {median(idle_tags):.0f} MB")
    print(f"RSS with {MODEL} loaded: median {median(loaded):.0f} MB (num_ctx {NUM_CTX}, num_batch {NUM_BATCH})")
    print(f"  after one /api/tags:      median {median(loaded_tags):.0f} MB")
    print(
        f"RSS raw llama_cpp.Llama:    median {median(raw):.0f} MB; server - raw: {median(loaded) - median(raw):.0f} MB, "
        f"after /api/tags {median(loaded_tags) - median(raw):.0f} MB"
    )
    for path, values in rates.items():
        cost = median(costs[path])
        print(
            f"{path:<13} requests/s:  median {median(values):.0f}  ("
            + ", ".join(f"{v:.0f}" for v in values)
            + f"; {args.connections} connections); server CPU {cost:.0f} us a request (at most {1e6 / cost:.0f}/s on one core)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
