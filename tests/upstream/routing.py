"""Helpers of the upstream tests: routers and upstreams as real `modelyard serve` processes on loopback, and
a stub server for the answers a healthy modelyard never gives (a 500)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from modelyard_conformance.launcher import ServerProcess

SMOLLM2 = "smollm2:135m"
ECHO_ENV = {"MODELYARD_BACKENDS": "echo", "MODELYARD_BUNDLED_MODELS": SMOLLM2, "OLLAMA_NUM_PARALLEL": "8"}


def echo_upstream(tmp: Path, delay: float = 0.02, **env: str) -> ServerProcess:
    """An echo server (use it with `with`: entering waits until it answers)."""
    return ServerProcess(tmp / "models", {**ECHO_ENV, "MODELYARD_ECHO_DELAY": str(delay), **env})


def router(tmp: Path, config: str, **env: str) -> ServerProcess:
    """A modelyard that runs nothing itself, only the upstream backend with `config` as its TOML file (use it
    with `with`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "upstream.toml"
    path.write_text(config)
    settings = {
        "MODELYARD_BACKENDS": "upstream",
        "MODELYARD_BUNDLED_MODELS": "none",
        "MODELYARD_UPSTREAM_CONFIG": str(path),
        **env,
    }
    return ServerProcess(tmp / "models", settings)


def pool(
    model: str,
    *urls: str,
    timeout: float = 60,
    extra: str = "",
    upstream_model: str = "",
    kind: str = "ollama",
    capabilities: list[str] | None = None,
) -> str:
    lines = ["[[pool]]", f'model = "{model}"', f"timeout = {timeout}"]
    if upstream_model:
        lines.append(f'upstream_model = "{upstream_model}"')
    if capabilities is not None:
        lines.append("capabilities = [" + ", ".join(f'"{name}"' for name in capabilities) + "]")
    for url in urls:
        lines += ["[[pool.upstream]]", f'url = "{url}"', f'kind = "{kind}"']
    return "\n".join(lines) + "\n" + extra + "\n"


HEALTH = "[health]\ninterval = 0.3\nfailures = 1\ncooldown = 0.5\n"


class StubUpstream:
    """An HTTP server on loopback that answers every POST with one fixed status and body, and the router's
    probes (GETs of the model list, /api/show) with a model `model` that completes, in a thread."""

    def __init__(self, status: int, body: bytes, model: str = "pooled") -> None:
        # Both kinds' model lists in one body (each reader ignores the other's key).
        listing = b'{"models": [{"name": "%s"}], "data": [{"id": "%s"}]}' % (model.encode(), model.encode())
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/show":  # the router's probe asks what the model can do
                    self._answer(200, b'{"capabilities": ["completion"]}')
                    return
                stub.requests += 1
                self._answer(stub.status, stub.body)

            def do_GET(self) -> None:
                self._answer(200, listing)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.status, self.body, self.requests = status, body, 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
