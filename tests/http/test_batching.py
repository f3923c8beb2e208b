"""Several requests at once on one loaded llama.cpp model (OLLAMA_NUM_PARALLEL=4), through the official client.

The server batches them: every engine step decodes one token of each running stream. Nothing here is timed:
the tests check what a client sees (the answers, their order of arrival), that a client that goes away
frees its sequence for the next request while the others keep running, that a conversation's next turn and
a shared system prompt are taken from the cache (the prefix cache counters of /metrics), and that
concurrent embed calls are answered as each alone.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
PARALLEL = 4
PROMPTS = [
    "Why is the sky blue?",
    "Tell me about the moon.",
    "Write a story about the sea.",
    "Explain how bread is made.",
]
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 12}
# A system prompt long enough that its reuse cannot be mistaken for the chat template's few shared tokens.
SYSTEM = (
    "You are a patient assistant for a public library. You answer questions about opening hours, borrowing "
    "rules, late fees, reading groups, the children's corner, printing, the study rooms and the local history "
    "archive. You answer in two short sentences, politely, and you never invent a rule the library does not have."
)
LONG = {"num_predict": 3000, "temperature": 1.0}


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("batching") / "models"
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL, "OLLAMA_NUM_PARALLEL": str(PARALLEL)}
    with ServerProcess(models, env) as server:
        yield server


def test_concurrent_streams_answer_as_each_request_alone(batching_server):
    async def scenario() -> tuple[list[str], list[str], list[list[str]]]:
        client = ollama.AsyncClient(host=batching_server.url)
        try:
            alone = [(await client.generate(model=MODEL, prompt=p, options=GREEDY)).response for p in PROMPTS]
            arrivals: list[list[str]] = []  # which stream delivered each chunk, and whether it was the last

            async def stream(index: int, prompt: str) -> str:
                text = ""
                async for part in await client.generate(model=MODEL, prompt=prompt, options=GREEDY, stream=True):
                    text += part.response
                    arrivals.append([str(index), "done" if part.done else ""])
                return text

            together = await asyncio.gather(*(stream(i, p) for i, p in enumerate(PROMPTS)))
            return alone, together, arrivals
        finally:
            await client.close()

    alone, together, arrivals = asyncio.run(scenario())
    # Each sequence has its own cache stream, so its sums run as alone: the same greedy text.
    assert together == alone
    assert all(alone)
    # They ran at once: every stream delivered text before the first of them finished.
    first_done = next(i for i, (_, state) in enumerate(arrivals) if state == "done")
    assert {index for index, _ in arrivals[:first_done]} == {str(i) for i in range(len(PROMPTS))}


def test_format_and_stop_hold_for_each_batched_request(batching_server):
    async def scenario() -> list[ollama.GenerateResponse]:
        client = ollama.AsyncClient(host=batching_server.url)
        try:
            return await asyncio.gather(
                client.generate(model=MODEL, prompt="A person as JSON.", format="json", options={"num_predict": 48}),
                client.generate(model=MODEL, prompt="Count: 1, 2, 3,", options={"stop": ["5"], "num_predict": 24}),
                client.generate(model=MODEL, prompt="Tell me a story.", options={"num_predict": 5}),
            )
        finally:
            await client.close()

    as_json, counted, short = asyncio.run(scenario())
    assert as_json.response.lstrip().startswith("{")
    assert "5" not in counted.response
    assert short.eval_count == 5 and short.done_reason == "length"


def test_a_stream_that_goes_away_frees_its_sequence_while_others_run(batching_server):
    """Four long streams fill the four sequences; one client leaves; a fifth request then runs to its end
    while the three others are still generating."""
    url = batching_server.url + "/api/generate"
    body = {"model": MODEL, "prompt": "Tell me a very long story about dragons.", "options": LONG}
    still_running = threading.Event()
    stop_others = threading.Event()
    others_done: list[bool] = []

    def keep_streaming(started: threading.Barrier) -> None:
        with httpx.Client(timeout=600) as client, client.stream("POST", url, json=body) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines))["done"] is False
            started.wait()
            for line in lines:
                if json.loads(line)["done"]:
                    others_done.append(True)
                    return
                still_running.set()
                if stop_others.is_set():
                    return

    started = threading.Barrier(4)
    threads = [threading.Thread(target=keep_streaming, args=(started,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    with httpx.Client(timeout=600) as client, client.stream("POST", url, json=body) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        started.wait()
    # The dropped stream's sequence is free: the fifth request is admitted and finishes.
    fifth = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    answer = httpx.post(url, json=fifth, timeout=600).json()
    assert answer["done"] is True and answer["eval_count"] == 3
    still_running.clear()
    assert still_running.wait(timeout=600)  # the three long streams still produce tokens
    stop_others.set()
    for thread in threads:
        thread.join()
    assert not others_done


def test_non_streamed_requests_that_go_away_free_their_sequences(batching_server):
    url = batching_server.url + "/api/generate"
    probe = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    httpx.post(url, json=probe, timeout=600)  # loaded, so that the four below start at once
    payload = json.dumps(
        {"model": MODEL, "prompt": "Tell me a very long story.", "stream": False, "options": LONG}
    ).encode()
    host, port = batching_server.url.removeprefix("http://").split(":")
    connections = []
    for _ in range(PARALLEL):  # every sequence taken by a request whose answer nobody will read
        connection = socket.create_connection((host, int(port)))
        connection.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        connections.append(connection)
    time.sleep(1.0)  # generation is under way
    for connection in connections:
        connection.close()
    # Were any of the four still holding its sequence, this one would wait for 3000 tokens.
    answer = httpx.post(url, json={**probe, "options": {"num_predict": 2}}, timeout=600).json()
    assert answer["eval_count"] == 2


def test_ps_lists_the_batched_model_with_its_per_request_context(batching_server):
    client = ollama.Client(host=batching_server.url)
    try:
        client.generate(model=MODEL, prompt="hi", options={"num_predict": 1, "num_ctx": 2048})
        (loaded,) = client.ps().models
    finally:
        client.close()
    assert loaded.model == MODEL
    assert loaded.context_length == 2048  # each request's context; the cache holds PARALLEL of them
    assert loaded.size > 2048 * PARALLEL * 30 * 2 * 2 * 3 * 64  # the weights plus the KV cells of all sequences


def prefix_cache(url: str) -> tuple[float, float]:
    """The model's prefix cache counters from /metrics: prompt tokens looked up, and of those reused."""
    values = {"modelyard:prefix_cache_queries_total": 0.0, "modelyard:prefix_cache_hits_total": 0.0}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        name, _, rest = line.partition("{")
        if name in values and f'model="{MODEL}"' in rest:
            values[name] = float(line.rsplit(" ", 1)[1])
    return values["modelyard:prefix_cache_queries_total"], values["modelyard:prefix_cache_hits_total"]


