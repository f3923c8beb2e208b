"""A soak test, out of the default run: `uv run pytest -m soak tests/security/test_soak.py -s`.

For SOAK_SECONDS (default 600) several clients mix generate and chat on the llama.cpp backend (streamed
and not), embeddings from all-minilm (/api/embed, /api/embeddings, /v1/embeddings), tags, show, ps,
pushes, pulls and deletes through a loopback registry, clients that leave
mid-stream and bad input. Every request must be answered (no transport error, no 5xx other than the
deliberate ones), and the server's resident memory and open file descriptors must be flat: the last
quarter of the run may not grow beyond the first quarter's peak by more than a margin (allocators keep
freed memory, and a model's first requests warm caches). The figures are printed for the report.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.registry import LocalRegistry

from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
EMBEDDER = "all-minilm:latest"
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
CLIENTS = 4
MEMORY_MARGIN = 64 * 1024**2  # bytes the last quarter's RSS may exceed the first quarter's peak by
FD_MARGIN = 8

# pytest's default timeout (600 s) is the soak's own length: allow for start-up and the last requests.
pytestmark = [pytest.mark.soak, pytest.mark.timeout(SECONDS + 600)]


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    local = LocalRegistry(tmp_path_factory.mktemp("soak-registry"))
    yield local
    local.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("soak") / "models"
    env = {
        "MODELYARD_BACKENDS": "llamacpp",
        "MODELYARD_BUNDLED_MODELS": f"{MODEL},{EMBEDDER}",
        "OLLAMA_NUM_PARALLEL": "2",
    }
    with ServerProcess(models, env) as running:
        yield running


class Load:
    """The mixed requests, each returning its status (a transport error is recorded as one)."""

    def __init__(self, url: str, registry: str) -> None:
        self.url = url
        self.remote = f"{registry}/soak/smol:v1"

    def generate(self, http: httpx.Client, rng: random.Random) -> int:
        stream = rng.random() < 0.5
        body = {"model": MODEL, "prompt": "Count to five.", "stream": stream, "options": {"num_predict": 12}}
        with http.stream("POST", "/api/generate", json=body) as response:
            lines = list(response.iter_lines())
        assert lines and '"done":true' in lines[-1], lines[-1:]
        return response.status_code

    def chat(self, http: httpx.Client, rng: random.Random) -> int:
        messages = [{"role": "user", "content": rng.choice(["hi", "Name a colour.", "What is 2+2?"])}]
        answer = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                             "options": {"num_predict": 12}})  # fmt: skip
        assert answer.json()["done"] is True
        return answer.status_code

    def leave_mid_stream(self, http: httpx.Client, rng: random.Random) -> int:
        body = {"model": MODEL, "prompt": "Tell me a long story.", "options": {"num_predict": 200}}
        with http.stream("POST", "/api/generate", json=body) as response:
            for index, _ in enumerate(response.iter_lines()):
                if index == 3:
                    break  # closing the response drops the connection mid-stream
        return response.status_code

    def embed(self, http: httpx.Client, rng: random.Random) -> int:
        """Vectors from all-minilm through each embedding endpoint, and a generation model's refusal."""
        texts = rng.sample(["The cat sits outside.", "I love pasta.", "Do you like pizza?", "A man plays."], 2)
        endpoint = rng.choice(["embed", "embeddings", "openai", "refused"])
        if endpoint == "embed":
            answer = http.post("/api/embed", json={"model": EMBEDDER, "input": texts})
            assert [len(vector) for vector in answer.json()["embeddings"]] == [384, 384], answer.text[:200]
        elif endpoint == "embeddings":
            answer = http.post("/api/embeddings", json={"model": EMBEDDER, "prompt": texts[0]})
            assert len(answer.json()["embedding"]) == 384, answer.text[:200]
        elif endpoint == "openai":
            answer = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts})
            assert [len(item["embedding"]) for item in answer.json()["data"]] == [384, 384], answer.text[:200]
        else:
            answer = http.post("/api/embed", json={"model": MODEL, "input": texts[0]})
            assert answer.status_code == 400 and "does not support embeddings" in answer.json()["error"]
        return answer.status_code

    def listings(self, http: httpx.Client, rng: random.Random) -> int:
        statuses = [http.get("/api/tags").status_code, http.get("/api/ps").status_code]
        statuses.append(http.post("/api/show", json={"model": MODEL}).status_code)
        return max(statuses)

    def bad_input(self, http: httpx.Client, rng: random.Random) -> int:
        status = rng.choice(
            [
                lambda: http.post("/api/generate", content=b"{not json"),
                lambda: http.post("/api/chat", json={"model": "missing", "messages": []}),
                lambda: http.post("/api/generate", json={"model": MODEL, "prompt": "x", "keep_alive": "soon"}),
                lambda: http.post("/api/generate", content=b"[" * 100000),
                lambda: http.request("DELETE", "/api/delete", json={"model": "never-made"}),
            ]
        )().status_code
        assert 400 <= status < 500, status
        return status

    def pull_and_delete(self, http: httpx.Client, rng: random.Random) -> int:
        name = f"{self.remote.rsplit(':', 1)[0]}:c{rng.randrange(10**6)}"
        copied = http.post("/api/copy", json={"source": MODEL, "destination": self.remote}).status_code
        pushed = http.post("/api/push", json={"model": self.remote, "insecure": True, "stream": False}).status_code
        pulled = http.post("/api/pull", json={"model": self.remote, "insecure": True, "stream": False})
        assert pulled.json().get("status") == "success", pulled.text
        renamed = http.post("/api/copy", json={"source": self.remote, "destination": name}).status_code
        deleted = http.request("DELETE", "/api/delete", json={"model": name}).status_code
        return max(copied, pushed, pulled.status_code, renamed, deleted)


