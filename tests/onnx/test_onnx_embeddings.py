"""Embeddings on the onnx backend: onnxruntime-genai has no embeddings call, so its models do not advertise
the `embedding` capability and every embeddings route answers its API's 400 (docs/openai.md)."""

from __future__ import annotations

from conftest import TINY


def test_an_onnx_model_does_not_advertise_embeddings(onnx_http):
    shown = onnx_http.post("/api/show", json={"model": TINY}).json()
    assert "embedding" not in shown["capabilities"] and "completion" in shown["capabilities"]


def test_every_embeddings_route_answers_400_in_its_envelope(onnx_http):
    message = f'"{TINY}" does not support embeddings'
    for path, body in (("/api/embed", {"input": "hello"}), ("/api/embeddings", {"prompt": "hello"})):
        response = onnx_http.post(path, json={"model": TINY, **body})
        assert (response.status_code, response.json()) == (400, {"error": message}), path
    openai = onnx_http.post("/v1/embeddings", json={"model": TINY, "input": "hello"})
    assert openai.status_code == 400
    assert openai.json()["error"]["message"] == message
    assert openai.json()["error"]["type"] == "invalid_request_error"
