"""A llama.cpp server with the bundled SmolLM2 and test models made from it, one per module that asks.

The test models carry a Hermes-form TEMPLATE (Ollama's qwen2.5 template, hermes.gotmpl), since SmolLM2 was
not trained for tools; some name another call syntax with PARSER, or force calls with PARAMETER tool_choice.
The 20-try tool_choice loop and LangChain's standard tests run only when asked:
`uv run pytest tests/tools -m tool_loop -s`, `uv run pytest tests/tools -m langchain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.models import SMOLLM2

from modelyard_conformance.launcher import ServerProcess

HERMES_TEMPLATE = (Path(__file__).parent / "hermes.gotmpl").read_text()
# A template whose call syntax is its own tag: the parser reads it from the text after .ToolCalls.
OWN_TAG_TEMPLATE = (
    "{{ range .Messages }}{{ if .ToolCalls }}<functioncall> {{ range .ToolCalls }}"
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}'
    "{{ else }}{{ .Role }}: {{ .Content }}\n{{ end }}{{ end }}{{ if .Tools }}tools: {{ .Tools }}\n{{ end }}assistant: "
)


def create(client: httpx.Client, name: str, **fields) -> None:
    body = {"model": name, "from": SMOLLM2, "stream": False, **fields}
    response = client.post("/api/create", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("tools") / "models"
    with ServerProcess(models, {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": SMOLLM2}) as running:
        with httpx.Client(base_url=running.url, timeout=300) as client:
            create(client, "hermes-smol", template=HERMES_TEMPLATE)
            create(client, "smol-llama3", template=HERMES_TEMPLATE, parser="llama3")
            create(client, "smol-mistral", template=HERMES_TEMPLATE, parser="ministral")
            create(client, "smol-own-tag", template=OWN_TAG_TEMPLATE)
            create(client, "smol-functiongemma", template=HERMES_TEMPLATE, parser="functiongemma")
            # Clients that send no tool_choice (ollama-python, langchain-ollama): the model's PARAMETER forces it.
            create(client, "hermes-smol-agent", template=HERMES_TEMPLATE, parameters={"tool_choice": "required"})
        yield running


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """test_langchain.py runs only the standard tests it names in TOOL_TESTS."""
    kept = [
        item
        for item in items
        if getattr(getattr(item, "module", None), "TOOL_TESTS", (item.originalname,)).count(item.originalname)
    ]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
