"""Tool calls through the inference service and every API, on the echo backend: it answers with the user's
words, so a user message written in a family's call syntax comes back as that model's output would, word by
word, and the parser must find the call in the stream. (tests/tools/test_tools_llamacpp.py has a real
model write them.)"""

from __future__ import annotations

import json
import re

import httpx
import ollama
import openai
import pytest

from modelyard.store.modelfile import create_request, parse_modelfile

MODEL = "smollm2:135m"  # its library template reads .Tools and writes <tool_call>: the Hermes form
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
HERMES_CALL = '<tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
MISTRAL_CALL = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'
CALL_ID = re.compile(r"call_[a-z0-9]{8}")


@pytest.fixture
def http(echo_server):
    with httpx.Client(base_url=echo_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def ollama_echo(echo_server):
    client = ollama.Client(host=echo_server.url)
    yield client
    client._client.close()


@pytest.fixture
def openai_echo(echo_server):
    with openai.OpenAI(base_url=echo_server.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_chat_returns_the_call(ollama_echo, stream):
    if stream:
        chunks = list(ollama_echo.chat(model=MODEL, messages=ask("Sure. " + HERMES_CALL), tools=TOOLS, stream=True))
        calls = [call for chunk in chunks for call in chunk.message.tool_calls or []]
        content = "".join(chunk.message.content or "" for chunk in chunks)
        assert chunks[-1].done and chunks[-1].done_reason == "stop"
        # The call comes in a chunk of its own, before the last one.
        assert any(chunk.message.tool_calls and not chunk.done for chunk in chunks)
    else:
        response = ollama_echo.chat(model=MODEL, messages=ask("Sure. " + HERMES_CALL), tools=TOOLS)
        calls, content = response.message.tool_calls, response.message.content
    assert content == "Sure. "
    [call] = calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}


def test_ollama_chat_wire_has_id_and_index(http):
    body = {"model": MODEL, "messages": ask(HERMES_CALL + " " + HERMES_CALL), "tools": TOOLS, "stream": False}
    message = http.post("/api/chat", json=body).json()["message"]
    assert message["content"] == ""
    first, second = message["tool_calls"]
    assert CALL_ID.fullmatch(first["id"]) and CALL_ID.fullmatch(second["id"]) and first["id"] != second["id"]
    assert [first["function"]["index"], second["function"]["index"]] == [0, 1]
    assert first["function"]["arguments"] == {"city": "Paris"}


def test_without_tools_the_text_is_not_parsed(http):
    body = {"model": MODEL, "messages": ask(HERMES_CALL), "stream": False}
    message = http.post("/api/chat", json=body).json()["message"]
    assert message["content"] == HERMES_CALL and "tool_calls" not in message


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_on_api_chat_offers_and_parses_nothing(http, stream):
    body = {"model": MODEL, "messages": ask(HERMES_CALL), "tools": TOOLS, "tool_choice": "none", "stream": stream}
    lines = [json.loads(line) for line in http.post("/api/chat", json=body).text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == HERMES_CALL
    assert not any("tool_calls" in line["message"] for line in lines)


def test_tool_choice_errors_on_api_chat(http):
    for choice, error in [
        ("sometimes", 'invalid tool_choice: "sometimes" (must be "auto", "none", "required" or a function)'),
        (
            {"type": "function", "function": {"name": "launch"}},
            'tool_choice names "launch", which is not among the tools',
        ),
    ]:
        body = {"model": MODEL, "messages": ask("hi"), "tools": TOOLS, "tool_choice": choice}
        response = http.post("/api/chat", json=body)
        assert response.status_code == 400 and response.json() == {"error": error}


def test_openai_streams_tool_call_deltas(openai_echo):
    stream = openai_echo.chat.completions.create(model=MODEL, messages=ask(HERMES_CALL), tools=TOOLS, stream=True)
    chunks = list(stream)
    deltas = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    [delta] = deltas
    assert delta.index == 0 and CALL_ID.fullmatch(delta.id) and delta.type == "function"
    assert delta.function.name == "get_weather" and json.loads(delta.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_answer_has_tool_calls_and_results_go_back(openai_echo):
    completion = openai_echo.chat.completions.create(model=MODEL, messages=ask(HERMES_CALL), tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The call and its result go back as the next turn (the echo backend answers with the last user text).
    followup = openai_echo.chat.completions.create(
        model=MODEL,
        messages=[
            *ask(HERMES_CALL),
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
            {"role": "user", "content": "thanks"},
        ],
        tools=TOOLS,
    )
    assert followup.choices[0].message.content == "thanks"


def test_anthropic_tool_use_block(http):
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": ask(HERMES_CALL),
        "tools": [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}],
        "tool_choice": {"type": "auto"},
    }
    message = http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}).json()
    assert message["stop_reason"] == "tool_use"
    [block] = [block for block in message["content"] if block["type"] == "tool_use"]
    assert block["name"] == "get_weather" and block["input"] == {"city": "Paris"}


def test_responses_function_call_item(openai_echo):
    tool = {"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}
    response = openai_echo.responses.create(model=MODEL, input=HERMES_CALL, tools=[tool], tool_choice="auto")
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}


def test_a_modelfile_parser_chooses_the_syntax(http, tmp_path):
    modelfile = parse_modelfile(f"FROM {MODEL}\nPARSER ministral\n")
    assert modelfile.parser == "ministral"
    body = {"model": "mistral-form", **create_request(modelfile, tmp_path, lambda path: ""), "stream": False}
    assert http.post("/api/create", json=body).status_code == 200
    shown = http.post("/api/show", json={"model": "mistral-form"}).json()
    assert shown["capabilities"] == ["completion", "tools"]
    message = http.post(
        "/api/chat", json={"model": "mistral-form", "messages": ask(MISTRAL_CALL), "tools": TOOLS, "stream": False}
    ).json()["message"]
    assert message["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    # The Hermes form is text for this model now.
    message = http.post(
        "/api/chat", json={"model": "mistral-form", "messages": ask(HERMES_CALL), "tools": TOOLS, "stream": False}
    ).json()["message"]
    assert message["content"] == HERMES_CALL and "tool_calls" not in message
