"""The format registry: which format detects the files of an /api/create, how `Management.create`
dispatches to it, what a stored model asks its format, a third format registered by a test plugin, models
in a format no installed plugin reads, remote hosts as Ollama stores them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pluggy
import pytest

from modelyard.api.ollama.wire import CreateRequest, ProgressResponse
from modelyard.errors import BadRequest
from modelyard.plugin import (
    TITLE_ANNOTATION,
    Blob,
    Details,
    Layer,
    ModelConfig,
    ModelFormat,
    NewModel,
    StoredModel,
    hookimpl,
)
from modelyard.runtime import hookspecs
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import Scheduler
from modelyard.store.formats import NOT_RECOGNISED, Formats
from modelyard.store.formats.gguf import GGUFFormat
from modelyard.store.formats.remote import remote_url
from modelyard.store.local import CONFIG_MEDIA_TYPE, MODEL_MEDIA_TYPE, Manifest, ModelStore
from modelyard.store.manage import Management
from modelyard.store.names import ModelName
from modelyard_onnx.format import ONNX_FILE_MEDIA_TYPE, OnnxFolderFormat

TINY_FOLDER = Path(__file__).parents[1] / "fixtures" / "onnx" / "smollm2-tiny"
TOY_MEDIA_TYPE = "application/vnd.test.toy.file"


# --- a third format, registered by a test plugin ------------------------------------------------------


class ToyFormat(ModelFormat):
    """A toy model: one `toy.json` ({"family": ..., "parameters": n, "template": ...})."""

    name = "toy"
    label = "TOY"
    media_types = frozenset({TOY_MEDIA_TYPE})
    create_status = "parsing toy model"

    def detects(self, files: Mapping[str, Blob]) -> bool:
        return "toy.json" in files

    def create(self, files: Mapping[str, Blob]) -> NewModel:
        toy = json.loads(files["toy.json"].path.read_bytes())
        if "family" not in toy:
            raise BadRequest("toy.json needs a family")
        blob = files["toy.json"]
        layer = Layer(
            mediaType=TOY_MEDIA_TYPE, digest=blob.digest, size=blob.size, annotations={TITLE_ANNOTATION: "toy.json"}
        )
        config = ModelConfig(model_format="toy", model_family=toy["family"], model_type=str(toy["parameters"]))
        return NewModel(layers=[layer], config=config)

    def metadata(self, model: StoredModel) -> Mapping[str, Any]:
        return json.loads(model.files["toy.json"].read_bytes())

    def details(self, model: StoredModel) -> Details:
        return Details(format="toy", family=model.config.model_family, parameter_size=f"{model.config.model_type} toys")

    def model_info(self, model: StoredModel, verbose: bool) -> dict[str, Any]:
        return {"general.architecture": model.config.model_family, "toy.verbose": verbose}

    def chat_template(self, model: StoredModel) -> str:
        return str(model.metadata.get("template", ""))


class ToyPlugin:
    @hookimpl
    def register_formats(self, register: Any) -> None:
        register(ToyFormat)


class NotAFormat:
    name = "nope"


class BrokenPlugin:
    @hookimpl
    def register_formats(self, register: Any) -> None:
        register(NotAFormat)


def manager_with(*plugins: object) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("modelyard")
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin)
    return manager


# --- helpers ----------------------------------------------------------------------------------------


def tiny_gguf(path: Path, architecture: str = "llama", parameters: int = 135_000_000) -> Path:
    """A GGUF file with a header only: architecture, parameter count, file type Q4_1, one tensor."""

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value)) + value.encode()

    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 4)
    data += text("general.architecture") + struct.pack("<I", 8) + text(architecture)
    data += text("general.parameter_count") + struct.pack("<IQ", 10, parameters)
    data += text("general.file_type") + struct.pack("<II", 4, 3)
    data += text("tokenizer.chat_template") + struct.pack("<I", 8) + text("{{ messages }}")
    data += text("blk.0.ffn_up.weight") + struct.pack("<IQQIQ", 2, 64, 32, 3, 0)
    path.write_bytes(data)
    return path


def upload(store: ModelStore, path: Path) -> str:
    return store.write_blob(path.read_bytes()).digest


def management(store: ModelStore) -> Management:
    return Management(store, Backends([]), Scheduler(300), prune=True)


def create(store: ModelStore, **fields: Any) -> list[ProgressResponse]:
    request = msgspec.convert({"stream": False, **fields}, CreateRequest)

    async def run() -> list[ProgressResponse]:
        return [update async for update in management(store).create(request)]

    return asyncio.run(run())


def stored(store: ModelStore, name: str) -> StoredModel:
    model = store.find(ModelName.parse(name))
    assert model is not None
    return model


@pytest.fixture
def toy_store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", Formats.discover(manager_with(ToyPlugin(), OnnxFolderPlugin())))


class OnnxFolderPlugin:
    @hookimpl
    def register_formats(self, register: Any) -> None:
        register(OnnxFolderFormat)


def toy_file(tmp_path: Path, **content: Any) -> Path:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(content))
    return path


# --- detection --------------------------------------------------------------------------------------


def test_each_format_detects_its_own_files_and_folders_come_before_gguf(toy_store, tmp_path):
    gguf = Blob(digest="sha256:" + "0" * 64, path=tiny_gguf(tmp_path / "m.gguf"))
    readme = tmp_path / "README.md"
    readme.write_text("not a model")
    other = Blob(digest="sha256:" + "1" * 64, path=readme)
    formats = toy_store.formats
    assert [f.name for f in formats.formats] == ["onnx", "toy", "gguf", "remote"]
    assert formats.detect({"model.gguf": gguf}).name == "gguf"
    assert formats.detect({"./genai_config.json": other, "model.onnx": other}).name == "onnx"
    assert formats.detect({"genai_config.json": other, "stray.gguf": gguf}).name == "onnx"
    assert formats.detect({"toy.json": other}).name == "toy"
    with pytest.raises(BadRequest, match=f"^{NOT_RECOGNISED}$"):
        formats.detect({"README.md": other})


def test_a_format_class_that_is_not_a_model_format_is_refused():
    with pytest.raises(ValueError, match="is not a format"):
        Formats.discover(manager_with(BrokenPlugin()))


def test_the_installed_formats_include_the_onnx_plugins_without_its_engine():
    assert {"gguf", "remote", "onnx"} <= {f.name for f in Formats.installed().formats}
    probe = "import sys, modelyard_onnx.format; print('onnxruntime_genai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- dispatch: /api/create through the registry ----------------------------------------------------


def test_create_dispatches_to_the_third_format_and_the_model_asks_it(toy_store, tmp_path):
    digest = upload(toy_store, toy_file(tmp_path, family="toyish", parameters=7, template="<t>"))
    statuses = [update.status for update in create(toy_store, model="toy1", files={"toy.json": digest})]
    assert statuses == ["parsing toy model", "writing manifest", "success"]
    model = stored(toy_store, "toy1")
    assert [(layer.mediaType, layer.title) for layer in model.manifest.layers] == [(TOY_MEDIA_TYPE, "toy.json")]
    config = msgspec.json.decode(toy_store.blob_path(model.manifest.config.digest).read_bytes())
    assert config["model_format"] == "toy" and config["rootfs"]["diff_ids"] == [digest]
    assert model.format == "toy" and isinstance(model.model_format, ToyFormat)
    assert model.details() == Details(format="toy", family="toyish", parameter_size="7 toys")
    assert model.model_info(verbose=True) == {"general.architecture": "toyish", "toy.verbose": True}
    assert model.chat_template == "<t>"
    view = model.view
    assert (view.format, view.name, view.digest) == ("toy", "toy1:latest", model.digest)
    assert view.files == {"toy.json": toy_store.blob_path(digest)}
    assert view.metadata == {"family": "toyish", "parameters": 7, "template": "<t>"}
    assert view.details.parameter_size == "7 toys"


def test_a_format_refuses_its_files_before_anything_is_written(toy_store, tmp_path):
    digest = upload(toy_store, toy_file(tmp_path, parameters=7))
    with pytest.raises(BadRequest, match="toy.json needs a family"):
        create(toy_store, model="toy1", files={"toy.json": digest})
    assert toy_store.list() == []


def test_what_a_format_does_not_support_is_refused_with_its_label(toy_store, tmp_path):
    digest = upload(toy_store, toy_file(tmp_path, family="toyish", parameters=7))
    gguf = upload(toy_store, tiny_gguf(tmp_path / "m.gguf"))
    with pytest.raises(BadRequest, match=r"^quantization is only supported for GGUF models \(this model is TOY\)$"):
        create(toy_store, model="t", files={"toy.json": digest}, quantize="q4_K_M")
    create(toy_store, model="toy1", files={"toy.json": digest})
    with pytest.raises(BadRequest, match=r"^adapters are only supported for GGUF models \(this model is TOY\)$"):
        create(toy_store, model="t", **{"from": "toy1"}, adapters={"a.gguf": gguf})


def test_new_files_of_another_format_replace_the_base_models_files_and_keep_the_rest(toy_store, tmp_path):
    gguf = upload(toy_store, tiny_gguf(tmp_path / "m.gguf"))
    create(toy_store, model="base", files={"m.gguf": gguf}, adapters={"a.gguf": gguf}, system="Be brief.")
    toy = upload(toy_store, toy_file(tmp_path, family="toyish", parameters=7))
    statuses = [
        update.status for update in create(toy_store, model="derived", **{"from": "base"}, files={"toy.json": toy})
    ]
    assert statuses[0] == "parsing toy model"
    derived = stored(toy_store, "derived")
    # The GGUF layer goes (another format's files), the adapter too (toy models take none), SYSTEM stays.
    assert [layer.mediaType for layer in derived.manifest.layers] == [
        TOY_MEDIA_TYPE,
        "application/vnd.ollama.image.system",
    ]
    assert derived.format == "toy" and derived.system == "Be brief."


def test_gguf_create_makes_one_model_layer_and_ollamas_config(toy_store, tmp_path):
    gguf = upload(toy_store, tiny_gguf(tmp_path / "m.gguf"))
    assert [u.status for u in create(toy_store, model="g", files={"m.gguf": gguf})][0] == "parsing GGUF"
    model = stored(toy_store, "g")
    assert [(layer.mediaType, layer.digest) for layer in model.manifest.layers] == [(MODEL_MEDIA_TYPE, gguf)]
    config = json.loads(toy_store.blob_path(model.manifest.config.digest).read_bytes())
    assert config == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "135M",
        "file_type": "Q4_1",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [gguf]},
    }
    assert isinstance(model.model_format, GGUFFormat)
    assert model.view.files == {"model": toy_store.blob_path(gguf)}
    assert model.view.metadata["general.architecture"] == "llama"
    assert model.chat_template == "{{ messages }}"
    info = model.model_info(verbose=False)
    assert info["general.parameter_count"] == 135_000_000 and "tokenizer.chat_template" not in info
    assert [t.name for t in model.model_format.tensors(model) or []] == ["blk.0.ffn_up.weight"]


def test_onnx_folder_create_through_the_registry(toy_store):
    files = {
        path.relative_to(TINY_FOLDER).as_posix(): upload(toy_store, path)
        for path in sorted(TINY_FOLDER.rglob("*"))
        if path.is_file()
    }
    assert [u.status for u in create(toy_store, model="tiny", files=files)][0] == "parsing ONNX model"
    model = stored(toy_store, "tiny")
    assert {layer.mediaType for layer in model.manifest.layers} == {ONNX_FILE_MEDIA_TYPE}
    assert sorted(model.view.files) == sorted(files)
    assert model.view.metadata["model"]["type"] == "llama"  # genai_config.json
    assert model.details() == Details(
        format="onnx", family="llama", families=["llama"], parameter_size="3.22M", quantization_level="int4"
    )
    assert model.model_path == model.files["model.onnx"]


# --- stored models of a format nobody installed, remote models ---------------------------------------


def test_a_model_in_a_format_no_plugin_reads_is_shown_from_its_config(tmp_path):
    store = ModelStore(tmp_path / "models", Formats(Formats.builtin()))
    weights = store.write_blob(b"safetensors weights")
    config = ModelConfig(model_format="safetensors", model_family="qwen3", model_type="4B", file_type="BF16")
    config_layer = store.write_blob(msgspec.json.encode(config))
    manifest = Manifest(
        config=Layer(mediaType=CONFIG_MEDIA_TYPE, digest=config_layer.digest, size=config_layer.size),
        layers=[Layer(mediaType="application/vnd.ollama.image.tensor", digest=weights.digest, size=weights.size)],
    )
    store.write_manifest(ModelName.parse("qwen3:4b"), manifest)
    model = stored(store, "qwen3:4b")
    assert model.details() == Details(
        format="safetensors", family="qwen3", parameter_size="4B", quantization_level="BF16"
    )
    assert (model.view.format, model.view.files, dict(model.view.metadata)) == ("safetensors", {}, {})
    assert model.model_info(verbose=False) == {} and model.chat_template == ""
    with pytest.raises(FileNotFoundError):
        model.model_path  # noqa: B018


def test_a_remote_model_is_stored_with_its_host_and_name_and_no_weights(toy_store):
    create(toy_store, model="far", **{"from": "llama3.2:3b"}, remote_host="gpu-box", system="Be brief.")
    model = stored(toy_store, "far")
    config = json.loads(toy_store.blob_path(model.manifest.config.digest).read_bytes())
    assert (config["remote_host"], config["remote_model"]) == ("http://gpu-box:11434", "llama3.2:3b")
    assert [layer.mediaType for layer in model.manifest.layers] == ["application/vnd.ollama.image.system"]
    view = model.view
    assert (view.format, view.remote, view.files, view.system) == (
        "remote",
        model.remote,
        {},
        "Be brief.",
    )
    assert view.remote is not None and (view.remote.host, view.remote.model) == ("http://gpu-box:11434", "llama3.2:3b")
    assert model.details() == Details()  # Ollama shows a remote model's config: empty unless the creator said more


@pytest.mark.parametrize(
    ("given", "stored_as"),
    [
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        ("https://models.example.com/", "https://models.example.com:11434"),
        ("http://10.0.0.2:11434/ollama//v1/", "http://10.0.0.2:11434/ollama/v1"),
        ("/api", "http://localhost:11434/api"),
        ("ollama.com", "https://ollama.com:443"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_remote_hosts_are_stored_as_ollama_stores_them(given, stored_as):
    assert remote_url(given) == stored_as


def test_a_remote_host_that_cannot_be_read_is_a_bad_request():
    with pytest.raises(BadRequest, match="^bad remote$"):
        remote_url("http://gpu-box:port")


def test_a_server_creates_lists_and_shows_models_of_a_plugins_format(tmp_path):
    from litestar.testing import TestClient

    from modelyard.config import Settings
    from modelyard.server import create_app

    toy = toy_file(tmp_path, family="toyish", parameters=7, template="<t>")
    digest = "sha256:" + hashlib.sha256(toy.read_bytes()).hexdigest()
    settings = Settings(models=tmp_path / "models", backends=("echo",), bundled_models=())
    with TestClient(create_app(settings, extra_plugins=(ToyPlugin(),))) as client:
        assert client.post(f"/api/blobs/{digest}", content=toy.read_bytes()).status_code == 201
        created = client.post("/api/create", json={"model": "toy1", "files": {"toy.json": digest}})
        assert [json.loads(line)["status"] for line in created.text.splitlines()][0] == "parsing toy model"
        [listed] = client.get("/api/tags").json()["models"]
        assert listed["details"]["format"] == "toy" and listed["details"]["parameter_size"] == "7 toys"
        shown = client.post("/api/show", json={"model": "toy1"}).json()
        assert shown["template"] == "<t>" and shown["model_info"] == {
            "general.architecture": "toyish",
            "toy.verbose": False,
        }
