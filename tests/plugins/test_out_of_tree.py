"""A plugin written outside the repository against `modelyard.plugin` works in a real server, and the
in-repo plugins import nothing else from core either."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ollama
import pytest

from modelyard_conformance.launcher import ServerProcess, free_port

ROOT = Path(__file__).parents[2]
OUT_OF_TREE = ROOT / "tests" / "fixtures" / "outoftree"
MODEL = "smollm2:135m"


@contextmanager
def running(models: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A started server, stopped (and its log closed) even when it fails to start."""
    server = ServerProcess(models, env)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def with_fixture_on_path(env: dict[str, str]) -> dict[str, str]:
    """The environment of a server that finds the shout plugin by PYTHONPATH alone (nothing installed)."""
    path = [str(OUT_OF_TREE), os.environ.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(part for part in path if part)}


@pytest.fixture(scope="module")
def shout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """shout for models named shout*, echo for the rest."""
    models = tmp_path_factory.mktemp("shout") / "models"
    env = with_fixture_on_path({"MODELYARD_BACKENDS": "shout,echo", "MODELYARD_BUNDLED_MODELS": MODEL})
    with running(models, env) as server:
        yield server


@pytest.fixture
def client(shout_server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=shout_server.url)
    yield client
    client._client.close()


def test_an_out_of_tree_plugin_serves_the_models_it_claims(client):
    client.create("shout-demo", from_=MODEL, system="Answer briefly.")

    generated = client.generate("shout-demo", "why is the sky blue")
    assert generated.response == "WHY IS THE SKY BLUE"
    assert generated.done_reason == "stop"
    assert generated.eval_count == 5

    streamed = list(client.generate("shout-demo", "stop me here now", stream=True, options={"stop": ["HERE"]}))
    assert "".join(part.response for part in streamed) == "STOP ME "
    assert streamed[-1].done

    chat = client.chat("shout-demo", messages=[{"role": "user", "content": "hello there"}])
    assert chat.message.role == "assistant"
    assert chat.message.content == "HELLO THERE"

    # The model it does not claim goes to the next backend, echo, which answers as it was asked.
    assert client.generate(MODEL, "why is the sky blue").response == "why is the sky blue"


def test_the_plugin_is_listed_with_its_models(client, shout_server):
    client.create("shout-listed", from_=MODEL)
    names = {model.model for model in client.list().models}
    assert "shout-listed:latest" in names
    assert client.generate("shout-listed", "loud", options={"num_predict": 1}).response == "LOUD"
    loaded = {model.model for model in client.ps().models}
    assert "shout-listed:latest" in loaded


def test_the_plugin_alone_serves_every_model(tmp_path):
    env = with_fixture_on_path(
        {"MODELYARD_BACKENDS": "shout", "MODELYARD_BUNDLED_MODELS": MODEL, "MODELYARD_SHOUT_PREFIX": ""}
    )
    with running(tmp_path / "models", env) as server:
        client = ollama.Client(host=server.url)
        try:
            assert client.generate(MODEL, "quiet words").response == "QUIET WORDS"
        finally:
            client._client.close()


def test_a_misspelled_plugin_setting_stops_the_server(tmp_path):
    env = with_fixture_on_path(
        {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
            "MODELYARD_MODELS": str(tmp_path / "models"),
            "MODELYARD_BACKENDS": "shout,echo",
            "MODELYARD_BUNDLED_MODELS": "none",
            "MODELYARD_SHOUT_PREFX": "loud",
        }
    )
    # A server that started anyway would never exit: the timeout fails the test.
    finished = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode != 0
    assert "MODELYARD_SHOUT_PREFX" in finished.stderr
    assert "MODELYARD_SHOUT_PREFIX" in finished.stderr  # and it names the setting there is


def core_imports(path: Path) -> list[str]:
    """`path:line module` for each import of a core module other than modelyard.plugin."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from modelyard import x` imports the submodule or a name of the package: core either way.
            modules = [node.module]
        else:
            continue
        for module in modules:
            if (module == "modelyard" or module.startswith("modelyard.")) and module != "modelyard.plugin":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {module}")
    return found


@pytest.mark.parametrize(
    "plugin",
    sorted([*(ROOT / "plugins").glob("modelyard_*"), OUT_OF_TREE / "shout_backend"]),
    ids=lambda path: path.name,
)
def test_plugins_import_only_modelyard_plugin_from_core(plugin):
    files = sorted(plugin.rglob("*.py"))
    assert files, f"{plugin} holds no Python files"
    offending = [line for path in files for line in core_imports(path)]
    assert not offending, "plugins import core only through modelyard.plugin; these do not:\n" + "\n".join(offending)
