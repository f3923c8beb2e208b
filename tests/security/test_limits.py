"""Slow clients cannot hold connections: a request's headers must arrive within MODELYARD_HEADER_TIMEOUT
(however steadily they trickle in), and an idle keep-alive connection closes after MODELYARD_IDLE_TIMEOUT.
A client that sends its request in time is served as usual."""

from __future__ import annotations

import json
import socket
import time

import pytest

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
