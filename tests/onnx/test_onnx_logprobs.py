"""Log probabilities from ONNX Runtime GenAI's logits (the real SmolLM2, converted once and cached): greedy
picks the top-1 token of its own step, as on llama.cpp."""

from __future__ import annotations

import math

import httpx
import ollama


def test_greedy_tokens_are_their_steps_top_1(onnx_server, real_model) -> None:
    client = ollama.Client(host=onnx_server.url, timeout=120)
    try:
        answer = client.generate(
            model=real_model,
            prompt="The capital of France is",
            logprobs=True,
            top_logprobs=3,
            options={"temperature": 0, "num_predict": 8},
        )
    finally:
        client._client.close()
    entries = answer.logprobs or []
    assert len(entries) == answer.eval_count == 8
    assert "".join(entry.token for entry in entries) == answer.response
    for entry in entries:
        top = entry.top_logprobs or []
        assert len(top) == 3 and top[0].token == entry.token
        assert entry.logprob <= 0 and math.isclose(entry.logprob, top[0].logprob, abs_tol=1e-9)
        assert sum(math.exp(alternative.logprob) for alternative in top) <= 1 + 1e-9


def test_streamed_chunks_carry_their_tokens(onnx_server, real_model) -> None:
    body = {
        "model": real_model,
        "messages": [{"role": "user", "content": "Name a color."}],
        "logprobs": True,
        "options": {"temperature": 0, "num_predict": 6},
    }
    with httpx.stream("POST", onnx_server.url + "/api/chat", json=body, timeout=120) as response:
        chunks = [httpx.Response(200, content=line).json() for line in response.iter_lines() if line]
    texts = [chunk for chunk in chunks if chunk["message"]["content"]]
    assert texts
    for chunk in texts:
        assert "".join(entry["token"] for entry in chunk["logprobs"]) == chunk["message"]["content"]
    assert "logprobs" not in chunks[-1]
