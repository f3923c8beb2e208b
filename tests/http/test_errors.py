"""The error catalogue: `{"error": ...}` with the reference's status, never Litestar's own body."""

from __future__ import annotations

import httpx
import pytest

MODEL = "smollm2:135m"


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_empty_body(http, path):
    response = http.post(path, content=b"")
    assert response.status_code == 400
    assert error_of(response) == "missing request body"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_malformed_json(http, path):
    response = http.post(path, content=b'{"model": ')
    assert response.status_code == 400
    assert "malformed" in error_of(response).lower() or "truncated" in error_of(response).lower()


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "hi", "stream": "yes"}, "$.stream"),
        ("/api/generate", {"model": MODEL, "prompt": 5}, "$.prompt"),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": ["a"]}]}, "$.messages[0].content"),
        ("/api/chat", {"model": MODEL, "messages": "hi"}, "$.messages"),
    ],
)
def test_wrong_field_types(http, path, body, where):
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert where in error_of(response)


def test_generate_without_model_is_404(http):
    response = http.post("/api/generate", json={"prompt": "hi"})
    assert response.status_code == 404
    assert error_of(response) == "model '' not found"


def test_chat_without_model_is_400(http):
    response = http.post("/api/chat", json={"messages": []})
    assert response.status_code == 400
    assert error_of(response) == "model is required"


def test_show_without_model_is_400(http):
    response = http.post("/api/show", json={})
    assert response.status_code == 400
    assert error_of(response) == "model is required"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_unknown_model_is_404(http, path):
    response = http.post(
        path, json={"model": "no-such-model", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 404
    assert error_of(response) == "model 'no-such-model' not found"


def test_show_unknown_model_names_the_normalised_name(http):
    response = http.post("/api/show", json={"model": "no-such-model"})
    assert response.status_code == 404
    assert error_of(response) == "model 'no-such-model:latest' not found"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_invalid_model_name_is_400(http, path):
    response = http.post(path, json={"model": "../../etc/passwd", "prompt": "hi", "messages": []})
    assert response.status_code == 400
    assert error_of(response) == "invalid model name"


@pytest.mark.parametrize(
    ("keep_alive", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("abc", 'time: invalid duration "abc"'),
        (True, "Unsupported type: 'bool'"),
    ],
)
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_bad_keep_alive(http, path, keep_alive, message):
    response = http.post(path, json={"model": MODEL, "keep_alive": keep_alive})
    assert response.status_code == 400
    assert error_of(response) == message


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_bad_format_is_500(http, path):
    body = {"model": MODEL, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "format": "xml"}
    response = http.post(path, json=body)
    assert response.status_code == 500
    assert error_of(response) == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'


@pytest.mark.parametrize("value", [-1, 21])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_top_logprobs_out_of_range(http, path, value):
    response = http.post(path, json={"model": MODEL, "prompt": "hi", "top_logprobs": value})
    assert response.status_code == 400
    assert error_of(response) == "top_logprobs must be between 0 and 20"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_option_of_the_wrong_type_is_500(http, path):
    body = {
        "model": MODEL,
        "prompt": "hi",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": "hot"},
    }
    response = http.post(path, json=body)
    assert response.status_code == 500
    assert error_of(response) == 'option "temperature" must be of type float32'


def test_legacy_options_are_accepted(http):
    options = {
        "num_predict": 2,
        "mirostat": 0,
        "tfs_z": 1.0,
        "penalize_newline": True,
        "numa": False,
        "low_vram": False,
        "f16_kv": True,
    }
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "options": options})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_thinking_on_a_model_that_cannot(http, path):
    response = http.post(
        path, json={"model": MODEL, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "think": True}
    )
    assert response.status_code == 400
    assert error_of(response) == f'"{MODEL}" does not support thinking'


def test_think_false_is_accepted(http):
    response = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "hi", "think": False, "stream": False, "options": {"num_predict": 2}},
    )
    assert response.status_code == 200


def test_invalid_think_value(http):
    response = http.post(
        "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "think": "extreme"}
    )
    assert response.status_code == 400
    assert (
        error_of(response) == 'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'
    )


def test_tools_on_a_model_without_a_tool_template(http):
    # The bundled SmolLM2's template reads .Tools; one without it cannot carry tools.
    created = http.post(
        "/api/create", json={"model": "no-tools", "from": MODEL, "template": "{{ .Prompt }}", "stream": False}
    )
    assert created.status_code == 200
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    response = http.post(
        "/api/chat", json={"model": "no-tools", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    )
    assert response.status_code == 400
    assert error_of(response) == "registry.ollama.ai/library/no-tools:latest does not support tools"


def test_empty_tools_list_is_accepted(http):
    # ollama-python always sends "tools": [].
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [],
        "stream": False,
        "options": {"num_predict": 2},
    }
    assert http.post("/api/chat", json=body).status_code == 200


def test_images_on_a_model_without_vision(http):
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "What is this?", "images": ["aGVsbG8="]})
    assert response.status_code == 400
    assert "does not support images" in error_of(response)


def test_raw_with_system_is_rejected(http):
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "raw": True, "system": "be brief"})
    assert response.status_code == 400
    assert error_of(response) == "raw mode does not support template, system, or context"


def test_suffix_on_a_model_without_insert(http):
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "def f(", "suffix": "return x"})
    assert response.status_code == 400
    assert error_of(response) == "registry.ollama.ai/library/smollm2:135m does not support insert"


def test_unknown_path_and_wrong_method_answer_like_gin(http):
    missing = http.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = http.get("/api/generate")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_unknown_fields_are_ignored(http):
    body = {
        "model": MODEL,
        "prompt": "hi",
        "stream": False,
        "max_tokens": 3,
        "whatever": {"x": 1},
        "options": {"num_predict": 2},
    }
    assert http.post("/api/generate", json=body).status_code == 200


def test_null_body_is_an_empty_request(http):
    response = http.post("/api/generate", content=b"null")
    assert response.status_code == 404
    assert error_of(response) == "model '' not found"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_truncate_false_refuses_a_prompt_longer_than_the_context(http, path):
    long = "word " * 400
    body = {
        "model": MODEL,
        "prompt": long,
        "messages": [{"role": "user", "content": long}],
        "truncate": False,
        "options": {"num_ctx": 128},
    }
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert error_of(response) == "the input length exceeds the context length"
    truncated = http.post(
        path, json={**body, "truncate": True, "stream": False, "options": {"num_ctx": 128, "num_predict": 2}}
    ).json()
    assert truncated["prompt_eval_count"] < 128
