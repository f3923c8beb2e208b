"""The mutating proxy: an HTTP server between the suite and a real server that applies one mutant at a time.

    proxy = MutatingProxy("http://127.0.0.1:11434").start()
    proxy.use(mutant)          # from now on requests and answers of the mutant's endpoints are changed
    ... run cases against proxy.url ...
    proxy.changes              # how often the mutant changed something (0: it never applied)
    proxy.close()

Without a mutant it forwards everything unchanged. NDJSON streams pass line by line as they arrive unless
the mutant works on whole answers (a status, a content type, the order of lines), so a client that hangs up
stops the generation behind it as it would without the proxy. Built on the standard library's threading HTTP
server and httpx, so the suite keeps its few dependencies.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .mutants import Mutant, ResponseMutation, Where, mutate_lines, mutate_object, mutate_request_body, selected

# Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), and the length, which the
# proxy sets itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)
NDJSON = "application/x-ndjson"


class MutatingProxy:
    """A proxy on a free loopback port in front of `upstream`."""

    def __init__(self, upstream: str, timeout: float | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.mutant: Mutant | None = None
        self.changes = 0
        self._lock = threading.Lock()
        # The suite's per-request timeout: when the client gives up on an answer that has not started
        # (stream false), the proxy gives up too and hangs up, which cancels the generation behind it.
        self.client = httpx.Client(base_url=self.upstream, timeout=timeout)
        handler = type("BoundProxyHandler", (ProxyHandler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="mutating-proxy", daemon=True)

    def start(self) -> MutatingProxy:
        self._thread.start()
        return self

    def use(self, mutant: Mutant | None) -> None:
        """Apply `mutant` from now on (None: forward unchanged), counting its changes from zero."""
        with self._lock:
            self.mutant = mutant
            self.changes = 0

    def changed(self) -> None:
        with self._lock:
            self.changes += 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streams
    proxy: MutatingProxy

    def log_message(self, format: str, *args: Any) -> None:  # the suite reports what matters
        pass

    def do_GET(self) -> None:
        self.forward()

    do_HEAD = do_POST = do_DELETE = do_OPTIONS = do_PUT = do_PATCH = do_GET

    # --- the request ------------------------------------------------------------------------------------

    def read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def forward(self) -> None:
        proxy = self.proxy
        mutant = proxy.mutant
        if mutant is not None and not mutant.touches(self.command, self.path):
            mutant = None
        body = self.read_body()
        if mutant is not None and mutant.request is not None and body:
            body = self.mutate_request(body, mutant)
        headers = [(name, value) for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP]
        try:
            request = proxy.client.build_request(self.command, self.path, headers=headers, content=body)
            upstream = proxy.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.write_whole(502, [("Content-Type", "application/json")], json.dumps({"error": str(exc)}).encode())
            return
        try:
            self.answer(upstream, mutant.response if mutant is not None else None, mutant.where if mutant else None)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up; closing upstream tells the server
        finally:
            upstream.close()

    def mutate_request(self, body: bytes, mutant: Mutant) -> bytes:
        assert mutant.request is not None
        try:
            document = json.loads(body)
        except ValueError:
            return body
        mutated = mutate_request_body(document, mutant.request)
        if mutated == document:
            return body
        self.proxy.changed()
        return json.dumps(mutated).encode()

    # --- the answer -------------------------------------------------------------------------------------

    def answer(self, upstream: httpx.Response, mutation: ResponseMutation | None, where: Where | None) -> None:
        headers = [(name, value) for name, value in upstream.headers.multi_items() if name.lower() not in HOP_BY_HOP]
        streamed = upstream.headers.get("content-type", "").startswith(NDJSON)
        if self.command == "HEAD":
            self.send_response_only(self.mutated_status(upstream.status_code, mutation, where, []))
            for name, value in upstream.headers.multi_items():
                if name.lower() != "transfer-encoding":
                    self.send_header(name, value)
            self.end_headers()
            return
        applies = (
            mutation is not None
            and where is not None
            and (where.status is None or upstream.status_code in where.status)
        )
        if applies and mutation is not None and mutation.drop_headers:
            dropped = {name.lower() for name in mutation.drop_headers}
            kept = [(name, value) for name, value in headers if name.lower() not in dropped]
            if len(kept) != len(headers):
                self.proxy.changed()
            headers = kept
        if not applies:
            if streamed:
                self.write_stream(upstream.status_code, headers, upstream, None, None)
            else:
                self.write_whole(upstream.status_code, headers, upstream.read())
            return
        assert mutation is not None and where is not None
        whole = (
            mutation.status is not None
            or mutation.content_type is not None
            or mutation.lines is not None
            or mutation.body is not None
        )
        if streamed and not whole:
            self.write_stream(upstream.status_code, headers, upstream, mutation, where)
            return
        self.write_mutated(upstream, headers, streamed, mutation, where)

    def mutated_status(
        self, status: int, mutation: ResponseMutation | None, where: Where | None, objects: list[Any]
    ) -> int:
        if mutation is None or where is None or mutation.status is None:
            return status
        if where.status is not None and status not in where.status:
            return status
        if (where.final is not None or where.equals) and not any(selected(o, where, False) for o in objects):
            return status
        if mutation.status != status:
            self.proxy.changed()
        return mutation.status

    def write_mutated(
        self,
        upstream: httpx.Response,
        headers: list[tuple[str, str]],
        streamed: bool,
        mutation: ResponseMutation,
        where: Where,
    ) -> None:
        raw = upstream.read()
        lines = raw.splitlines(keepends=True) if streamed else [raw]
        objects = []
        changed_lines = []
        for line in lines:
            try:
                document = json.loads(line) if line.strip() else None
            except ValueError:
                document = None
            objects.append(document)
            if document is not None and selected(document, where, streamed):
                mutated = mutate_object(document, mutation)
                if mutated != document:
                    self.proxy.changed()
                    line = json.dumps(mutated).encode() + (b"\n" if streamed else b"")
            changed_lines.append(line)
        any_selected = any(selected(o, where, streamed) for o in objects) or not (
            where.final is not None or where.equals
        )
        body = b"".join(changed_lines)
        if mutation.lines is not None and streamed and any_selected and changed_lines:
            reordered = b"".join(mutate_lines(changed_lines, mutation.lines))
            if reordered != body:
                self.proxy.changed()
            body = reordered
        if mutation.body is not None and any_selected:
            if body != mutation.body.encode():
                self.proxy.changed()
            body = mutation.body.encode()
        if mutation.content_type is not None and any_selected:
            kept = [(name, value) for name, value in headers if name.lower() != "content-type"]
            if dict((n.lower(), v) for n, v in headers).get("content-type") != mutation.content_type:
                self.proxy.changed()
            headers = [*kept, ("Content-Type", mutation.content_type)]
        status = self.mutated_status(upstream.status_code, mutation, where, objects)
        self.write_whole(status, headers, body)

    def write_whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def write_stream(
        self,
        status: int,
        headers: list[tuple[str, str]],
        upstream: httpx.Response,
        mutation: ResponseMutation | None,
        where: Where | None,
    ) -> None:
        """Pass an NDJSON stream on line by line (chunked), each object mutated as it comes."""
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pending = b""
        for chunk in upstream.iter_raw():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if complete:
                self.write_chunk(b"".join(self.mutated_line(line, mutation, where) + b"\n" for line in complete))
        if pending:
            self.write_chunk(self.mutated_line(pending, mutation, where))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def mutated_line(self, line: bytes, mutation: ResponseMutation | None, where: Where | None) -> bytes:
        if mutation is None or where is None:
            return line
        try:
            document = json.loads(line)
        except ValueError:
            return line
        if not selected(document, where, True):
            return line
        mutated = mutate_object(document, mutation)
        if mutated == document:
            return line
        self.proxy.changed()
        return json.dumps(mutated).encode()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
