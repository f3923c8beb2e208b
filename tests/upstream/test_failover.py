"""Failures of upstreams as a router's clients see them: an upstream killed in the middle of a run, silent or
slow ones, error answers, none healthy, and a client that leaves. Real servers on loopback throughout."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import ollama
import pytest
from routing import HEALTH, SMOLLM2, StubUpstream, echo_upstream, pool, router

from modelyard_conformance import launcher

MODEL = "pooled"
WORDS = " ".join(f"w{index}" for index in range(40))  # the echo upstream's answer: 40 words, one chunk each


def chat_body(content: str = WORDS, stream: bool = True, model: str = MODEL) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


def stream_lines(
    url: str, started: threading.Event | None = None, model: str = MODEL, content: str = WORDS
) -> list[dict[str, object]]:
    """Every NDJSON line of one streamed chat through `url`; `started` is set at the first one."""
    lines = []
    with httpx.stream("POST", url + "/api/chat", json=chat_body(content, model=model), timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(json.loads(line))
            if started is not None:
                started.set()
    return lines


def run_streams(
    url: str, count: int, on_started: threading.Event | None = None, content: str = WORDS
) -> list[list[dict[str, object]]]:
    """`count` concurrent streams; `on_started` is set once every one of them has its first line."""
    results: list[list[dict[str, object]]] = [[] for _ in range(count)]
    firsts = [threading.Event() for _ in range(count)]

    def one(index: int) -> None:
        results[index] = stream_lines(url, firsts[index], content=content)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    if on_started is not None:
        for first in firsts:
            assert first.wait(30), "a stream never started"
        on_started.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a stream hangs"
    return results


def served_by(server: launcher.ServerProcess) -> bool:
    """Whether the upstream has run the model (echo keeps it loaded after a request)."""
    return bool(httpx.get(server.url + "/api/ps").json()["models"])


def test_killing_an_upstream_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first, second = echo_upstream(tmp_path / "a", delay=0.05), echo_upstream(tmp_path / "b", delay=0.05)
    hub = router(tmp_path / "router", pool(MODEL, first.url, second.url, upstream_model=SMOLLM2) + HEALTH)
    with first, second, hub:  # started together, then waited for
        everyone_started = threading.Event()
        kill = threading.Thread(target=lambda: everyone_started.wait(60) and first.process.kill())
        kill.start()
        streams = run_streams(hub.url, 8, everyone_started)
        kill.join()
        finished = [lines for lines in streams if lines[-1].get("done")]
        broken = [lines for lines in streams if "error" in lines[-1]]
        # Least in flight spread the eight over both; those on the killed one end with an error line, last.
        assert len(finished) + len(broken) == 8 and finished and broken
        for lines in broken:
            assert "upstream " + first.url in str(lines[-1]["error"])
            assert not any("error" in line for line in lines[:-1]) and len(lines) > 1
        for lines in finished:
            assert "".join(str(line["message"]["content"]) for line in lines) == WORDS  # type: ignore[index]

        # Requests that start now all go to the live upstream.
        with ollama.Client(host=hub.url) as client:
            for _ in range(4):
                answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "still there?"}])
                assert answer.message.content == "still there?"

        # The killed upstream comes back on its port; the probes see it and the router uses it again.
        monkeypatch.setattr(launcher, "free_port", lambda: first.port)
        with echo_upstream(tmp_path / "a-again", delay=0.05) as revived:
            deadline = time.monotonic() + 30
            while not served_by(revived) and time.monotonic() < deadline:
                run_streams(hub.url, 4, content="back?")
            assert served_by(revived), "the router never used the upstream again"


ERRORS = {  # pool -> what its stub upstream answers, and what the router's client must get
    "e400": (400, b'{"error": "invalid options"}', "invalid options"),
    "e404": (404, b'{"error": "model \'x\' not found"}', "model 'x' not found"),
    "e500": (500, b'{"error": "llama runner process has terminated"}', "llama runner process has terminated"),
    "e500-text": (500, b"Internal Server Error", "Internal Server Error"),
    # The same through the openai kind: OpenAI's error body.
    "oa-e400": (
        400,
        b'{"error": {"message": "max_tokens is too large", "type": "BadRequestError"}}',
        "max_tokens is too large",
    ),
    "oa-e404": (
        404,
        b'{"error": {"message": "The model `x` does not exist.", "code": 404}}',
        "The model `x` does not exist.",
    ),
    "oa-e500": (500, b'{"detail": "CUDA out of memory"}', "CUDA out of memory"),
}
BUSY = b'{"error": "server busy, please try again.  maximum pending requests exceeded"}'


class Hub:
    """One router with a pool per failure, and its upstreams (started together: each start takes seconds)."""

    def __init__(self, tmp: Path, silent: str, quiet: str) -> None:
        self.stubs = {name: StubUpstream(status, body, name) for name, (status, body, _) in ERRORS.items()}
        self.busy = StubUpstream(503, BUSY, "none")
        self.silent = silent
        self.refused = f"http://127.0.0.1:{launcher.free_port()}"
        self.echo = echo_upstream(tmp / "echo")
        self.slow = echo_upstream(tmp / "slow", delay=3)  # a word, then 3 s of silence
        # One request at a time, none queued: a direct request gets 503 while the router's is running.
        self.single = echo_upstream(tmp / "single", delay=0.05, OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="0")
        kinds = {name: "openai" if name.startswith("oa-") else "ollama" for name in self.stubs}
        config = "".join(pool(name, stub.url, kind=kinds[name]) for name, stub in self.stubs.items())
        config += pool("none", self.busy.url, self.refused)
        config += pool("silent", silent, timeout=0.5)
        config += pool("skip", quiet, self.refused, self.echo.url, timeout=0.5, upstream_model=SMOLLM2)
        config += pool("stall", self.slow.url, timeout=1, upstream_model=SMOLLM2)
        config += pool("single", self.single.url, upstream_model=SMOLLM2)
        self.router = router(tmp / "router", config)
        self.router_config = tmp / "router" / "upstream.toml"
        self.servers = [self.echo, self.slow, self.single, self.router]

    def __enter__(self) -> Hub:
        for server in self.servers:
            server.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()
        for stub in [*self.stubs.values(), self.busy]:
            stub.close()

    @property
    def url(self) -> str:
        return self.router.url


def silent_port(stack: ExitStack) -> str:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    # Two silent ports: the one the failover pool skips is ejected by then, the timeout pool's must not be.
    with ExitStack() as stack:
        yield stack.enter_context(Hub(tmp_path_factory.mktemp("hub"), silent_port(stack), silent_port(stack)))


def chat(hub: Hub, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "over here"}], "stream": False}
    return httpx.post(hub.url + "/api/chat", json=body, timeout=30)


def test_an_upstream_that_refuses_or_stays_silent_is_skipped_before_the_first_byte(hub):
    for _ in range(3):
        answer = chat(hub, "skip")
        assert (answer.status_code, answer.json()["message"]["content"]) == (200, "over here")


def test_a_silent_upstream_hits_the_timeout(hub):
    answer = chat(hub, "silent")
    assert (answer.status_code, answer.json()) == (504, {"error": f"upstream {hub.silent} did not answer within 0.5 s"})


def test_an_upstream_that_stalls_mid_stream_ends_it_with_an_error_line(hub):
    lines = stream_lines(hub.url, model="stall")
    assert lines[0]["message"] == {"role": "assistant", "content": "w0"}
    assert lines[-1] == {"error": f"upstream {hub.slow.url} stopped answering: nothing for 1 s"}


@pytest.mark.parametrize("name", list(ERRORS))
def test_an_upstream_error_answer_becomes_the_same_ollama_error(hub, name):
    status, _, message = ERRORS[name]
    asked = hub.stubs[name].requests
    answer = chat(hub, name)
    assert (answer.status_code, answer.json()) == (status, {"error": message})
    assert hub.stubs[name].requests == asked + 1  # it answered: no other upstream is asked, nor is it asked again


def test_none_healthy_is_a_503_with_each_reason(hub):
    answer = chat(hub, "none")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error.startswith("no healthy upstream for model 'none' (")
    assert f"{hub.busy.url}: upstream {hub.busy.url} answered 503: server busy" in error
    assert f"{hub.refused}: " in error and "ConnectError" in error


def test_a_client_that_leaves_closes_the_upstream_request(hub):
    # A direct request to the single-slot upstream succeeds only once the router has closed the abandoned
    # one (which would otherwise run for 100 s).
    long = " ".join(["word"] * 2000)
    with httpx.stream("POST", hub.url + "/api/chat", json=chat_body(long, model="single"), timeout=30) as response:
        assert json.loads(next(response.iter_lines()))["message"]["content"] == "word"
    direct = {"model": SMOLLM2, "messages": [{"role": "user", "content": "free?"}], "stream": False}
    deadline = time.monotonic() + 20
    answer = httpx.post(hub.single.url + "/api/chat", json=direct, timeout=30)
    while answer.status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = httpx.post(hub.single.url + "/api/chat", json=direct, timeout=30)
    assert answer.status_code == 200, answer.text


def test_sighup_reloads_the_pools_and_running_streams_go_on(hub):
    config = hub.router_config.read_text()
    started = threading.Event()
    answer: list[list[dict[str, object]]] = []
    long = " ".join(["word"] * 300)  # 6 s of streaming: running while the file is reloaded
    reader = threading.Thread(target=lambda: answer.append(stream_lines(hub.url, started, "skip", long)))
    reader.start()
    assert started.wait(30)
    try:
        hub.router_config.write_text(config + pool("added", hub.echo.url, upstream_model=SMOLLM2))
        hub.router.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "added:latest" not in tag_names(hub):
            time.sleep(0.1)
        assert "added:latest" in tag_names(hub)
        reader.join(60)
        assert answer[0][-1]["done"] is True and len(answer[0]) == 301  # whole, though the file was reloaded
        assert chat(hub, "added").json()["message"]["content"] == "over here"
    finally:
        hub.router_config.write_text(config)
        hub.router.process.send_signal(signal.SIGHUP)


def tag_names(hub: Hub) -> list[str]:
    return [model["name"] for model in httpx.get(hub.url + "/api/tags").json()["models"]]
