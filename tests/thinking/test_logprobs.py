"""Log probabilities from the real engine (llama.cpp on the bundled SmolLM2), through the official clients.

Greedy decoding (temperature 0) always picks the most likely token, so every token's logprob must equal
the first of its alternatives: that holds only if both come from the same full softmax over the step's
logits. The pieces' bytes must rebuild the text exactly, also where a character spans several tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from support.models import SMOLLM2

from modelyard_conformance.launcher import ServerProcess

# Seeded: every request evaluates its whole prompt (no cache reuse), so equal requests give equal logprobs.
GREEDY = {"temperature": 0, "num_predict": 12, "seed": 3}
# Raw text that SmolLM2 continues with more party emoji: each is three tokens (byte fallback), so a
# character spans token boundaries.
EMOJI_PROMPT = "Party time 🎉🎉🎉🎉"


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The batch engine's path: two requests at once from one context."""
    models = tmp_path_factory.mktemp("batched") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2, "OLLAMA_NUM_PARALLEL": "2"}
    with ServerProcess(models, env) as server:
        yield server


@pytest.fixture(params=["single", "batched"])
def server(request: pytest.FixtureRequest, llama_server: ServerProcess) -> ServerProcess:
    return llama_server if request.param == "single" else request.getfixturevalue("batched_server")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url)
    yield client
    client._client.close()


def check_greedy(entries: list[dict], top: int) -> None:
    """Each token is the top-1 of its own step, logprobs are <= 0, the top list is a part of one distribution."""
    assert entries
    for entry in entries:
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == top
        assert entry["logprob"] <= 0
        assert alternatives[0]["token"] == entry["token"]
        assert math.isclose(entry["logprob"], alternatives[0]["logprob"], abs_tol=1e-9)
        values = [alternative["logprob"] for alternative in alternatives]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(value) for value in values) <= 1 + 1e-9


def joined_bytes(entries: list[dict]) -> bytes:
    return b"".join(bytes(entry["bytes"]) for entry in entries)


def test_generate_with_the_official_client(client: ollama.Client) -> None:
    answer = client.generate(
        model=SMOLLM2, prompt="Say hello in French.", logprobs=True, top_logprobs=3, options=GREEDY
    )
    entries = [entry.model_dump() for entry in answer.logprobs or []]
    check_greedy(entries, 3)
    assert len(entries) == answer.eval_count == 12
    assert "".join(entry["token"] for entry in entries) == answer.response  # the client keeps no `bytes`


def test_chat_stream_puts_each_tokens_logprobs_on_its_chunk(ollama_client: ollama.Client) -> None:
    chunks = list(
        ollama_client.chat(
            model=SMOLLM2,
            messages=[{"role": "user", "content": "Name three colors."}],
            logprobs=True,
            top_logprobs=2,
            options=GREEDY,
            stream=True,
        )
    )
    content_chunks = [chunk for chunk in chunks if chunk.message.content]
    assert content_chunks
    for chunk in content_chunks:  # the tokens of a chunk are exactly its text
        entries = [entry.model_dump() for entry in chunk.logprobs or []]
        assert "".join(entry["token"] for entry in entries) == chunk.message.content
        check_greedy(entries, 2)
    assert not chunks[-1].logprobs  # the final chunk carries none when streaming


def test_a_character_split_over_tokens_keeps_its_bytes(server: ServerProcess) -> None:
    body = {"model": SMOLLM2, "prompt": EMOJI_PROMPT, "raw": True, "logprobs": True, "options": GREEDY}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as response:
        chunks = [httpx.Response(200, content=line).json() for line in response.iter_lines() if line]
    answer = httpx.post(server.url + "/api/generate", json={**body, "stream": False}, timeout=120).json()
    entries = answer["logprobs"]
    assert "🎉" in answer["response"]
    pieces = [bytes(entry["bytes"]) for entry in entries]
    assert any(not _is_utf8(piece) for piece in pieces)  # a token that is a part of a character
    assert joined_bytes(entries).decode("utf-8", errors="replace") == answer["response"]
    # Streamed, the parts wait for the whole character: each chunk's tokens decode to its text.
    streamed = [chunk for chunk in chunks if not chunk["done"]]
    assert all(joined_bytes(chunk["logprobs"]).decode() == chunk["response"] for chunk in streamed)
    assert [entry for chunk in streamed for entry in chunk["logprobs"]] == entries[
        : sum(len(c["logprobs"]) for c in streamed)
    ]


def _is_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_without_logprobs_there_are_none(llama_server: ServerProcess) -> None:
    answer = httpx.post(
        llama_server.url + "/api/generate",
        json={"model": SMOLLM2, "prompt": "hi", "stream": False, "options": GREEDY},
        timeout=120,
    ).json()
    assert "logprobs" not in answer


def test_top_logprobs_out_of_range_is_ollamas_400(llama_server: ServerProcess) -> None:
    response = httpx.post(
        llama_server.url + "/api/chat",
        json={"model": SMOLLM2, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
        timeout=120,
    )
    assert response.status_code == 400
    assert response.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_openai_chat_completions_in_openais_shape(llama_server: ServerProcess) -> None:
    with openai.OpenAI(base_url=llama_server.url + "/v1", api_key="unused", max_retries=0) as client:
        messages = [{"role": "user", "content": "Say hello in French."}]
        completion = client.chat.completions.create(
            model=SMOLLM2, messages=messages, logprobs=True, top_logprobs=3, temperature=0, max_tokens=12, seed=3
        )
        stream = client.chat.completions.create(
            model=SMOLLM2,
            messages=messages,
            logprobs=True,
            top_logprobs=3,
            temperature=0,
            max_tokens=12,
            seed=3,
            stream=True,
        )
        streamed = [
            entry.model_dump()
            for chunk in stream
            for choice in chunk.choices
            for entry in (choice.logprobs.content or [] if choice.logprobs else [])
        ]
    choice = completion.choices[0]
    entries = [entry.model_dump() for entry in choice.logprobs.content]
    check_greedy(entries, 3)
    assert joined_bytes(entries).decode() == choice.message.content
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in entries]
    assert all(math.isclose(a["logprob"], b["logprob"], abs_tol=1e-6) for a, b in zip(streamed, entries, strict=True))


def test_openai_legacy_completions(llama_server: ServerProcess) -> None:
    with openai.OpenAI(base_url=llama_server.url + "/v1", api_key="unused", max_retries=0) as client:
        completion = client.completions.create(
            model=SMOLLM2, prompt="The capital of France is", logprobs=2, temperature=0, max_tokens=6, seed=3
        )
    logprobs = completion.choices[0].logprobs
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs) == 6
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert logprob <= 0 and len(top) == 2 and math.isclose(top[token], logprob, abs_tol=1e-9)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]


def test_single_and_batched_agree(llama_server: ServerProcess, batched_server: ServerProcess) -> None:
    """The same greedy request on both paths: the same tokens, logprobs equal to llama.cpp's batched numerics."""
    body = {"model": SMOLLM2, "prompt": "Why is the sky blue?", "stream": False, "logprobs": True, "options": GREEDY}
    single = httpx.post(llama_server.url + "/api/generate", json=body, timeout=120).json()["logprobs"]
    batched = httpx.post(batched_server.url + "/api/generate", json=body, timeout=120).json()["logprobs"]
    assert [entry["token"] for entry in single] == [entry["token"] for entry in batched]
    assert all(math.isclose(a["logprob"], b["logprob"], abs_tol=1e-3) for a, b in zip(single, batched, strict=True))
