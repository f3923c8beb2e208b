"""A registry that has no models, for the error cases of /api/pull and /api/push.

It speaks just enough of the OCI distribution protocol to refuse: every manifest and blob is unknown
(404, `MANIFEST_UNKNOWN`), and the namespace `private` demands a bearer token that its token service never
grants (401). The server under test reaches it at `${registry}` (127.0.0.1 and a free port), so the
cases that use it need a server on the same machine (`requires: [loopback]`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def _answer(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/token"):
            self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "access denied"}]})
        elif self.path.startswith("/v2/private/"):
            challenge = (
                f'Bearer realm="http://{self.server.address}/token",service="fake",scope="repository:private:pull"'
            )
            self._answer(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": challenge},
            )
        else:
            self._answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class FakeRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.address = f"127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="fake-registry", daemon=True)

    def start(self) -> FakeRegistry:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
