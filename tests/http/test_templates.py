"""Ollama's Go templates: generate's `template` field, and models whose manifest has a TEMPLATE layer
(as in a store written by real Ollama)."""

from __future__ import annotations

import hashlib
import json

from modelyard.store.local import ModelStore

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "seed": 3, "num_predict": 12}
CHATML = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


def test_template_field_renders_the_prompt(http):
    templated = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "Name a color.", "template": CHATML, "stream": False, "options": GREEDY},
    ).json()
    raw = http.post(
        "/api/generate",
        json={
            "model": MODEL,
            "prompt": "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n",
            "raw": True,
            "stream": False,
            "options": GREEDY,
        },
    ).json()
    assert templated["response"] == raw["response"]
    assert templated["prompt_eval_count"] == raw["prompt_eval_count"]


def test_a_template_that_does_not_parse_is_500(http):
    response = http.post(
        "/api/generate", json={"model": MODEL, "prompt": "hi", "template": "{{ if .Prompt }}", "stream": False}
    )
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

    chat = {
        "model": "pirate",
        "messages": [{"role": "user", "content": "Who are you?"}],
        "stream": False,
        "options": {"num_predict": 24, "seed": 1},
    }
    answer = http.post("/api/chat", json=chat).json()
    assert "Arr" not in answer["message"]["content"]
    # The same conversation rendered by hand, raw: the template and the system layer made this prompt.
    rendered = "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    raw = http.post(
        "/api/generate",
        json={
            "model": MODEL,
            "prompt": rendered,
            "raw": True,
            "stream": False,
            "options": {"num_predict": 24, "seed": 1, "temperature": 0, "stop": ["<|im_end|>", "Arr"]},
        },
    ).json()
    assert answer["message"]["content"] == raw["response"]
    assert answer["prompt_eval_count"] == raw["prompt_eval_count"]


# --- the bundled SmolLM2 as Ollama's library has it -----------------------------------------------

# The built-in tools Open WebUI sends with every chat (trimmed to two).
OPEN_WEBUI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_timestamp",
            "description": "Get the current Unix timestamp in seconds.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web for a query.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "The query."}},
                "required": ["query"],
            },
        },
    },
]
COUNTING = [
    {"role": "user", "content": "Count from 1 to 10, separated by commas."},
    {"role": "assistant", "content": "1, 2, 3, 4,"},
]


def test_a_chat_with_tools_is_answered(ollama_client):
    """Open WebUI's first chat: Ollama's smollm2:135m template renders tools, so the request is accepted."""
    answer = ollama_client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        tools=OPEN_WEBUI_TOOLS,
        options={"num_predict": 24, "seed": 1},
    )
    assert answer.done and answer.eval_count > 0
    assert answer.message.content or answer.message.tool_calls is not None


def test_show_reports_the_library_template_parameters_and_modelfile(ollama_client, http):
    shown = ollama_client.show(MODEL)
    assert shown.template.startswith("{{- if .Messages }}")
    assert "<tools>{{ .Tools }}</tools>" in shown.template
    # The official client's ShowResponse has no `system` field; Ollama's answer does.
    assert (
        http.post("/api/show", json={"model": MODEL}).json()["system"]
        == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert [line.split() for line in shown.parameters.splitlines()] == [
        ["stop", '"<|im_start|>"'],
        ["stop", '"<|im_end|>"'],
    ]
    assert shown.capabilities == ["completion", "tools"]
    lines = shown.modelfile.splitlines()
    assert lines[4].startswith("FROM ") and lines[5] == 'TEMPLATE """{{- if .Messages }}'
    assert "PARAMETER stop <|im_start|>" in lines and "PARAMETER stop <|im_end|>" in lines
    assert "SYSTEM You are a helpful AI assistant named SmolLM, trained by Hugging Face" in lines


def test_the_bundled_manifest_has_template_and_params_layers(llama_server):
    store = ModelStore(llama_server.log_path.parent / "models")
    manifest = json.loads((store.manifests / "registry.ollama.ai/library/smollm2/135m").read_bytes())
    kinds = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert kinds == ["model", "template", "system", "params"]
    params = next(layer for layer in manifest["layers"] if layer["mediaType"].endswith(".params"))
    assert json.loads(store.blob_path(params["digest"]).read_bytes()) == {"stop": ["<|im_start|>", "<|im_end|>"]}


def test_a_trailing_assistant_message_is_continued(ollama_client):
    """Ollama leaves the last assistant turn open: the answer goes on from "4," instead of starting anew."""
    answer = ollama_client.chat(model=MODEL, messages=COUNTING, options={"temperature": 0, "num_predict": 16})
    text = answer.message.content
    assert "5" in text
    assert not text.lstrip().startswith("1,")


def test_a_jinja_template_continues_a_trailing_assistant_message(http, ollama_client, llama_server):
    """A model from the bundled GGUF with no TEMPLATE uses the GGUF's Jinja template; it continues too."""
    store = ModelStore(llama_server.log_path.parent / "models")
    manifest = json.loads((store.manifests / "registry.ollama.ai/library/smollm2/135m").read_bytes())
    weights = next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"].endswith(".model"))
    created = http.post(
        "/api/create", json={"model": "smollm2-jinja", "files": {"model.gguf": weights}, "stream": False}
    )
    assert created.status_code == 200, created.text
    shown = ollama_client.show("smollm2-jinja")
    assert "{% for message in messages %}" in shown.template  # the GGUF's own template
    answer = ollama_client.chat(model="smollm2-jinja", messages=COUNTING, options={"temperature": 0, "num_predict": 16})
    assert "5" in answer.message.content
    assert not answer.message.content.lstrip().startswith("1,")
    # Continued means no new turn: the prompt is shorter than the same chat answered anew.
    anew = ollama_client.chat(
        model="smollm2-jinja", messages=[*COUNTING, {"role": "user", "content": "Go on."}], options={"num_predict": 1}
    )
    assert answer.prompt_eval_count < anew.prompt_eval_count
