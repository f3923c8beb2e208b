"""Slow clients cannot hold connections: a request's headers must arrive within MODELYARD_HEADER_TIMEOUT
(however steadily they trickle in), its body within MODELYARD_BODY_TIMEOUT (408; an upload may only not
stall), a client that stops reading an answer is cut off after MODELYARD_WRITE_TIMEOUT (its place on the
model freed), and an idle keep-alive connection closes after MODELYARD_IDLE_TIMEOUT. A client that sends
its request in time is served as usual."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.api.auth import add_key
from modelyard.config import Settings
from modelyard.server import create_app
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"


@pytest.fixture
def server(observed_server: ServerProcess) -> ServerProcess:
    """MODELYARD_HEADER_TIMEOUT and MODELYARD_IDLE_TIMEOUT are 1 s there, and echo takes 0.02 s a word."""
    return observed_server


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed the connection (reads end, or writes are refused)."""
    try:
        return connection.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_headers_trickled_in_a_byte_at_a_time_are_cut_off(server):
    with connect(server) as connection:
        connection.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n")
        connection.settimeout(0.1)
        deadline = time.monotonic() + 30  # only stops a hung test
        cut = False
        while not cut and time.monotonic() < deadline:
            try:
                connection.sendall(b"X")  # a header that never ends, one byte a tenth of a second
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            cut = closed_by_server(connection)
        assert cut, "the server kept a connection whose headers never finished"


def test_a_request_sent_in_time_is_served_and_an_idle_connection_then_closes(server):
    with connect(server) as connection:
        connection.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        connection.settimeout(30)
        while True:  # the rest of the answer, then the close of the idle connection
            data = connection.recv(65536)
            if not data:
                break
        # recv returned b"": the server closed the kept-alive connection once it was idle.


def test_a_long_answer_is_not_cut_by_the_header_deadline(server):
    prompt = " ".join(["word"] * 150)  # 3 s: three times the header deadline
    body = json.dumps({"model": MODEL, "prompt": prompt, "options": {"num_predict": 150}}).encode()
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with connect(server) as connection:
        connection.sendall(request)
        received = b""
        while data := connection.recv(65536):
            received += data
    assert received.startswith(b"HTTP/1.1 200")
    assert b'"done":true' in received


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Echo without delay (it writes as fast as it can), and 1 s body and write timeouts."""
    models = tmp_path_factory.mktemp("impatient") / "models"
    env = {
        "MODELYARD_BACKENDS": "echo",
        "MODELYARD_BUNDLED_MODELS": MODEL,
        "MODELYARD_BODY_TIMEOUT": "1",
        "MODELYARD_WRITE_TIMEOUT": "1",
    }
    with ServerProcess(models, env) as running:
        yield running


def read_all(connection: socket.socket) -> bytes:
    received = b""
    try:
        while data := connection.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize(
    ("path", "envelope"),
    [("/api/generate", "ollama"), ("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")],
)
def test_a_body_that_trickles_in_gets_408_and_the_connection_closes(impatient_server, path, envelope):
    with connect(impatient_server) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"model": '  # 10 of the 100 bytes promised, then nothing
        )
        answer = read_all(connection)  # ends: the server closes the connection after its answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)
    message = {"ollama": lambda: error["error"], "openai": lambda: error["error"]["message"]}.get(
        envelope, lambda: error["error"]["message"]
    )()
    assert "MODELYARD_BODY_TIMEOUT" in message
    if envelope == "anthropic":
        assert error["type"] == "error"
    if envelope == "openai":
        assert set(error["error"]) == {"message", "type", "param", "code"}


def test_an_upload_may_take_longer_than_the_body_timeout_while_it_keeps_moving(impatient_server):
    chunks = [bytes([n]) * 1000 for n in range(6)]
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()

    def trickle() -> Iterator[bytes]:
        for chunk in chunks:  # 6 x 0.4 s: more than the 1 s timeout in all, never 1 s without bytes
            time.sleep(0.4)
            yield chunk

    uploaded = httpx.post(f"{impatient_server.url}/api/blobs/{digest}", content=trickle(), timeout=60)
    assert uploaded.status_code == 201, uploaded.text
    assert httpx.head(f"{impatient_server.url}/api/blobs/{digest}").status_code == 200


def running_requests(server: ServerProcess) -> float:
    families = text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
    return sum(s.value for f in families if f.name == "modelyard:num_requests_running" for s in f.samples)


def test_a_client_that_stops_reading_is_cut_off_and_its_place_freed(impatient_server):
    # Far more than the sockets' buffers hold: about 16 MB of answer, in 800 chunks of 20 kB.
    prompt = " ".join(f"{n:04d}" + "x" * 20_000 for n in range(800))
    body = json.dumps({"model": MODEL, "prompt": prompt, "options": {"num_ctx": 2048}}).encode()
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffer fills
    connection.settimeout(30)
    with connection:
        connection.connect(("127.0.0.1", impatient_server.port))
        connection.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        first = connection.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        # Now read nothing: once the buffers are full, the server waits 1 s, then cuts the connection.
        deadline = time.monotonic() + 60  # only stops a hung test
        while "read nothing of its answer for 1 s" not in impatient_server.log_path.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while running_requests(impatient_server) > 0:  # the stream is ended, its lease released, unread
            assert time.monotonic() < deadline
            time.sleep(0.05)
        received = first + read_all(connection)
    assert b'"done":true' not in received  # it was cut off, not finished
    assert httpx.post(
        impatient_server.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}, timeout=60
    ).json()["done"]


def test_a_body_the_key_check_reads_times_out_too(tmp_path):
    """A key limited to some models has its body read before routing: a stalled one gets the same 408."""
    key, _ = add_key(tmp_path / "keys.json", "limited", models=["smollm2"], scopes=["inference"])
    settings = Settings(
        models=tmp_path / "models",
        backends=("echo",),
        bundled_models=(),
        api_keys=tmp_path / "keys.json",
        body_timeout=0.2,
    )
    app = create_app(settings)
    sent: list[dict] = []

    async def stalled_body() -> dict:
        await asyncio.sleep(3600)  # the client sent its headers and nothing more
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"localhost"), (b"authorization", f"Bearer {key}".encode()), (b"content-length", b"100")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
    }
    asyncio.run(app(scope, stalled_body, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert "MODELYARD_BODY_TIMEOUT" in error["message"] and set(error) == {"message", "type", "param", "code"}
