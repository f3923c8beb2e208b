"""Core behaviour with in-process backends: streaming errors, plugin discovery, hook documentation."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from litestar.testing import TestClient

from modelyard.config import Settings
from modelyard.plugin import (
    Backend,
    Completion,
    Event,
    InternalError,
    LoadedModel,
    LoadSpec,
    ModelView,
    TextDelta,
    TokenLoop,
    hookimpl,
)
from modelyard.runtime import hookspecs
from modelyard.runtime.plugins import Backends, build_plugin_manager
from modelyard.server import create_app

MODEL = "smollm2:135m"


class FailingSettings(msgspec.Struct, forbid_unknown_fields=True):
    fail_after: int = 1


class FailingModel(LoadedModel):
    context_length = 128

    def __init__(self, fail_after: int) -> None:
        self.fail_after = fail_after

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        loop = TokenLoop(completion, self.context_length)
        loop.fit([0])
        for index in range(self.fail_after):
            yield TextDelta(loop.push(index, f"word{index} "))
        raise InternalError("the engine fell over")


class FailingBackend(Backend):
    name: ClassVar[str] = "failing"
    Settings: ClassVar[type[msgspec.Struct]] = FailingSettings
    settings: FailingSettings

    def serves(self, model: ModelView) -> bool:
        return True

    async def load(self, model: ModelView, spec: LoadSpec) -> FailingModel:
        return FailingModel(self.settings.fail_after)


class FailingPlugin:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register(FailingBackend)


def client_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int) -> TestClient:
    monkeypatch.setenv("MODELYARD_FAILING_FAIL_AFTER", str(fail_after))
    settings = Settings(models=tmp_path / "models", backends=("failing",), bundled_models=(MODEL,))
    return TestClient(create_app(settings, extra_plugins=(FailingPlugin(),)))


def test_an_error_after_streaming_started_is_a_last_error_line(tmp_path, monkeypatch):
    with client_for(tmp_path, monkeypatch, fail_after=2) as client:
        response = client.post("/api/generate", json={"model": MODEL, "prompt": "hi"})
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("response") for line in lines[:2]] == ["word0 ", "word1 "]
    assert lines[-1] == {"error": "the engine fell over"}


def test_an_error_before_the_first_chunk_gets_its_status(tmp_path, monkeypatch):
    with client_for(tmp_path, monkeypatch, fail_after=0) as client:
        streamed = client.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        single = client.post(
            "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        )
    for response in (streamed, single):
        assert response.status_code == 500
        assert response.json() == {"error": "the engine fell over"}


def test_a_failed_request_releases_the_model(tmp_path, monkeypatch):
    with client_for(tmp_path, monkeypatch, fail_after=0) as client:
        for _ in range(3):  # would hang on the second if the first kept the model's slot
            assert (
                client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}).status_code == 500
            )


def test_in_repo_backends_are_entry_points_like_third_party_ones():
    names = {entry_point.name for entry_point in importlib.metadata.entry_points(group="modelyard")}
    assert {"llamacpp", "echo"} <= names


def test_backends_are_ordered_real_engines_first():
    names = [b.name for b in Backends.discover(build_plugin_manager()).backends]
    assert names[-1] == "echo"  # the fallback serves any model, so it comes last
    assert "llamacpp" in names[:-1]


def test_choosing_an_unknown_backend_fails_clearly():
    with pytest.raises(ValueError, match="unknown backend"):
        Backends.discover(build_plugin_manager(), ("nope",))


def test_backend_settings_come_from_the_environment():
    backends = Backends.discover(build_plugin_manager(), ("echo",), env={"MODELYARD_ECHO_DELAY": "0.5"})
    assert backends.backends[0].settings.delay == 0.5


def test_every_hook_is_documented_and_tested():
    hooks = [name for name, value in vars(hookspecs).items() if getattr(value, "modelyard_spec", None) is not None]
    assert hooks == ["register_backends", "register_formats"]
    this_file = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    docs = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    for hook in hooks:
        assert inspect.getdoc(getattr(hookspecs, hook))
        assert hook in docs, f"docs/plugins.md does not document {hook}"
        assert f"def {hook}" in this_file, f"no unit test registers a {hook} implementation"
