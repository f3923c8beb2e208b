"""A real OCI registry (Debian's docker-registry, the CNCF distribution) on loopback, and a proxy in front
of it that can demand a bearer token, slow blobs down, or drop a connection in the middle of a blob."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from modelyard_conformance.launcher import free_port

TOKEN = "secret-token"


class LocalRegistry:
    """`docker-registry serve` on a free loopback port; `read_only` refuses every write (its maintenance
    mode), which gives a push a real registry error to report."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed: apt-get install docker-registry (.ci/run does)")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = root / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            + ("  maintenance:\n    readonly:\n      enabled: true\n" if read_only else "")
            + f"http:\n  addr: {self.host}\n"
        )
        self.log = open(root / "registry.log", "wb")
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class RegistryProxy:
    """Forwards to `upstream`. Knobs, changeable while it runs:

    - require_token: answer 401 with a Bearer challenge unless `Authorization: Bearer TOKEN`; the token is
      served at /token.
    - drop_after: cut the connection after this many bytes of the next blob download (once).
    - delay: seconds to sleep per 64 KiB of blob sent (a slow registry).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.require_token = False
        self.drop_after: int | None = None
        self.delay = 0.0
        self.blob_gets: list[tuple[str, str | None]] = []  # (path, Range header)
        self.token_requests = 0
        proxy = self
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                if self.path.startswith("/token"):
                    proxy.token_requests += 1
                    self._reply(200, b'{"token": "%s"}' % TOKEN.encode(), {"Content-Type": "application/json"})
                    return
                if proxy.require_token and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    challenge = (
                        f'Bearer realm="http://{proxy.host}/token",service="test",scope="repository:x:pull,push"'
                    )
                    self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")
                }
                is_blob = self.command == "GET" and "/blobs/sha256:" in self.path
                if is_blob:
                    proxy.blob_gets.append((self.path, self.headers.get("Range")))
                with (
                    httpx.Client(timeout=60) as client,
                    client.stream(
                        self.command, f"http://{proxy.upstream}{self.path}", headers=headers, content=body
                    ) as response,
                ):
                    # Location headers name the upstream; clients must keep talking to the proxy.
                    out = {
                        k: v.replace(proxy.upstream, proxy.host)
                        for k, v in response.headers.items()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    }
                    data = response.read() if not is_blob else None
                    if not is_blob:
                        self._reply(response.status_code, data, out)
                        return
                    self.send_response(response.status_code)
                    for key, value in out.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", response.headers.get("content-length", "0"))
                    self.end_headers()
                    sent = 0
                    drop_at = proxy.drop_after
                    for chunk in response.iter_bytes(65536):
                        if drop_at is not None and sent + len(chunk) > drop_at:
                            self.wfile.write(chunk[: drop_at - sent])
                            self.wfile.flush()
                            proxy.drop_after = None
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if proxy.delay:
                            time.sleep(proxy.delay)

            def _reply(self, status: int, data: bytes | None, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if data and self.command != "HEAD":
                    self.wfile.write(data)

            def _serve(self) -> None:
                try:
                    self._forward()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a test cancelling a pull): nothing to report

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
