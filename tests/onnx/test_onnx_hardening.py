"""The onnx backend under the hardening rules: a folder that cannot load says which and why, and
structured output writes properties in the schema's order (llguidance, like llama.cpp's grammar)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import ollama
from conftest import TINY, create_from_folder
from pydantic import BaseModel


class Joke(BaseModel):
    setup: str
    punchline: str


class PunchlineFirst(BaseModel):
    punchline: str
    setup: str


def first_key(url: str, model: str, schema: dict) -> str:
    client = ollama.Client(host=url)
    try:
        answer = client.generate(
            model=model,
            prompt="Tell me a joke about cats.",
            format=schema,
            options={"temperature": 0, "num_predict": 12},
        )
    finally:
        client._client.close()
    match = re.match(r'\s*\{\s*"(\w+)"', answer.response)
    assert match, answer.response
    return match.group(1)


def test_structured_output_follows_the_schemas_order(onnx_server, real_model):
    assert first_key(onnx_server.url, real_model, Joke.model_json_schema()) == "setup"
    assert first_key(onnx_server.url, real_model, PunchlineFirst.model_json_schema()) == "punchline"


def test_a_folder_that_cannot_load_names_itself_and_the_engines_reason(
    onnx_server, onnx_http, tiny_folder: Path, tmp_path: Path
):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    weights = broken / "model.onnx.data"  # create checks model.onnx itself, not its external weights
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    created = create_from_folder(onnx_server.url, "broken-onnx", broken)
    assert created.status_code == 200, created.text

    response = onnx_http.post("/api/generate", json={"model": "broken-onnx", "prompt": "hi"})
    assert response.status_code == 500
    message = response.json()["error"]
    assert re.match(r"onnxruntime-genai could not load broken-onnx:latest from /\S+: \S", message), message
    # The server stays usable for the models that load.
    again = onnx_http.post(
        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert again.status_code == 200, again.text


def test_a_64_bit_seed_is_taken_and_still_repeats(onnx_http):
    # Some clients send 64-bit random seeds; the binding takes a C int (it answered an obscure 500).
    body = {
        "model": TINY,
        "prompt": "hi",
        "stream": False,
        "options": {"seed": 2**40 + 7, "temperature": 1.0, "num_predict": 6},
    }
    first = onnx_http.post("/api/generate", json=body)
    assert first.status_code == 200, first.text
    second = onnx_http.post("/api/generate", json=body)
    assert second.json()["response"] == first.json()["response"]
