"""Graceful shutdown as a client sees it: at SIGTERM the server stops taking connections, a stream that
ends within MODELYARD_SHUTDOWN_TIMEOUT ends normally, one that runs past it gets a last `{"error"}` line,
a request still waiting for its model gets 503, and the models are unloaded before the process exits."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from typing import ClassVar

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from modelyard.api.metrics import MeteredScheduler
from modelyard.api.shutdown import Drain
from modelyard.config import Settings
from modelyard.errors import Unavailable
from modelyard.plugin import Backend, LoadedModel, LoadSpec, ModelView
from modelyard.runtime.contract import NoSettings
from modelyard.runtime.options import Options
from modelyard.server import create_app
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
GRACE = 3.0  # seconds; echo takes 0.05 s a word


class Stream(threading.Thread):
    """A streamed generate read line by line in a thread."""

    def __init__(self, url: str, model: str, words: int) -> None:
        super().__init__()
        self.url, self.model, self.words = url, model, words
        self.lines: list[dict] = []
        self.status: int | None = None

    def run(self) -> None:
        body = {"model": self.model, "prompt": " ".join(["word"] * self.words)}
        with httpx.stream("POST", self.url + "/api/generate", json=body, timeout=60) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                self.lines.append(json.loads(line))


class FakeModel(LoadedModel):
    def __init__(self, backend: FakeBackend, name: str) -> None:
        self.backend, self.name = backend, name

    async def close(self) -> None:
        self.backend.log.append(f"close {self.name}")


class FakeBackend(Backend):
    name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        super().__init__(NoSettings())
        self.log: list[str] = []

    def serves(self, model: ModelView) -> bool:
        return True

    async def load(self, model: ModelView, spec: LoadSpec) -> FakeModel:
        self.log.append(f"load {model.name}")
        return FakeModel(self, model.name)


def view(name: str) -> ModelView:
    return ModelView(name=name, format="fake", digest="sha256:1", size=0)


def options() -> Options:
    return Options(num_ctx=2048)


def poll(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the state"
        time.sleep(0.02)


def waiting_requests(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "modelyard:num_requests_waiting":
            return sum(sample.value for sample in family.samples)
    return 0.0


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/", timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_sigterm_lets_short_streams_finish_and_ends_the_rest_with_an_error_line(tmp_path):
    env = {
        "MODELYARD_BACKENDS": "echo",
        "MODELYARD_BUNDLED_MODELS": MODEL,
        "MODELYARD_ECHO_DELAY": "0.05",
        "MODELYARD_SHUTDOWN_TIMEOUT": str(GRACE),
    }
    with ServerProcess(tmp_path / "models", env) as server:
        assert httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": "other"}).status_code == 200
        long = Stream(server.url, MODEL, words=400)  # 20 s: runs past the deadline
        short = Stream(server.url, "other", words=20)  # 1 s on another model: finishes within it
        long.start()
        poll(lambda: len(long.lines) >= 2)
        short.start()
        poll(lambda: len(short.lines) >= 2)
        waiting: dict[str, httpx.Response] = {}
        queued = threading.Thread(  # echo serves one request a model at a time: this one waits behind `long`
            target=lambda: waiting.setdefault(
                "answer",
                httpx.post(
                    server.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}, timeout=60
                ),
            )
        )
        queued.start()
        poll(lambda: waiting_requests(server.url) == 1)

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        poll(lambda: refused(server.url))
        assert long.is_alive()  # new connections are refused while running streams go on
        for thread in (long, short, queued):
            thread.join(timeout=60)
        drained = time.monotonic() - signalled
        server.process.wait(timeout=60)
        log = server.log()

    assert short.lines[-1]["done"] is True and short.lines[-1]["done_reason"] == "stop"
    assert "error" not in json.dumps(short.lines)
    assert long.status == 200 and long.lines[-1] == {"error": "server is shutting down"}
    assert all("error" not in line for line in long.lines[:-1]) and len(long.lines) < 400
    assert waiting["answer"].status_code == 503, waiting["answer"].text
    assert waiting["answer"].json() == {"error": "server is shutting down"}
    assert "shutting down: running requests have 3 s to finish" in log
    assert "models unloaded" in log
    assert drained >= GRACE - 0.5  # the long stream was cut at the deadline, not at the signal


def test_requests_waiting_at_the_deadline_are_turned_away_and_their_place_is_freed():
    """The scheduler side, with a fake backend: waits begun before and after the signal both end in 503,
    and a lease granted before the deadline is kept."""

    async def scenario() -> None:
        drain = Drain(0.2)
        scheduler = MeteredScheduler(300.0, drain=drain)
        backend = FakeBackend()  # one request a model at a time (num_parallel 1)
        running = await scheduler.acquire(view("m"), backend, options(), None)
        before = asyncio.ensure_future(scheduler.acquire(view("m"), backend, options(), None))
        await asyncio.sleep(0.01)
        drain.begin()
        after = asyncio.ensure_future(scheduler.acquire(view("m"), backend, options(), None))
        for waiting in (before, after):
            with pytest.raises(Unavailable, match="server is shutting down"):
                await waiting
        assert scheduler.waiting == 0 and scheduler.waiting_by_model == {}
        with pytest.raises(Unavailable):
            await scheduler.acquire(view("n"), backend, options(), None)  # nothing starts after the deadline
        await running.release()
        await scheduler.close()
        assert backend.log == ["load m", "close m"]

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_after_the_deadline_each_api_answers_503_in_its_own_envelope(tmp_path):
    """The openai SDK reads OpenAI's envelope, Anthropic's SDK Anthropic's: a 503 at shutdown is no exception."""
    settings = Settings(models=tmp_path / "models", backends=("echo",), bundled_models=(MODEL,), shutdown_timeout=0)
    app = create_app(settings)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

    async def after_the_deadline() -> list[httpx.Response]:
        async with AsyncTestClient(app) as client:
            app.state.drain.begin()
            await app.state.drain.wait_expired()
            return [
                await client.post("/api/chat", json=chat),
                await client.post("/v1/chat/completions", json=chat),
                await client.post("/v1/messages", json={**chat, "max_tokens": 4}),
            ]

    ollama_answer, openai_answer, anthropic_answer = asyncio.run(after_the_deadline())
    assert [r.status_code for r in (ollama_answer, openai_answer, anthropic_answer)] == [503, 503, 503]
    assert ollama_answer.json() == {"error": "server is shutting down"}
    assert openai_answer.json()["error"]["message"] == "server is shutting down"
    assert set(openai_answer.json()["error"]) == {"message", "type", "param", "code"}
    assert anthropic_answer.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "server is shutting down"},
    }
