"""Servers the tests start as they are (llama.cpp's llama-server, llama-cpp-python's server): one process,
its output in a log file, ready once a path answers 200."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class External:
    """A running external server: its URL, and its process for the tests that kill or pause it."""

    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def external_server(command: list[str], log_path: Path, ready_path: str = "/v1/models") -> Iterator[External]:
    """Run `command` (which names its port with `--port`) and give its URL and process once `ready_path`
    answers 200; the process ends with the block. The log's end is in the error when it does not start in
    120 s."""
    port = command[command.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + ready_path, timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{command[0]} did not start: {log_path.read_text()[-2000:]}")
            yield External(url, process)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:  # stuck: not left behind
                process.kill()
                process.wait()
