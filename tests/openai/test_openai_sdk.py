"""The official `openai` SDK, unchanged, against modelyard's /v1 on the real SmolLM2 (llama.cpp)."""

from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def client(llama_server) -> openai.OpenAI:
    with openai.OpenAI(base_url=llama_server.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_chat_completion_answers_one_object_with_usage(client):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, seed=42)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_chat_completion_streams_chunks_then_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=10, seed=42, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1 and len({chunk.created for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_stream_is_server_sent_events_ending_in_done(http):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) or json.loads(line[6:])["usage"] is None for line in events[:-1])


def test_max_completion_tokens_wins_over_max_tokens(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=20, max_completion_tokens=4, seed=1
    )
    assert completion.usage.completion_tokens == 4
    assert completion.choices[0].finish_reason == "length"


def test_seed_repeats_a_sampled_answer(client):
    def ask() -> str:
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, seed=7, temperature=1)
        return answer.choices[0].message.content

    assert ask() == ask()


def test_stop_string_or_list_cuts_the_answer(client):
    def ask(**extra) -> tuple[str, str]:
        answer = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=10, temperature=0, seed=3, **extra
        )
        return answer.choices[0].message.content, answer.choices[0].finish_reason

    full, _ = ask()
    word = full.split()[3]  # a word inside the answer
    for stop in (word, [word, "no such stop"]):
        cut, finish_reason = ask(stop=stop)
        assert cut == full[: full.index(word)] and word not in cut
        assert finish_reason == "stop"  # OpenAI's reason for a stop string too


def test_sampling_fields_are_accepted(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=3,
        temperature=0.5,
        top_p=0.8,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        seed=11,
    )
    assert completion.usage.completion_tokens > 0


def test_json_object_response_format_gives_json(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=12,
        seed=5,
    )
    content = completion.choices[0].message.content
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: an object so far (the grammar allows nothing else)
        assert content.lstrip().startswith("{")
        assert "```" not in content


class Pet(pydantic.BaseModel):
    name: str
    age: int
    indoor: bool


def test_beta_parse_returns_the_pydantic_model(client):
    completion = client.beta.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a pet: its name, age and whether it lives indoors."}],
        response_format=Pet,
        max_tokens=200,
        seed=9,
        temperature=0,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Pet)
    assert Pet.model_validate_json(message.content) == message.parsed


def test_options_extra_is_honoured_num_ctx_included(client, http):
    client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=1, extra_body={"options": {"num_ctx": 1536}}
    )
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert loaded[MODEL]["context_length"] == 1536
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)  # back to the default context


def test_options_extra_num_predict_is_overridden_by_max_tokens(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=3, seed=2, extra_body={"options": {"num_predict": 9}}
    )
    assert completion.usage.completion_tokens == 3


def test_completion_answers_text(client):
    completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, seed=4)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 6


def test_completion_streams_and_reports_usage(client):
    stream = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=5,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_models_lists_and_retrieves(client):
    listed = [model.id for model in client.models.list()]
    assert MODEL in listed
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by == "library" and model.created > 0


# --- errors in OpenAI's envelope -----------------------------------------------------------------------


def test_unknown_model_is_404_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    error = caught.value.body
    assert caught.value.status_code == 404
    assert error["type"] == "not_found_error" and "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")


def test_bad_json_is_400_in_openai_envelope(http):
    response = http.post(
        "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


def test_wrong_field_type_is_400(http):
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": "ten"})
    assert response.status_code == 400
    assert "max_tokens" in response.json()["error"]["message"]


def test_n_above_one_is_rejected_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    assert caught.value.body["param"] == "n"
    assert caught.value.body["code"] == "unsupported_value"


def test_empty_messages_are_rejected(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.body["param"] == "messages"


def test_ollama_paths_keep_ollama_envelope(http):
    response = http.post("/api/chat", json={"model": "no-such-model", "messages": QUESTION})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'no-such-model' not found"}


def test_unknown_response_format_is_rejected(http):
    body = {"model": MODEL, "messages": QUESTION, "response_format": {"type": "yaml"}}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"


def test_http_image_urls_are_rejected(http):
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "base64" in response.json()["error"]["message"]


def test_content_parts_text_is_read(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}], max_tokens=4
    )
    assert completion.usage.prompt_tokens > 5


def test_httpx_without_sdk_gets_plain_json(llama_server):
    response = httpx.get(llama_server.url + "/v1/models/no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


# --- /v1/responses, stateless ---------------------------------------------------------------------------


def test_responses_answers_text(client):
    response = client.responses.create(
        model=MODEL, instructions="Answer briefly.", input="Why is the sky blue?", max_output_tokens=3
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.output_text
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_responses_stream_named_events(client):
    events = list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=4, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.incomplete"
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    done = next(event for event in events if event.type == "response.output_text.done")
    assert text and done.text == text
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_responses_refuses_stored_state(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert caught.value.body["param"] == "previous_response_id"