def test_a_conversations_next_turn_reuses_the_cached_prefix(batching_server):
    client = ollama.Client(host=batching_server.url)
    options = {"temperature": 0, "num_predict": 8}
    try:
        first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When do you open?"}]
        answer = client.chat(model=MODEL, messages=first, options=options)
        queried, hits = prefix_cache(batching_server.url)
        second = [*first, answer.message, {"role": "user", "content": "And on Sundays?"}]
        again = client.chat(model=MODEL, messages=second, options=options)
        queried_after, hits_after = prefix_cache(batching_server.url)
    finally:
        client.close()
    assert queried_after - queried == again.prompt_eval_count  # every prompt token was looked up
    # The first turn's whole prompt (system, question, the assistant's header) came from the cache.
    assert hits_after - hits >= answer.prompt_eval_count
    assert hits_after - hits < again.prompt_eval_count  # the new question was evaluated


def test_one_request_at_a_time_counts_the_prefix_it_reuses_too(llama_server):
    """With OLLAMA_NUM_PARALLEL=1 llama-cpp-python's own prompt cache serves the next turn: counted alike."""
    client = ollama.Client(host=llama_server.url)
    options = {"temperature": 0, "num_predict": 8}
    try:
        first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is there a reading group?"}]
        answer = client.chat(model=MODEL, messages=first, options=options)
        queried, hits = prefix_cache(llama_server.url)
        second = [*first, answer.message, {"role": "user", "content": "When does it meet?"}]
        again = client.chat(model=MODEL, messages=second, options=options)
        queried_after, hits_after = prefix_cache(llama_server.url)
    finally:
        client.close()
    assert queried_after - queried == again.prompt_eval_count
    assert again.prompt_eval_count > hits_after - hits >= answer.prompt_eval_count


