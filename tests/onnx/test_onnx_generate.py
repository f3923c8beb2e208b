"""Generate and chat on the tiny ONNX model through real HTTP: streaming, counts and reasons, stop
strings, seeds, context, load/unload/keep_alive, and the provider choice with its errors (CUDA asked of
the CPU build). Its weights are random, so these tests look at mechanics, not at the text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import ONNX_ENV, TINY, create_from_folder

from modelyard.api.ollama import wire
from modelyard_conformance.launcher import ServerProcess

SAMPLED = {"temperature": 1.0, "seed": 7}


def stream(http: httpx.Client, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def test_generate_streams_tokens_then_stats(onnx_http):
    lines = stream(
        onnx_http,
        "/api/generate",
        {"model": TINY, "prompt": "Why is the sky blue?", "options": {**SAMPLED, "num_predict": 12}},
    )
    *chunks, final = lines
    for line in lines:
        msgspec.json.decode(json.dumps(line), type=wire.GenerateResponse)
    assert len(chunks) >= 6 and all(c["done"] is False for c in chunks)
    assert (final["done"], final["done_reason"], final["eval_count"]) == (True, "length", 12)
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[field], int) and final[field] > 0, field
    assert final["prompt_eval_count"] > 10  # the chat template and its default system prompt
    assert len(final["context"]) == final["prompt_eval_count"] + 12


def test_generate_and_chat_without_streaming(onnx_http):
    generated = onnx_http.post(
        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {**SAMPLED, "num_predict": 8}}
    ).json()
    assert generated["done"] and generated["response"] and generated["eval_count"] == 8
    chat = onnx_http.post(
        "/api/chat",
        json={
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {**SAMPLED, "num_predict": 8},
        },
    ).json()
    assert chat["message"]["role"] == "assistant" and chat["message"]["content"]
    assert chat["done_reason"] == "length" and "context" not in chat


def test_chat_streams(onnx_http):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."}]
    *chunks, final = stream(
        onnx_http, "/api/chat", {"model": TINY, "messages": messages, "options": {**SAMPLED, "num_predict": 10}}
    )
    assert chunks and all(c["message"]["role"] == "assistant" for c in chunks)
    assert final["done"] and final["eval_count"] == 10


def test_seeded_and_greedy_requests_repeat(onnx_http):
    def once(options: dict) -> str:
        body = {"model": TINY, "prompt": "Write a word.", "stream": False, "options": {**options, "num_predict": 16}}
        return onnx_http.post("/api/generate", json=body).json()["response"]

    assert once(SAMPLED) == once(SAMPLED)
    assert once({"temperature": 1.0, "seed": 8}) != once(SAMPLED)
    assert once({"temperature": 0, "seed": 1}) == once({"temperature": 0, "seed": 2})


def test_stop_strings_end_generation_and_are_not_emitted(onnx_http):
    body = {"model": TINY, "prompt": "Why is the sky blue?", "stream": False, "options": {**SAMPLED, "num_predict": 30}}
    full = onnx_http.post("/api/generate", json=body).json()["response"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = onnx_http.post("/api/generate", json={**body, "options": {**body["options"], "stop": [stop]}}).json()
    assert cut["done_reason"] == "stop"
    assert stop not in cut["response"] and full.startswith(cut["response"])
    assert len(cut["response"]) < len(full)


def test_num_predict_zero_and_num_ctx_limits(onnx_http):
    zero = onnx_http.post(
        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 0}}
    ).json()
    assert (zero["done_reason"], zero["eval_count"], zero["response"]) == ("length", 0, "")
    # A context of 64 tokens holds the prompt (about 35) and what fits after it.
    small = onnx_http.post(
        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {**SAMPLED, "num_ctx": 64}}
    ).json()
    assert small["done_reason"] == "length"
    assert small["prompt_eval_count"] + small["eval_count"] == 64
    ps = onnx_http.get("/api/ps").json()["models"]
    assert next(m for m in ps if m["name"] == TINY)["context_length"] == 64


def test_context_continues_and_raw_skips_the_template(onnx_http):
    first = onnx_http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "My name is Ada.", "stream": False, "options": {**SAMPLED, "num_predict": 4}},
    ).json()
    second = onnx_http.post(
        "/api/generate",
        json={
            "model": TINY,
            "prompt": "Name?",
            "context": first["context"],
            "stream": False,
            "options": {**SAMPLED, "num_predict": 4},
        },
    ).json()
    assert second["prompt_eval_count"] > len(first["context"])
    assert second["context"][: len(first["context"])] == first["context"]
    raw = onnx_http.post(
        "/api/generate",
        json={
            "model": TINY,
            "prompt": "The capital of France is",
            "raw": True,
            "stream": False,
            "options": {"num_predict": 3},
        },
    ).json()
    assert raw["prompt_eval_count"] == 5 and "context" not in raw


def test_a_modelfile_template_replaces_the_folders_chat_template(onnx_http):
    created = onnx_http.post(
        "/api/create",
        json={"model": "tiny-go-template", "from": TINY, "template": "Q: {{ .Prompt }} A:", "stream": False},
    )
    assert created.status_code == 200
    body = {
        "model": "tiny-go-template",
        "prompt": "The capital of France is",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 2},
    }
    templated = onnx_http.post("/api/generate", json=body).json()
    raw = onnx_http.post(
        "/api/generate", json={**body, "model": TINY, "prompt": "Q: The capital of France is A:", "raw": True}
    ).json()
    assert templated["prompt_eval_count"] == raw["prompt_eval_count"] < 15
    assert templated["response"] == raw["response"]
    shown = onnx_http.post("/api/show", json={"model": "tiny-go-template"}).json()
    assert shown["template"] == "Q: {{ .Prompt }} A:"


def test_format_is_applied_through_guidance(onnx_http):
    # Random weights write no sensible JSON; the output must still start as the schema says.
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {
        "model": TINY,
        "prompt": "n?",
        "format": schema,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 12},
    }
    answer = onnx_http.post("/api/generate", json=body).json()
    assert answer["response"].startswith('{"n": ')
    bad = onnx_http.post("/api/generate", json={**body, "format": {"type": "no-such-type"}})
    assert bad.status_code == 500 and bad.json()["error"].startswith(
        'invalid format: "{\\"type\\": \\"no-such-type\\"}"'
    )


def test_load_unload_and_keep_alive(onnx_http):
    loaded = onnx_http.post("/api/generate", json={"model": TINY, "keep_alive": "1m"}).json()
    assert (loaded["done"], loaded["done_reason"]) == (True, "load")
    running = next(m for m in onnx_http.get("/api/ps").json()["models"] if m["name"] == TINY)
    assert running["details"]["format"] == "onnx" and running["size"] > 6_000_000 and running["size_vram"] == 0
    unloaded = onnx_http.post("/api/chat", json={"model": TINY, "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert TINY not in [m["name"] for m in onnx_http.get("/api/ps").json()["models"]]
    onnx_http.post(
        "/api/generate",
        json={"model": TINY, "prompt": "hi", "keep_alive": 0, "stream": False, "options": {"num_predict": 1}},
    )
    assert TINY not in [m["name"] for m in onnx_http.get("/api/ps").json()["models"]]


def test_unload_removes_the_folder_view(onnx_http, onnx_server):
    def views() -> set[Path]:
        return set((onnx_server.log_path.parent / "tmp").glob("modelyard-view-*"))  # the server's TMPDIR

    onnx_http.post("/api/generate", json={"model": TINY, "keep_alive": 0})
    others = views()  # of other models still loaded
    onnx_http.post(
        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    )
    mine = views() - others
    assert len(mine) == 1
    onnx_http.post("/api/generate", json={"model": TINY, "keep_alive": 0})
    assert not any(view.exists() for view in mine)


CUDA_ERROR = "the onnx backend was asked for the cuda provider"


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Iterator[ServerProcess]:
    """The onnx backend told to use CUDA (MODELYARD_ONNX_PROVIDER), on this CPU-only build."""
    with ServerProcess(
        tmp_path_factory.mktemp("cuda") / "models", {**ONNX_ENV, "MODELYARD_ONNX_PROVIDER": "cuda"}
    ) as server:
        assert create_from_folder(server.url, TINY, tiny_folder).status_code == 200
        yield server


def test_cuda_on_the_cpu_build_is_a_clear_error(cuda_server, tiny_folder):
    import onnxruntime_genai as og

    if og.is_cuda_available():
        pytest.skip("this onnxruntime-genai build has CUDA")
    response = httpx.post(
        cuda_server.url + "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False}, timeout=60
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error.startswith(CUDA_ERROR) and "install modelyard[onnx-cuda]" in error
    # A model's PARAMETER provider overrides the server's choice, both ways.
    assert (
        create_from_folder(cuda_server.url, "tiny-cpu", tiny_folder, parameters={"provider": "cpu"}).status_code == 200
    )
    ok = httpx.post(
        cuda_server.url + "/api/generate",
        json={"model": "tiny-cpu", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    )
    assert ok.json()["eval_count"] == 2


def test_parameter_provider_cuda_is_a_clear_error(onnx_server, tiny_folder):
    import onnxruntime_genai as og

    if og.is_cuda_available():
        pytest.skip("this onnxruntime-genai build has CUDA")
    assert (
        create_from_folder(onnx_server.url, "tiny-cuda", tiny_folder, parameters={"provider": "cuda"}).status_code
        == 200
    )
    response = httpx.post(
        onnx_server.url + "/api/chat",
        json={"model": "tiny-cuda", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert response.status_code == 503 and response.json()["error"].startswith(CUDA_ERROR)
    assert "tiny-cuda:latest" not in [m["name"] for m in httpx.get(onnx_server.url + "/api/ps").json()["models"]]
