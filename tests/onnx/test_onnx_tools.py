"""Forced tool calls and formats after thinking on ONNX Runtime GenAI: the core's Constraint reaches
llguidance (a Lark grammar with the tools' schemas inlined), so the converted SmolLM2, which was not trained
for tools, writes calls whose arguments match their schema, as on llama.cpp (tests/tools)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from support.tools import ADD, WEATHER

from modelyard.runtime.contract import Completion, Constraint, Done, TextDelta
from modelyard.runtime.options import Options
from modelyard_onnx.engine import Engine, constraint_lark, open_model

HERMES_TEMPLATE = (Path(__file__).parent.parent / "tools" / "hermes.gotmpl").read_text()
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, ADD)}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_BUDGET = 200  # the grammar ends the call well before this
# One model per call syntax: the Hermes tags, Llama 3 bare JSON, Mistral's [TOOL_CALLS] list, and
# FunctionGemma's call:name{key:value}, whose grammar is the core's (runtime/grammar.py) written as Lark.
FAMILIES = {
    "hermes": "onnx-hermes",
    "llama3": "onnx-llama3",
    "ministral": "onnx-mistral",
    "functiongemma": "onnx-functiongemma",
}


@pytest.fixture(scope="module")
def tool_models(onnx_server, real_model) -> dict[str, str]:
    with httpx.Client(base_url=onnx_server.url, timeout=120) as client:
        for parser, name in FAMILIES.items():
            body = {"model": name, "from": real_model, "template": HERMES_TEMPLATE, "stream": False}
            if parser != "hermes":
                body["parser"] = parser
            response = client.post("/api/create", json=body)
            assert response.status_code == 200, response.text
    return FAMILIES


def check_call(name: str, arguments: dict, allowed: set[str]) -> None:
    assert name in allowed
    jsonschema.validate(arguments, SCHEMAS[name])


def test_required_streams_a_valid_call_over_openai(onnx_server, tool_models):
    client = openai.OpenAI(base_url=onnx_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with client:
        calls, finish, content = [], "", ""
        stream = client.chat.completions.create(
            model=tool_models["hermes"],
            messages=QUESTION,
            tools=[WEATHER, ADD],
            tool_choice="required",
            max_tokens=CALL_BUDGET,
            stream=True,
        )
        for chunk in stream:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            calls += [(call.function.name, json.loads(call.function.arguments)) for call in delta.tool_calls or []]
            finish = chunk.choices[0].finish_reason or finish
    assert calls and finish == "tool_calls", (finish, content)
    for name, arguments in calls:
        check_call(name, arguments, {"get_weather", "add"})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_named_function_is_called_in_each_syntax(onnx_server, tool_models, family):
    body = {
        "model": tool_models[family],
        "messages": [{"role": "user", "content": "Add 2 and 3."}],
        "tools": [WEATHER, ADD],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "stream": False,
        "options": {"num_predict": CALL_BUDGET},
    }
    message = httpx.post(onnx_server.url + "/api/chat", json=body, timeout=120).json()["message"]
    [call] = message["tool_calls"]
    check_call(call["function"]["name"], call["function"]["arguments"], {"add"})
    assert message["content"] == ""


def test_the_lark_grammar_escapes_its_literals():
    grammar = constraint_lark(Constraint(schema="json", prefix='<a "b">\n', suffix="\\", after="</think>"), {})
    assert 'start: free_text "<a \\"b\\">\\n" payload "\\\\"' in grammar
    assert 'free_text[suffix="</think>"]: /(?s:.*)/' in grammar


def test_format_applies_after_the_thinking_block(real_folder):
    """With thinking on, the grammar lets the model think up to </think> and then holds it to the schema
    (run on the engine directly: SmolLM2's template has no thinking to ask for through the API)."""
    import onnxruntime_genai as og

    model, tokenizer = open_model(og, str(real_folder), "cpu", 0, None)
    engine = Engine(og, model, tokenizer, n_ctx=512)
    schema = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    # One worked example, so that this small model closes its thinking block by itself; the example answers
    # {"answer": ...}, while the schema asks for "sum", which only the grammar brings.
    prompt = (
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
        '<think>One plus one is two.</think>{"answer": 2}<|im_end|>\n'
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>"
    )
    completion = Completion(
        prompt=prompt,
        options=Options(temperature=0, num_predict=120),
        constraint=Constraint(schema=schema, after="</think>"),
    )
    events = list(engine.generate(completion, threading.Event()))
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert isinstance(events[-1], Done)
    thinking, marker, answer = text.partition("</think>")
    assert marker and thinking.strip(), f"no thinking block: {text!r}"
    jsonschema.validate(json.loads(answer), schema)