def test_a_system_prompt_another_stream_is_using_is_copied_not_evaluated(batching_server):
    """A stream holds the system prompt in its sequence's cells; a request with the same system prompt
    arriving meanwhile takes another sequence and has the prompt copied into it. (No other sequence has
    seen this system prompt, so the reused tokens can only come from the copy.)"""
    url = batching_server.url
    system = SYSTEM.replace("library", "museum")
    question = {"role": "user", "content": "Tell me a very long story about the archive."}
    body = {"model": MODEL, "messages": [{"role": "system", "content": system}, question], "options": LONG}
    with httpx.Client(timeout=600) as client, client.stream("POST", url + "/api/chat", json=body) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False  # its prompt is in the cache: it generates
        queried, hits = prefix_cache(url)
        other = [{"role": "system", "content": system}, {"role": "user", "content": "Can I print here?"}]
        other_client = ollama.Client(host=url)
        try:
            answer = other_client.chat(model=MODEL, messages=other, options={"num_predict": 4})
        finally:
            other_client.close()
        queried_after, hits_after = prefix_cache(url)
    system_tokens = len(system.split())  # fewer than its tokens: each word is one token or more
    assert queried_after - queried == answer.prompt_eval_count
    assert hits_after - hits >= system_tokens


def test_requests_beyond_the_sequences_wait_and_all_finish(batching_server):
    """Twice as many requests as sequences: the cache holds four, the others wait for a free one."""

    async def scenario() -> list[ollama.GenerateResponse]:
        client = ollama.AsyncClient(host=batching_server.url)
        try:
            return await asyncio.gather(
                *(
                    client.generate(
                        model=MODEL, prompt=f"Say something about the number {n}.", options={"num_predict": 6}
                    )
                    for n in range(2 * PARALLEL)
                )
            )
        finally:
            await client.close()

    answers = asyncio.run(scenario())
    assert [answer.done for answer in answers] == [True] * (2 * PARALLEL)
    assert all(answer.eval_count == 6 or answer.done_reason == "stop" for answer in answers)


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("embed-batching") / "models"
    env = {
        "MODELYARD_BACKENDS": "llamacpp",
        "MODELYARD_BUNDLED_MODELS": "all-minilm:latest",
        "OLLAMA_NUM_PARALLEL": str(PARALLEL),
    }
    with ServerProcess(models, env) as server:
        yield server


def test_concurrent_embed_calls_answer_as_each_alone(embedding_server):
    inputs = [[f"Sentence {n} is about a lighthouse.", f"And {n} about the sea."] for n in range(PARALLEL)]

    async def scenario() -> tuple[list[list[list[float]]], list[list[list[float]]]]:
        client = ollama.AsyncClient(host=embedding_server.url)
        try:
            alone = [list((await client.embed(model="all-minilm", input=texts)).embeddings) for texts in inputs]
            together = await asyncio.gather(*(client.embed(model="all-minilm", input=texts) for texts in inputs))
            return alone, [list(answer.embeddings) for answer in together]
        finally:
            await client.close()

    alone, together = asyncio.run(scenario())
    assert len(together) == PARALLEL and all(len(vectors) == 2 for vectors in together)
    for one, other in zip(alone, together, strict=True):  # each call got its own inputs' vectors back
        for a, b in zip(one, other, strict=True):
            assert a == pytest.approx(b, abs=1e-4)