def test_mixed_load_for_a_bounded_time_keeps_memory_and_descriptors_flat(server, registry, capsys):
    load = Load(server.url, registry.host)
    actions: list[tuple[Callable[[httpx.Client, random.Random], int], int]] = [
        (load.generate, 30),
        (load.chat, 25),
        (load.leave_mid_stream, 8),
        (load.embed, 10),
        (load.listings, 15),
        (load.bad_input, 12),
        (load.pull_and_delete, 5),
    ]
    answered: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    samples: list[tuple[float, int, int]] = []  # seconds since start, RSS bytes, open descriptors
    stop = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=300) as http:
            while not stop.is_set():
                action = rng.choices([a for a, _ in actions], weights=[w for _, w in actions])[0]
                try:
                    status = action(http, rng)
                except Exception as exc:  # a transport error or a wrong answer: recorded, not raised here
                    with lock:
                        failures.append(f"{action.__name__}: {type(exc).__name__}: {exc}"[:1000])
                    continue
                with lock:
                    answered[(action.__name__, status)] += 1

    with httpx.Client(base_url=server.url, timeout=300) as http:  # both models loaded before the first sample
        assert http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}).status_code == 200
        assert http.post("/api/embed", json={"model": EMBEDDER, "input": "warm up"}).status_code == 200
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    pid = server.process.pid
    while time.monotonic() - started < SECONDS:
        samples.append((time.monotonic() - started, resident_bytes(pid), open_descriptors(pid)))
        time.sleep(min(5.0, SECONDS / 40))
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    samples.append((time.monotonic() - started, resident_bytes(pid), open_descriptors(pid)))

    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    with capsys.disabled():
        print(f"\nsoak: {SECONDS:.0f} s, {sum(answered.values())} requests answered, {len(failures)} failures")
        print("  by action and status:", dict(sorted(answered.items())))
        print(f"  RSS MiB first quarter max {max(s[1] for s in first) / 2**20:.1f}, "
              f"last quarter max {max(s[1] for s in last) / 2**20:.1f}, end {samples[-1][1] / 2**20:.1f}")  # fmt: skip
        print(f"  fds first quarter max {max(s[2] for s in first)}, last quarter max {max(s[2] for s in last)}")
    assert failures == []
    assert not any(status >= 500 for (_, status) in answered)
    assert max(s[1] for s in last) <= max(s[1] for s in first) + MEMORY_MARGIN
    assert max(s[2] for s in last) <= max(s[2] for s in first) + FD_MARGIN
