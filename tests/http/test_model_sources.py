"""Model sources beyond the store: a backend's own models (`Backend.models()`) listed by /api/tags, shown
by /api/show, run and reported by /api/ps; and remote models (a manifest naming another server's model)
created, listed and shown through real HTTP with the official client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import ollama
import pytest
from litestar.testing import TestClient

from modelyard.config import Settings
from modelyard.plugin import (
    Backend,
    Completion,
    Details,
    Done,
    Event,
    LoadedModel,
    LoadSpec,
    ModelView,
    Remote,
    TextDelta,
    hookimpl,
)
from modelyard.server import create_app
from modelyard_conformance.launcher import ServerProcess

SMOLLM2 = "smollm2:135m"
OFFERED = "far/away:7b"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def offer(name: str = OFFERED, **fields: Any) -> ModelView:
    return ModelView(
        name=name,
        format="offered",
        digest=f"digest-of-{name}",
        size=7_000,
        template="{{ .Prompt }}",
        parameters={"temperature": 0.25},
        details=Details(format="offered", family="toy", families=["toy"], parameter_size="7B"),
        source="offering",
        **fields,
    )


class OfferedModel(LoadedModel):
    size = 1_234
    context_length = 64

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        yield TextDelta("an offered answer")
        yield Done(reason="stop", prompt_eval_count=1, prompt_eval_duration=1, eval_count=1, eval_duration=1)


def offering_plugin(offers: list[ModelView]) -> object:
    """A plugin whose backend offers `offers` (the list may change while the server runs) and runs them."""

    class OfferingBackend(Backend):
        name: ClassVar[str] = "offering"
        priority: ClassVar[int] = 10

        def models(self) -> list[ModelView]:
            return list(offers)

        def serves(self, model: ModelView) -> bool:
            return model.source == self.name

        async def load(self, model: ModelView, spec: LoadSpec) -> LoadedModel:
            return OfferedModel()

    class OfferingPlugin:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            register(OfferingBackend)

    return OfferingPlugin()


@pytest.fixture
def offers() -> list[ModelView]:
    return [offer()]


@pytest.fixture
def client(tmp_path: Path, offers: list[ModelView]) -> Iterator[TestClient]:
    settings = Settings(models=tmp_path / "models", backends=("offering", "echo"), bundled_models=(SMOLLM2,))
    with TestClient(create_app(settings, extra_plugins=(offering_plugin(offers),))) as test_client:
        yield test_client


def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    return {model["name"]: model for model in client.get("/api/tags").json()["models"]}


def test_tags_lists_the_stored_models_then_the_offered_ones(client):
    models = client.get("/api/tags").json()["models"]
    assert [model["name"] for model in models] == [SMOLLM2, OFFERED]
    assert models[1] == {
        "name": OFFERED,
        "model": OFFERED,
        "modified_at": GO_ZERO_TIME,
        "size": 7_000,
        "digest": f"digest-of-{OFFERED}",
        "details": {
            "parent_model": "",
            "format": "offered",
            "family": "toy",
            "families": ["toy"],
            "parameter_size": "7B",
            "quantization_level": "",
        },
        "capabilities": ["completion"],
    }


def test_show_describes_an_offered_model_from_its_view(client):
    shown = client.post("/api/show", json={"model": OFFERED})
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["details"]["format"] == "offered" and body["details"]["parameter_size"] == "7B"
    assert body["template"] == "{{ .Prompt }}"
    assert body["parameters"] == "temperature                    0.25"
    assert body["model_info"] == {} and body["modified_at"] == GO_ZERO_TIME
    assert body["capabilities"] == ["completion"]
    assert "FROM far/away:7b\nTEMPLATE {{ .Prompt }}\nPARAMETER temperature 0.25\n" in body["modelfile"]
    assert "remote_host" not in body and "tensors" not in body


def test_an_offered_model_is_found_by_name_runs_and_shows_in_ps(client):
    answer = client.post("/api/generate", json={"model": "Far/Away:7B", "prompt": "hi", "stream": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == "an offered answer"
    loaded = client.get("/api/ps").json()["models"]
    assert [(m["name"], m["size"], m["digest"], m["details"]["format"]) for m in loaded] == [
        (OFFERED, 1_234, f"digest-of-{OFFERED}", "offered")
    ]
    assert client.post("/api/show", json={"model": "missing/model:1b"}).json() == {
        "error": "model 'missing/model:1b' not found"
    }


def test_a_stored_model_wins_over_an_offer_of_the_same_name(client, offers):
    offers.append(offer("SmolLM2:135M"))
    assert list(listed(client)) == [SMOLLM2, OFFERED]
    assert client.post("/api/show", json={"model": SMOLLM2}).json()["details"]["format"] == "gguf"
    answer = client.post("/api/generate", json={"model": SMOLLM2, "prompt": "hello you", "stream": False})
    assert answer.json()["response"] == "hello you"  # echo ran the stored model, not the offering backend


def test_tags_reuses_its_answer_until_the_offers_change(client, offers):
    first = client.get("/api/tags").content
    answer = client.app.state.tags_answer
    assert client.get("/api/tags").content == first
    assert client.app.state.tags_answer is answer  # nothing changed: nothing was read or encoded again
    offers.append(offer("later:1b"))
    assert list(listed(client)) == [SMOLLM2, OFFERED, "later:1b"]
    assert client.app.state.tags_answer is not answer


def test_an_offered_remote_model_carries_its_host_and_name(client, offers):
    offers[:] = [offer(remote=Remote(host="http://gpu-box:11434", model="llama3.2:3b"))]
    entry = listed(client)[OFFERED]
    assert list(entry)[:4] == ["name", "model", "remote_model", "remote_host"]  # Ollama's key order
    assert (entry["remote_model"], entry["remote_host"]) == ("llama3.2:3b", "http://gpu-box:11434")
    shown = client.post("/api/show", json={"model": OFFERED}).json()
    assert (shown["remote_model"], shown["remote_host"]) == ("llama3.2:3b", "http://gpu-box:11434")


# --- remote models in the store, over real HTTP ----------------------------------------------------


@pytest.fixture
def remote_model(echo_server: ServerProcess) -> Iterator[str]:
    """`far-llama`, created over HTTP as a model on another server (the official client cannot send
    remote_host), removed afterwards: the echo server is shared."""
    body = {
        "model": "far-llama",
        "from": "llama3.2:3b",
        "remote_host": "gpu-box",
        "system": "Be brief.",
        "parameters": {"temperature": 0.5},
        "stream": False,
    }
    created = httpx.post(echo_server.url + "/api/create", json=body, timeout=30)
    assert created.json() == {"status": "success"}
    yield "far-llama:latest"
    httpx.request("DELETE", echo_server.url + "/api/delete", json={"model": "far-llama"}, timeout=30)


def test_a_remote_model_is_created_listed_and_shown(echo_server, remote_model):
    client = ollama.Client(host=echo_server.url)
    try:
        listing = {model.model: model for model in client.list().models}
        assert remote_model in listing and SMOLLM2 in listing
        assert listing[remote_model].details is not None and listing[remote_model].details.format == ""
        shown = client.show(remote_model)
        assert shown.modelinfo == {} and shown.parameters == "temperature                    0.5"
        with pytest.raises(ollama.ResponseError) as refused:
            client.generate(model=remote_model, prompt="hi")
        assert (refused.value.status_code, refused.value.error) == (400, "this server cannot run this remote model")
    finally:
        client._client.close()
    # What the official client's types leave out, as Ollama writes it.
    entry = next(m for m in httpx.get(echo_server.url + "/api/tags").json()["models"] if m["name"] == remote_model)
    assert list(entry)[:4] == ["name", "model", "remote_model", "remote_host"]
    assert (entry["remote_model"], entry["remote_host"]) == ("llama3.2:3b", "http://gpu-box:11434")
    assert entry["capabilities"] == []  # no backend here runs it
    shown = httpx.post(echo_server.url + "/api/show", json={"model": remote_model}).json()
    assert (shown["remote_model"], shown["remote_host"], shown["system"]) == (
        "llama3.2:3b",
        "http://gpu-box:11434",
        "Be brief.",
    )
    assert "\nFROM \nSYSTEM Be brief.\n" in shown["modelfile"] and "tensors" not in shown


def test_a_remote_host_that_cannot_be_read_is_refused(echo_server):
    body = {"model": "bad-remote", "from": "llama3.2", "remote_host": "http://gpu-box:port", "stream": False}
    refused = httpx.post(echo_server.url + "/api/create", json=body, timeout=30)
    assert (refused.status_code, refused.json()) == (400, {"error": "bad remote"})
