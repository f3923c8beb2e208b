"""The upstream plugin's parts without servers: the config file, the choice of an upstream and its circuit
breaker, and the translation of a Completion to each kind's request and of each kind's stream to events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from modelyard_upstream import ollama, openai, prefix
from modelyard_upstream.config import HealthEntry, read_config
from modelyard_upstream.pool import Endpoint, Target, UpstreamError, choose

from modelyard.plugin import (
    Completion,
    Done,
    Message,
    Options,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallEvent,
    ToolCallFunction,
)

EXAMPLE = """
[health]
interval = 2
failures = 2
cooldown = 4

[[pool]]
model = "qwen3:*"
timeout = 30
[[pool.upstream]]
url = "http://gpu-1:11434"
[[pool.upstream]]
url = "http://gpu-2:8000"
kind = "openai"
model = "Qwen/Qwen3-8B"
weight = 2
"""


def test_a_config_file_is_read_into_pools(tmp_path: Path):
    path = tmp_path / "upstream.toml"
    path.write_text(EXAMPLE)
    config = read_config(str(path))
    (pool,) = config.pools
    assert (pool.model, pool.is_pattern, pool.timeout, config.health.failures) == ("qwen3:*", True, 30.0, 2)
    assert pool.matches("Qwen3:8B") and not pool.matches("llama3:8b")
    assert [(u.kind, u.model, u.weight) for u in pool.upstreams] == [
        ("ollama", "", 1.0),
        ("openai", "Qwen/Qwen3-8B", 2),
    ]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ('[[pool]]\nmodel = "m"\nupstreams = []\n', "Object contains unknown field `upstreams`"),
        ('[[pool]]\nmodel = "m"\n[[pool.upstream]]\nurl = "http://a"\nkind = "vllm"\n', "Invalid enum value 'vllm'"),
        ('[[pool]]\nmodel = "m"\n[[pool.upstream]]\nurl = "gpu:1"\n', "the url needs http:// or https://"),
        ('[[pool]]\nmodel = "m"\nupstream = []\n', "pool 'm' has no upstream"),
        ('[health]\nfailures = "3"\n', "Expected `int`, got `str`"),
        (
            '[[pool]]\nmodel = "m"\ncapabilities = ["completion", "telepathy"]\n[[pool.upstream]]\nurl = "http://a"\n',
            "pool 'm': unknown capabilities ['telepathy']",
        ),
    ],
)
def test_a_bad_config_file_is_refused_with_the_fault(tmp_path: Path, text: str, fault: str):
    path = tmp_path / "upstream.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as refused:
        read_config(str(path))
    assert fault in str(refused.value) and str(path) in str(refused.value)


def targets(*weights: float) -> list[Target]:
    return [Target(Endpoint(f"http://u{index}", "ollama"), "m", weight) for index, weight in enumerate(weights)]


def test_the_upstream_with_fewest_requests_in_flight_per_weight_is_chosen():
    light, heavy = targets(1, 2)
    light.endpoint.in_flight, heavy.endpoint.in_flight = 1, 1
    assert choose([light, heavy], {}, "m") is heavy  # 1/2 < 1/1
    heavy.endpoint.in_flight = 3
    assert choose([light, heavy], {}, "m") is light


def test_among_equals_the_one_chosen_longest_ago_is_chosen():
    pair = targets(1, 1)
    picks = [choose(pair, {}, "m").endpoint.url for _ in range(4)]
    assert picks == ["http://u0", "http://u1", "http://u0", "http://u1"]


def test_the_circuit_opens_after_consecutive_failures_and_closes_on_success():
    health = HealthEntry(failures=2, cooldown=60)
    (target,) = targets(1)
    endpoint = target.endpoint
    endpoint.failed("refused", health)
    assert choose([target], {}, "m") is target  # one failure: still closed
    endpoint.failed("refused", health)
    with pytest.raises(UpstreamError) as none:
        choose([target], {}, "m")
    assert none.value.status == 503 and "ejected for 60 s more after 2 failures (refused)" in none.value.message
    endpoint.ejected_until = time.monotonic()  # the cooldown is over: half-open
    assert choose([target], {}, "m") is target
    endpoint.failed("refused again", health)  # still past the threshold: open again at once
    assert endpoint.ejected(time.monotonic())
    endpoint.succeeded()
    assert choose([target], {}, "m") is target and endpoint.failures == 0


def test_an_upstream_whose_list_lacks_the_model_is_left_out():
    first, second = targets(1, 1)
    first.endpoint.models = {"other:1b": "other:1b"}
    second.endpoint.models = {"m:latest": "m:latest"}
    assert choose([first, second], {}, "m") is second
    second.endpoint.models = {}
    with pytest.raises(UpstreamError) as missing:
        choose([first, second], {}, "pooled")
    assert (missing.value.status, missing.value.message) == (404, "model 'pooled' not found")


def completion(**fields: object) -> Completion:
    return Completion(options=Options(num_ctx=4096, temperature=0.2, stop=["\n\n"], num_predict=32), **fields)


def test_a_chat_goes_to_api_chat_with_the_messages_and_changed_options_only():
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    path, body = ollama.request(completion(messages=messages, think="low", tools=[{"type": "function"}]), "up:1b")
    assert path == "/api/chat"
    assert body == {
        "model": "up:1b",
        "stream": True,
        "options": {"num_ctx": 4096, "temperature": 0.2, "stop": ["\n\n"], "num_predict": 32},
        "think": "low",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "tools": [{"type": "function"}],
    }


def test_a_generate_goes_to_api_generate_with_its_system_suffix_and_context():
    messages = [Message(role="system", content="S"), Message(role="user", content="P")]
    rendered = completion(prompt="<s>S P", conversation=messages, want_context=True, suffix="end", context=[1, 2])
    path, body = ollama.request(rendered, "up")
    assert path == "/api/generate"
    assert (body["prompt"], body["system"], body["suffix"], body["context"]) == ("P", "S", "end", [1, 2])
    assert "raw" not in body and "messages" not in body


def test_a_raw_prompt_goes_to_api_generate_raw_with_its_images():
    path, body = ollama.request(completion(prompt="<|raw|>", images=[b"\x89PNG"]), "up")
    assert (path, body["prompt"], body["raw"], body["images"]) == ("/api/generate", "<|raw|>", True, ["iVBORw=="])


def test_ollama_chunks_become_events():
    reader = ollama.StreamReader()
    lines = [
        '{"message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": false}',
        '{"message": {"role": "assistant", "content": "Hi"}, "done": false}',
        '{"message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments":'
        ' {"a": 1}}}]}, "done": false}',
        '{"message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",'
        ' "prompt_eval_count": 5, "prompt_eval_duration": 10, "eval_count": 3, "eval_duration": 20}',
    ]
    events = [event for line in lines for event in reader.events(line)]
    assert events == [
        ThinkingDelta("hmm"),
        TextDelta("Hi"),
        ToolCallEvent(name="f", arguments={"a": 1}, index=0),
        Done(reason="stop", prompt_eval_count=5, prompt_eval_duration=10, eval_count=3, eval_duration=20),
    ]
    with pytest.raises(ollama.UpstreamFault, match="out of memory"):
        list(reader.events('{"error": "out of memory"}'))


def test_a_chat_is_translated_to_chat_completions():
    messages = [
        Message(role="user", content="Weather?", images=["iVBORw=="]),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c1", function=ToolCallFunction(name="weather", arguments={"city": "Oslo"}))],
        ),
        Message(role="tool", content="cold", tool_call_id="c1"),
    ]
    schema = {"type": "object"}
    path, body = openai.request(completion(messages=messages, format=schema, think="max"), "Qwen/Qwen3-8B")
    assert path == "/v1/chat/completions"
    assert body["model"] == "Qwen/Qwen3-8B" and body["stream"] is True
    assert (body["temperature"], body["max_tokens"], body["stop"]) == (0.2, 32, ["\n\n"])
    assert "num_ctx" not in body and "top_k" not in body  # unchanged sampling options are the server's own
    assert body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw=="},
    }
    assert body["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert body["messages"][2] == {"role": "tool", "content": "cold", "tool_call_id": "c1"}
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["reasoning_effort"] == "high"


def test_a_raw_prompt_is_translated_to_completions():
    path, body = openai.request(completion(prompt="Once upon", format="json"), "m")
    assert (path, body["prompt"]) == ("/v1/completions", "Once upon")


def test_sse_chunks_become_events_with_usage_as_counts():
    reader = openai.StreamReader()
    lines = [
        ": keep-alive",
        'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hmm"}}]}',
        'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}',
        'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function":'
        ' {"name": "f", "arguments": "{\\"a\\""}}]}}]}',
        'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},'
        ' "finish_reason": "tool_calls"}]}',
        'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}}',
        "data: [DONE]",
    ]
    events = [event for line in lines for event in reader.events(line)]
    assert events[:3] == [ThinkingDelta("hmm"), TextDelta("Hi"), ToolCallEvent(name="f", arguments={"a": 1}, id="c1")]
    done = events[3]
    assert isinstance(done, Done) and (done.reason, done.prompt_eval_count, done.eval_count) == ("stop", 7, 4)
    assert list(reader.finish()) == []  # Done once


def test_an_sse_length_finish_and_an_error_event():
    reader = openai.StreamReader()
    events = [
        e for line in ['data: {"choices": [{"text": "x", "finish_reason": "length"}]}'] for e in reader.events(line)
    ]
    events += list(reader.finish())  # a stream without [DONE]
    assert events[0] == TextDelta("x") and isinstance(events[1], Done) and events[1].reason == "length"
    with pytest.raises(ollama.UpstreamFault, match="context too long"):
        list(openai.StreamReader().events('data: {"error": {"message": "context too long", "code": 400}}'))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model \'x\' not found"}', "model 'x' not found"),
        (
            b'{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError"}}',
            "The model `x` does not exist.",
        ),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"Bad Gateway", "Bad Gateway"),
    ],
)
def test_error_bodies_of_either_kind_give_their_message(body: bytes, message: str):
    assert ollama.error_message(body) == message


def test_a_prompt_prefix_keeps_to_one_upstream_until_it_is_too_busy():
    trio = targets(1, 1, 1)
    picks = {choose(trio, {}, "m", b"system: You are a pirate.").endpoint.url for _ in range(6)}
    assert len(picks) == 1  # the same prefix, the same upstream, though least-in-flight would rotate
    (affine,) = [target for target in trio if target.endpoint.url in picks]
    affine.endpoint.in_flight = 3  # more than AFFINITY_SLACK above the others: least in flight wins
    assert choose(trio, {}, "m", b"system: You are a pirate.") is not affine
    others = {choose(trio, {}, "m", f"user: question {index}".encode()).endpoint.url for index in range(40)}
    assert len(others) > 1  # other prefixes spread


def test_the_affinity_key_is_the_prompts_prefix():
    messages = [Message(role="system", content="Long shared system prompt"), Message(role="user", content="Hi")]
    assert prefix(completion(messages=messages), 20) == b"system: Long shared "
    assert prefix(completion(prompt="raw text"), 3) == b"raw"
    assert prefix(completion(messages=messages), 0) == b""


def test_truncate_false_is_forwarded_so_the_upstream_refuses_a_long_prompt():
    _, body = ollama.request(completion(messages=[Message(role="user", content="Hi")], truncate=False), "up")
    assert body["truncate"] is False


def test_an_openai_model_list_tells_completion_and_vision_where_the_server_says_multimodal():
    plain = b'{"object": "list", "data": [{"id": "Qwen/Qwen3-8B", "object": "model", "owned_by": "vllm"}]}'
    assert openai.model_list(plain) == {"Qwen/Qwen3-8B": frozenset({"completion"})}
    # llama-server lists its model twice: OpenAI's way, and Ollama's way with capabilities.
    llama_server = (
        b'{"models": [{"name": "gemma", "model": "gemma", "capabilities": ["completion", "multimodal"]}],'
        b' "object": "list", "data": [{"id": "gemma", "object": "model", "owned_by": "llamacpp"}]}'
    )
    assert openai.model_list(llama_server) == {"gemma": frozenset({"completion", "vision"})}
    newer = b'{"data": [{"id": "g", "architecture": {"input_modalities": ["text", "image"]}}, {"id": "t", "architecture": {"input_modalities": ["text"]}}]}'
    assert openai.model_list(newer) == {"g": frozenset({"completion", "vision"}), "t": frozenset({"completion"})}


def test_an_ollama_show_answer_gives_capabilities_and_details():
    body = (
        b'{"modelfile": "", "capabilities": ["completion", "tools"], "model_info": {},'
        b' "details": {"parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],'
        b' "parameter_size": "8.2B", "quantization_level": "Q4_K_M"}}'
    )
    capabilities, details = ollama.shown(body)
    assert capabilities == {"completion", "tools"}
    assert details is not None and (details.family, details.parameter_size) == ("qwen3", "8.2B")
    assert details.format == ""  # as Ollama shows a remote model: its weights (and their metadata) are not here


def test_embeddings_of_either_kind_are_read_in_input_order():
    answer = ollama.embeddings(b'{"model": "m", "embeddings": [[1.0, 0.0], [0.0, 1.0]], "prompt_eval_count": 5}')
    assert (answer.vectors, answer.prompt_eval_count) == ([[1.0, 0.0], [0.0, 1.0]], 5)
    shuffled = b'{"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}], "usage": {"prompt_tokens": 4}}'
    answer = openai.embeddings(shuffled)
    assert (answer.vectors, answer.prompt_eval_count) == ([[1.0, 0.0], [0.0, 1.0]], 4)
    assert openai.embed_request(["a"], "e5") == (
        "/v1/embeddings",
        {"model": "e5", "input": ["a"], "encoding_format": "float"},
    )
    assert ollama.embed_request(["a"], False, "minilm") == (
        "/api/embed",
        {"model": "minilm", "input": ["a"], "truncate": False},
    )
