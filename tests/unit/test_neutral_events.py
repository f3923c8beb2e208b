"""The inference service is API-neutral: every kind of event reaches Ollama's chunks, `stream: false` keeps
thinking, tool calls and log probabilities, and a second API can be built on the service alone."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from litestar import Request, post
from litestar.testing import TestClient

from modelyard.config import Settings
from modelyard.plugin import (
    COMPLETION,
    THINKING,
    TOOLS,
    Backend,
    Completion,
    Done,
    Event,
    LoadedModel,
    LoadSpec,
    Logprobs,
    Message,
    ModelView,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCallEvent,
    hookimpl,
)
from modelyard.runtime.aggregate import Aggregate
from modelyard.runtime.inference import GenerationRequest
from modelyard.server import create_app

MODEL = "smollm2:135m"


class ScriptedModel(LoadedModel):
    """Thinks, calls a tool, then answers two words with their log probabilities."""

    context_length = 64

    def __init__(self) -> None:
        self.completions: list[Completion] = []

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        self.completions.append(completion)
        yield ThinkingDelta("Let me ")
        yield ThinkingDelta("think.")
        yield ToolCallEvent(name="get_weather", arguments={"city": "Paris"}, id="call_1", index=0)
        for word, logprob in (("Sunny", -0.25), (" today", -1.5)):
            yield Logprobs([TokenLogprob(token=word, logprob=logprob, top_logprobs=[])])
            yield TextDelta(word)
        yield Done(reason="stop", prompt_eval_count=3, prompt_eval_duration=10, eval_count=2, eval_duration=20)


class ScriptedBackend(Backend):
    name: ClassVar[str] = "scripted"
    loaded: ClassVar[list[ScriptedModel]] = []

    def serves(self, model: ModelView) -> bool:
        return True

    def capabilities(self, model: ModelView) -> frozenset[str]:
        return frozenset({COMPLETION, TOOLS, THINKING})

    async def load(self, model: ModelView, spec: LoadSpec) -> ScriptedModel:
        loaded = ScriptedModel()
        self.loaded.append(loaded)
        return loaded


class ScriptedPlugin:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(ScriptedBackend)


@post("/second/answer", status_code=200)
async def second_api(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A toy second API: its own request and response shapes, the service unchanged underneath."""
    body = await request.json()
    events = request.app.state.inference.chat(
        GenerationRequest(model=body["name"], started=0, messages=[Message(role="user", content=body["question"])])
    )
    first = await anext(events)
    aggregate = await Aggregate.collect(first, events)
    assert aggregate.done is not None
    return {"answer": aggregate.text, "reasoning": aggregate.thinking, "calls": [c.name for c in aggregate.tool_calls]}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(models=tmp_path / "models", backends=("scripted",), bundled_models=(MODEL,))
    app = create_app(settings, extra_plugins=(ScriptedPlugin(),))
    app.register(second_api)
    return TestClient(app)


def test_stream_false_keeps_thinking_tool_calls_and_logprobs(client: TestClient) -> None:
    with client:
        chat = client.post(
            "/api/chat",
            json={"model": MODEL, "messages": [{"role": "user", "content": "weather?"}], "stream": False},
        ).json()
        generate = client.post("/api/generate", json={"model": MODEL, "prompt": "weather?", "stream": False}).json()
    assert chat["message"]["content"] == "Sunny today"
    assert chat["message"]["thinking"] == "Let me think."
    assert chat["message"]["tool_calls"] == [  # Ollama's key order
        {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert [entry["logprob"] for entry in chat["logprobs"]] == [-0.25, -1.5]
    assert chat["eval_count"] == 2 and chat["total_duration"] > 0
    assert generate["response"] == "Sunny today"
    assert generate["thinking"] == "Let me think."
    assert generate["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [entry["token"] for entry in generate["logprobs"]] == ["Sunny", " today"]


def test_streamed_chunks_carry_each_kind_of_event(client: TestClient) -> None:
    with client:
        response = client.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"].get("thinking") for line in lines[:2]] == ["Let me ", "think."]
    assert lines[2]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    # Log probabilities ride on the chunk of the text they belong to, not on chunks of their own.
    assert [(line["message"]["content"], line["logprobs"][0]["logprob"]) for line in lines[3:5]] == [
        ("Sunny", -0.25),
        (" today", -1.5),
    ]
    assert lines[-1]["done"] is True and "logprobs" not in lines[-1]
    assert len(lines) == 6


def test_request_fields_reach_the_backend_as_the_completion(client: TestClient) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with client:
        client.post(
            "/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": tools,
                "think": "high",
                "logprobs": True,
                "top_logprobs": 3,
                "stream": False,
            },
        )
    completion = ScriptedBackend.loaded[-1].completions[-1]
    assert completion.tools == tools
    assert completion.think == "high"
    assert (completion.logprobs, completion.top_logprobs) == (True, 3)


def test_a_second_api_uses_the_service_unchanged(client: TestClient) -> None:
    with client:
        answer = client.post("/second/answer", json={"name": MODEL, "question": "weather?"}).json()
    assert answer == {"answer": "Sunny today", "reasoning": "Let me think.", "calls": ["get_weather"]}
