"""OLLAMA_MAX_QUEUE through real HTTP and the official client: while one request runs, one more may wait;
the others are turned away at once with Ollama's 503, and the waiting one is served when the first ends.

The server is this module's own: the echo backend, slowed down so that the first request is still
streaming when the others arrive, and a queue of one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import ollama
import pytest

from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"  # two spaces, as Ollama
LATECOMERS = 4
# 400 words, 0.05 s each: the first request streams for 20 s unless its client leaves earlier (it does).
LONG_PROMPT = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("scheduling") / "models"
    env = {
        "MODELYARD_BACKENDS": "echo",
        "MODELYARD_BUNDLED_MODELS": MODEL,
        "MODELYARD_ECHO_DELAY": "0.05",
        "OLLAMA_MAX_QUEUE": "1",
    }
    with ServerProcess(models, env) as running:
        yield running


def short_generate(url: str) -> str | ollama.ResponseError:
    client = ollama.Client(host=url)
    try:
        return client.generate(model=MODEL, prompt="hello there", stream=False).response
    except ollama.ResponseError as error:
        return error
    finally:
        client._client.close()


def test_requests_beyond_the_queue_get_ollamas_503(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)
    stream = client.generate(model=MODEL, prompt=LONG_PROMPT, stream=True)
    try:
        first = next(stream)  # the model is loaded and leased to this request
        assert first.done is False
        with ThreadPoolExecutor(LATECOMERS) as pool:
            pending = {pool.submit(short_generate, server.url) for _ in range(LATECOMERS)}
            refused = []
            # All but one are refused while the stream runs; the one that waits is served after it.
            while len(refused) < LATECOMERS - 1:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                refused += [future.result() for future in done]
            assert len(pending) == 1
            for error in refused:
                assert isinstance(error, ollama.ResponseError), error
                assert error.status_code == 503
                assert error.error == QUEUE_FULL
            stream.close()  # the client leaves: the waiting request gets the model
            (waiting,) = pending
            assert waiting.result() == "hello there"
    finally:
        stream.close()
        client._client.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OLLAMA_NUM_PARALLEL", "two"), ("OLLAMA_MAX_LOADED_MODELS", "-1"), ("OLLAMA_MAX_QUEUE", "1.5")],
)
def test_serve_stops_on_an_invalid_scheduling_setting(variable: str, value: str, tmp_path) -> None:
    env = {**os.environ, variable: value, "MODELYARD_MODELS": str(tmp_path), "OLLAMA_HOST": "127.0.0.1:0"}
    serve = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert serve.returncode == 1
    assert f"Error: invalid {variable} {value!r}: expected a whole number, 0 or more" in serve.stderr
