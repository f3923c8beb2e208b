"""Fixtures of the upstream tests (helpers in routing.py: a conftest module name is shared by every folder)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from routing import StubUpstream


@pytest.fixture
def stub() -> Iterator[Callable[[int, bytes], StubUpstream]]:
    stubs: list[StubUpstream] = []

    def make(status: int, body: bytes) -> StubUpstream:
        stubs.append(StubUpstream(status, body))
        return stubs[-1]

    yield make
    for made in stubs:
        made.close()


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """A port that accepts connections and never answers (the kernel's backlog does the accepting)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
