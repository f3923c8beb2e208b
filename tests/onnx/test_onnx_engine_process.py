"""Each loaded ONNX model runs in an engine process of its own: it starts at load, ends at unload and with
the server, and a dead one fails only the request it was serving."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ONNX_ENV, TINY, create_from_folder

from modelyard_conformance.launcher import ServerProcess

GREEDY = {"temperature": 0, "seed": 1}


def children(pid: int) -> set[int]:  # Linux's /proc, as on the test machines
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(child) for child in task.read_text().split()}
    return found


def engines(server: ServerProcess) -> set[int]:
    """The server's child processes that run `modelyard_onnx.engine`."""
    found = set()
    for pid in children(server.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"modelyard_onnx.engine" in command:
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def server(tmp_path: Path, tiny_folder: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "models", ONNX_ENV) as process:
        assert create_from_folder(process.url, TINY, tiny_folder).status_code == 200
        yield process


def generate(url: str, **options: object) -> httpx.Response:
    body = {"model": TINY, "prompt": "Why is the sky blue?", "stream": False, "options": {**GREEDY, **options}}
    return httpx.post(url + "/api/generate", json=body, timeout=60)


def test_a_loaded_model_has_one_engine_process_until_it_is_unloaded(server):
    assert engines(server) == set()
    assert generate(server.url, num_predict=4).status_code == 200
    (engine,) = engines(server)
    assert generate(server.url, num_predict=4).status_code == 200
    assert engines(server) == {engine}  # the same process serves the next request
    unloaded = httpx.post(server.url + "/api/generate", json={"model": TINY, "keep_alive": 0}, timeout=30)
    assert unloaded.status_code == 200
    assert wait_until(lambda: not alive(engine))


def test_a_reload_with_other_load_options_replaces_the_engine_process(server):
    assert generate(server.url, num_predict=2).status_code == 200
    (first,) = engines(server)
    assert generate(server.url, num_predict=2, num_ctx=1024).status_code == 200
    (second,) = engines(server)
    assert second != first and wait_until(lambda: not alive(first))


def test_an_engine_killed_between_requests_is_started_again(server):
    reference = generate(server.url, num_predict=8).json()["response"]
    (engine,) = engines(server)
    os.kill(engine, signal.SIGKILL)
    assert wait_until(lambda: not alive(engine))
    answered = generate(server.url, num_predict=8)
    assert answered.status_code == 200, answered.text
    assert answered.json()["response"] == reference
    assert engines(server) and engine not in engines(server)


def test_an_engine_killed_while_generating_fails_that_request_only(server):
    assert generate(server.url, num_predict=1).status_code == 200
    (engine,) = engines(server)
    body = {"model": TINY, "prompt": "Why is the sky blue?", "options": {**GREEDY, "num_predict": 2000}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        os.kill(engine, signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert "error" in rest[-1] and "onnxruntime-genai stopped while generating" in rest[-1]["error"]
    assert generate(server.url, num_predict=4).status_code == 200


def test_the_engine_process_ends_with_the_server(tmp_path: Path, tiny_folder: Path):
    process = ServerProcess(tmp_path / "models", ONNX_ENV).wait_ready()
    try:
        assert create_from_folder(process.url, TINY, tiny_folder).status_code == 200
        assert generate(process.url, num_predict=2).status_code == 200
        (engine,) = engines(process)
        process.process.kill()  # no shutdown: the engine sees the end of its input
        process.process.wait()
        assert wait_until(lambda: not alive(engine))
    finally:
        process.stop()
