"""Generate and chat on the real SmolLM2 through real HTTP: the official client and raw httpx."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from modelyard.api.ollama import wire

MODEL = "smollm2:135m"
DETERMINISTIC = {"temperature": 0, "seed": 42}
# Tests that expect done_reason "length" sample with a seed: without one, SmolLM2 ends its answer to "Why is
# the sky blue?" within 12 tokens about one time in 60, on llama.cpp and ONNX alike.


@pytest.fixture
def client(ollama_client) -> ollama.Client:
    return ollama_client


def stream_lines(http: httpx.Client, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    with http.stream("POST", path, json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    return response, lines


def test_generate_streams_ndjson_chunks_then_a_final_chunk_with_stats(http):
    response, lines = stream_lines(
        http,
        "/api/generate",
        {"model": MODEL, "prompt": "Why is the sky blue?", "options": {"num_predict": 12, "seed": 42}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    *chunks, final = lines
    assert chunks and all(c["done"] is False and "done_reason" not in c for c in chunks)
    decoded = [json_decode(line, wire.GenerateResponse) for line in lines]
    assert decoded[-1].done is True
    assert final["done_reason"] == "length"
    assert final["eval_count"] == 12
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[field], int) and final[field] > 0, field
    assert final["total_duration"] >= final["eval_duration"]
    assert isinstance(final["context"], list) and len(final["context"]) > final["prompt_eval_count"]
    assert final["created_at"].endswith("Z")


def json_decode(line: dict, kind: type):
    import msgspec

    return msgspec.json.decode(json.dumps(line), type=kind)


def test_generate_without_streaming_answers_one_json_object(http):
    response = http.post(
        "/api/generate", json={"model": MODEL, "prompt": "Say hello.", "stream": False, "options": {"num_predict": 20}}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = json_decode(response.json(), wire.GenerateResponse)
    assert body.done and body.response.strip()
    assert body.done_reason in ("stop", "length")


def test_official_client_generate_and_chat(client):
    generated = client.generate(model=MODEL, prompt="Why is the sky blue?", options={"num_predict": 16})
    assert generated.done and generated.response.strip()
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 16})
    assert answer.message.role == "assistant" and answer.message.content.strip()


def test_official_client_streams_chat(client):
    parts = list(
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to five."}],
            stream=True,
            options={"num_predict": 16},
        )
    )
    assert len(parts) > 2
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].eval_count >= len(parts) - 1  # every chunk before the last carries at least one token
    assert "".join(p.message.content for p in parts).strip()


def test_seed_example_with_max_tokens_option(http):
    """The documentation's example: options temperature, top_p and max_tokens (an alias of num_predict)."""
    body = {
        "model": MODEL,
        "prompt": "Why is the sky blue?",
        "stream": False,
        "options": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 7, "seed": 42},
    }
    final = http.post("/api/generate", json=body).json()
    assert final["eval_count"] == 7
    assert final["done_reason"] == "length"


def test_num_predict_caps_eval_count(client):
    answer = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        options={"num_predict": 5, "seed": 42},
    )
    assert answer.eval_count == 5
    assert answer.done_reason == "length"


def test_temperature_zero_with_a_seed_is_repeatable(client):
    def once() -> str:
        return client.generate(
            model=MODEL, prompt="Name three colors.", options={**DETERMINISTIC, "num_predict": 24}
        ).response

    assert once() == once()


def test_same_seed_same_sample_at_temperature_one(client):
    def once(seed: int) -> str:
        return client.generate(
            model=MODEL, prompt="Write a word.", options={"temperature": 1.0, "seed": seed, "num_predict": 24}
        ).response

    assert once(7) == once(7)


def test_stop_sequences_end_generation_and_are_not_emitted(client):
    prompt = "Why is the sky blue?"
    full = client.generate(model=MODEL, prompt=prompt, options={**DETERMINISTIC, "num_predict": 40}).response
    words = full.split()
    stop = words[len(words) // 2]
    cut = client.generate(model=MODEL, prompt=prompt, options={**DETERMINISTIC, "num_predict": 40, "stop": [stop]})
    assert stop not in cut.response
    assert cut.done_reason == "stop"
    assert full.startswith(cut.response)
    assert len(cut.response) < len(full)


def test_format_json_gives_parseable_json(client):
    answer = client.generate(
        model=MODEL,
        prompt="Describe the sky as JSON with keys color and reason.",
        format="json",
        options={**DETERMINISTIC, "num_predict": 200},
    )
    assert isinstance(json.loads(answer.response), dict)


def test_format_schema_output_validates(client):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"sky_is_blue": {"type": "boolean"}, "mood": {"type": "string", "enum": ["happy", "sad"]}},
        "required": ["sky_is_blue", "mood"],
    }
    answer = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue? Answer as JSON."}],
        format=schema,
        options={**DETERMINISTIC, "num_predict": 60},
    )
    jsonschema.validate(json.loads(answer.message.content), schema)


def test_chat_with_system_assistant_and_tool_history(client):
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "tool", "content": "calculator: 4", "tool_name": "calculator"},
        {"role": "user", "content": "And 3+3?"},
    ]
    answer = client.chat(model=MODEL, messages=messages, options={"num_predict": 16})
    assert answer.message.content.strip()
    assert answer.prompt_eval_count > 30


def test_context_continues_a_generation(client):
    first = client.generate(model=MODEL, prompt="My name is Ada.", options={**DETERMINISTIC, "num_predict": 8})
    second = client.generate(
        model=MODEL, prompt="What is my name?", context=first.context, options={**DETERMINISTIC, "num_predict": 8}
    )
    assert second.prompt_eval_count > len(first.context)


def test_raw_prompt_skips_the_template(client):
    raw = client.generate(
        model=MODEL, prompt="The capital of France is", raw=True, options={**DETERMINISTIC, "num_predict": 6}
    )
    assert raw.response.strip()
    assert raw.context is None
    assert raw.prompt_eval_count < 10


def test_requests_without_content_type_are_accepted(llama_server):
    # curl -d sends application/x-www-form-urlencoded; Ollama reads the JSON anyway.
    body = json.dumps({"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    response = httpx.post(
        llama_server.url + "/api/generate",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["done"] is True


def test_concurrent_requests_wait_their_turn_and_do_not_mix(llama_server):
    import concurrent.futures

    def ask(prompt: str) -> str:
        body = {"model": MODEL, "prompt": prompt, "stream": False, "options": {**DETERMINISTIC, "num_predict": 16}}
        return httpx.post(llama_server.url + "/api/generate", json=body, timeout=120).json()["response"]

    prompts = ["Name a fruit.", "Name a planet.", "Name a fruit.", "Name a planet."]
    alone = {prompt: ask(prompt) for prompt in set(prompts)}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, prompts))
    assert together == [alone[p] for p in prompts]
