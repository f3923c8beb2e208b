"""Thinking written by a real engine: the bundled SmolLM2 behind a Go template that opens `<think>` when
thinking is on, so what the model writes next is its thinking.

SmolLM2 (135M) was not trained to think and never closes the tag within a short answer, so all it writes
goes to `thinking`. The same prompt sent raw (greedy) shows that this is exactly the engine's text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import pytest
from support.models import SMOLLM2

from modelyard_conformance.launcher import ServerProcess

THINKER = "smol-thinks"
TEMPLATE = (
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ if .Think }}<think>\n{{ end }}"
)
QUESTION = "Why is the sky blue?"
# Seeded: each request evaluates its whole prompt (no reuse of the cache), so equal prompts give equal text.
GREEDY = {"temperature": 0, "num_predict": 16, "seed": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("thinking") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2}
    with ServerProcess(models, env) as server:
        body = {"model": THINKER, "from": SMOLLM2, "template": TEMPLATE, "stream": False}
        assert httpx.post(server.url + "/api/create", json=body, timeout=120).status_code == 200
        yield server


@pytest.fixture
def client(server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url, timeout=120)
    yield client
    client._client.close()


def raw(client: ollama.Client, *, thinking: bool) -> str:
    """What the engine writes, greedy, after the prompt the template renders (with the SYSTEM it inherits)."""
    shown = httpx.post(str(client._client.base_url) + "/api/show", json={"model": THINKER}, timeout=120).json()
    system = shown.get("system")
    prompt = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    prompt += f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n" + ("<think>\n" if thinking else "")
    # The same loaded model; think false, so the raw text is left as it is.
    return client.generate(model=THINKER, prompt=prompt, raw=True, think=False, options=GREEDY).response


def test_the_engines_words_land_in_thinking(client: ollama.Client) -> None:
    answer = client.chat(model=THINKER, messages=[{"role": "user", "content": QUESTION}], think=True, options=GREEDY)
    written = raw(client, thinking=True)
    assert written.strip()
    assert answer.message.thinking == written.strip()
    assert answer.message.content == ""
    assert answer.eval_count == 16


def test_streamed_thinking_keeps_its_logprobs(client: ollama.Client) -> None:
    chunks = list(
        client.chat(
            model=THINKER,
            messages=[{"role": "user", "content": QUESTION}],
            options=GREEDY,
            logprobs=True,
            stream=True,
        )  # no `think`: a model that can think does
    )
    thinking = "".join(chunk.message.thinking or "" for chunk in chunks)
    assert thinking and not "".join(chunk.message.content for chunk in chunks)
    tokens = "".join(entry.token for chunk in chunks for entry in chunk.logprobs or [])
    assert tokens.strip() == thinking  # every token's logprob, on the thinking chunks
    assert all(chunk.logprobs for chunk in chunks if chunk.message.thinking)


def test_think_false_is_an_ordinary_answer(client: ollama.Client) -> None:
    answer = client.generate(model=THINKER, prompt=QUESTION, think=False, options=GREEDY)
    assert answer.response == raw(client, thinking=False)
    assert not answer.thinking
