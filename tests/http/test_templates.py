"""Ollama's Go templates: generate's `template` field, and models whose manifest has a TEMPLATE layer
(as in a store written by real Ollama)."""

from __future__ import annotations

import hashlib
import json

from modelyard.store import ModelStore

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "seed": 3, "num_predict": 12}
CHATML = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


def test_template_field_renders_the_prompt(http):
    templated = http.post(
        "/api/generate", json={"model": MODEL, "prompt": "Name a color.", "template": CHATML, "stream": False, "options": GREEDY}
    ).json()
    raw = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n", "raw": True, "stream": False, "options": GREEDY},
    ).json()
    assert templated["response"] == raw["response"]
    assert templated["prompt_eval_count"] == raw["prompt_eval_count"]


def test_a_template_that_does_not_parse_is_500(http):
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "template": "{{ if .Prompt }}", "stream": False})
    assert response.status_code == 500
    assert response.json()["error"].startswith("template:")


def _blob(store: ModelStore, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.blobs.mkdir(parents=True, exist_ok=True)
    store.blob_path(digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def test_a_model_with_ollama_template_system_and_parameter_layers(http, llama_server):
    """A manifest as Ollama writes it: the template, system prompt and stop parameter are honoured."""
    store = ModelStore(llama_server.log_path.parent / "models")
    base = json.loads((store.manifests / "registry.ollama.ai/library/smollm2/135m").read_bytes())
    messages_template = (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )
    layers = [layer for layer in base["layers"] if layer["mediaType"].endswith(".model")]
    for media_type, data in (
        ("template", messages_template.encode()),
        ("system", b"You are a pirate."),
        ("params", json.dumps({"stop": ["<|im_end|>", "Arr"], "temperature": 0}).encode()),
    ):
        layers.append({"mediaType": f"application/vnd.ollama.image.{media_type}", **_blob(store, data)})
    manifest = {**base, "layers": layers}
    path = store.manifests / "registry.ollama.ai/library/pirate/latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))

    shown = http.post("/api/show", json={"model": "pirate"}).json()
    assert shown["template"] == messages_template
    assert shown["system"] == "You are a pirate."
    assert '"Arr"' in shown["parameters"] and "temperature" in shown["parameters"]

    chat = {"model": "pirate", "messages": [{"role": "user", "content": "Who are you?"}], "stream": False, "options": {"num_predict": 24, "seed": 1}}
    answer = http.post("/api/chat", json=chat).json()
    assert "Arr" not in answer["message"]["content"]
    # The same conversation rendered by hand, raw: the template and the system layer made this prompt.
    rendered = "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    raw = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": rendered, "raw": True, "stream": False, "options": {"num_predict": 24, "seed": 1, "temperature": 0, "stop": ["<|im_end|>", "Arr"]}},
    ).json()
    assert answer["message"]["content"] == raw["response"]
    assert answer["prompt_eval_count"] == raw["prompt_eval_count"]
