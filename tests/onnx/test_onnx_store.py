"""ONNX GenAI folders in the store: /api/create from uploaded files and `modelyard create` with
`FROM ./folder`, what /api/tags and /api/show report, the manifest's file names, the folder view a backend
loads from, bad folders, and push/pull through a real registry keeping the file names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import TINY, create_from_folder, upload_folder
from support.registry import LocalRegistry

from modelyard.store.local import TITLE_ANNOTATION, Manifest, ModelConfig, ModelStore
from modelyard.store.names import ModelName
from modelyard_conformance.launcher import ServerProcess
from modelyard_onnx.format import ONNX_FILE_MEDIA_TYPE, onnx_model_config

FILES = [
    "chat_template.jinja",
    "genai_config.json",
    "model.onnx",
    "model.onnx.data",
    "tokenizer.json",
    "tokenizer_config.json",
]


def store_of(server: ServerProcess) -> ModelStore:
    return ModelStore(server.log_path.parent / "models")


def test_tags_and_show_report_format_family_size_and_precision(onnx_http):
    listed = next(m for m in onnx_http.get("/api/tags").json()["models"] if m["name"] == TINY)
    details = {
        "parent_model": "",
        "format": "onnx",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.22M",
        "quantization_level": "int4",
    }
    assert listed["details"] == details
    assert listed["capabilities"] == ["completion"]
    shown = onnx_http.post("/api/show", json={"model": TINY}).json()
    assert shown["details"] == details
    assert shown["capabilities"] == ["completion"]


def test_manifest_has_one_titled_layer_per_file_and_an_onnx_config(onnx_server, tiny_folder):
    model = store_of(onnx_server).find(ModelName.parse(TINY))
    layers = model.manifest.layers
    assert [layer.title for layer in layers] == FILES
    assert all(layer.mediaType == ONNX_FILE_MEDIA_TYPE for layer in layers)
    assert all(layer.size == (tiny_folder / layer.title).stat().st_size for layer in layers)
    raw = json.loads(model.manifest_path.read_bytes())
    assert raw["layers"][0]["annotations"] == {TITLE_ANNOTATION: "chat_template.jinja"}
    assert "annotations" not in raw["config"]
    config = msgspec.json.decode(model.store.blob_path(model.manifest.config.digest).read_bytes(), type=ModelConfig)
    assert (config.model_format, config.model_family, config.model_type, config.file_type) == (
        "onnx",
        "llama",
        "3.22M",
        "int4",
    )
    assert (config.context_length, config.embedding_length) == (8192, 64)
    assert config.rootfs.diff_ids == [layer.digest for layer in layers]


def test_folder_view_links_the_blobs_and_goes_away_on_close(onnx_server, tiny_folder):
    model = store_of(onnx_server).find(ModelName.parse(TINY))
    with model.folder_view() as view:
        names = sorted(p.name for p in view.path.iterdir())
        assert names == FILES
        weights = view.path / "model.onnx.data"
        assert weights.is_symlink() and weights.resolve() == model.files["model.onnx.data"].resolve()
        assert weights.read_bytes() == (tiny_folder / "model.onnx.data").read_bytes()
    assert not view.path.exists()
    assert model.files["model.onnx.data"].is_file()  # the blob stays


def test_parameter_count_and_precision_come_from_the_graph(tiny_folder):
    config = onnx_model_config({p.name: p for p in tiny_folder.iterdir()})
    assert (config.model_type, config.file_type, config.model_family) == ("3.22M", "int4", "llama")


def test_model_info_and_template_for_show(onnx_server, tiny_folder):
    model = store_of(onnx_server).find(ModelName.parse(TINY))
    info = model.model_info(verbose=False)
    assert info["general.architecture"] == "llama" and info["general.parameter_count"] == 3_219_776
    assert (info["llama.context_length"], info["llama.embedding_length"], info["llama.block_count"]) == (8192, 64, 2)
    assert model.chat_template == (tiny_folder / "chat_template.jinja").read_text()


def test_cli_create_from_a_folder_with_parameters(onnx_server, tiny_folder, tmp_path):
    shutil.copytree(tiny_folder, tmp_path / "smol")
    (tmp_path / "smol" / ".DS_Store").write_text("hidden files are not sent")
    (tmp_path / "Modelfile").write_text(
        "FROM ./smol\nPARAMETER temperature 0\nPARAMETER provider cpu\nSYSTEM Be brief.\n"
    )
    env = {**os.environ, "OLLAMA_HOST": onnx_server.url}
    command = [sys.executable, "-m", "modelyard", "create", "tiny-cli", "-f", str(tmp_path / "Modelfile")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown = httpx.post(onnx_server.url + "/api/show", json={"model": "tiny-cli"}).json()
    assert shown["details"]["format"] == "onnx"
    assert shown["system"] == "Be brief."
    assert 'provider                       "cpu"' in shown["parameters"]
    assert "PARAMETER provider cpu" in shown["modelfile"]
    model = store_of(onnx_server).find(ModelName.parse("tiny-cli"))
    assert sorted(model.files) == FILES
    answer = httpx.post(
        onnx_server.url + "/api/generate",
        json={"model": "tiny-cli", "prompt": "hi", "stream": False, "options": {"num_predict": 3}},
        timeout=60,
    )
    assert answer.json()["eval_count"] == 3


def test_create_from_an_onnx_base_keeps_the_files(onnx_http):
    created = onnx_http.post(
        "/api/create", json={"model": "tiny-derived", "from": TINY, "system": "Hi.", "stream": False}
    )
    assert created.status_code == 200, created.text
    derived = onnx_http.post("/api/show", json={"model": "tiny-derived"}).json()
    assert derived["details"]["format"] == "onnx" and derived["system"] == "Hi."


def _bad_create(url: str, folder: Path, **fields: object) -> tuple[int, str]:
    response = create_from_folder(url, "bad", folder, **fields)
    return response.status_code, response.json().get("error", "")


def test_bad_folders_and_requests_are_refused_before_anything_changes(onnx_server, tiny_folder, tmp_path):
    url = onnx_server.url
    missing_weights = tmp_path / "no-data"
    shutil.copytree(tiny_folder, missing_weights)
    (missing_weights / "model.onnx.data").unlink()
    assert _bad_create(url, missing_weights) == (
        400,
        "not an ONNX Runtime GenAI model: model.onnx keeps its weights in model.onnx.data, which is not among the files",
    )

    no_graph = tmp_path / "no-graph"
    shutil.copytree(tiny_folder, no_graph)
    (no_graph / "model.onnx").unlink()
    status, error = _bad_create(url, no_graph)
    assert status == 400 and "genai_config.json names model.onnx, which is not among the files" in error

    not_genai = tmp_path / "not-genai"
    shutil.copytree(tiny_folder, not_genai)
    (not_genai / "genai_config.json").write_text('{"search": {}}')
    status, error = _bad_create(url, not_genai)
    assert status == 400 and "needs model.type" in error

    assert _bad_create(url, tiny_folder, parameters={"provider": "tpu"})[0] == 400
    assert _bad_create(url, tiny_folder, parameters={"providers": "cpu"}) == (400, "unknown parameter 'providers'")
    assert _bad_create(url, tiny_folder, quantize="q4_K_M") == (
        400,
        "quantization is only supported for GGUF models (this model is ONNX)",
    )
    files = upload_folder(url, tiny_folder)
    body = {"model": "bad", "files": {**files, "../genai_config.json": files["genai_config.json"]}, "stream": False}
    assert httpx.post(url + "/api/create", json=body).json() == {"error": "file path must be relative"}
    assert "bad:latest" not in [m["name"] for m in httpx.get(url + "/api/tags").json()["models"]]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    local = LocalRegistry(tmp_path_factory.mktemp("registry"))
    yield local
    local.stop()


def test_push_and_pull_keep_the_file_names(onnx_server, registry, tmp_path):
    remote = f"{registry.host}/library/tiny-onnx:v1"
    url = onnx_server.url
    assert httpx.post(url + "/api/copy", json={"source": TINY, "destination": remote}).status_code == 200
    pushed = httpx.post(url + "/api/push", json={"model": remote, "insecure": True, "stream": False}, timeout=120)
    assert pushed.json() == {"status": "success"}
    stored = httpx.get(
        f"http://{registry.host}/v2/library/tiny-onnx/manifests/v1",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    ).json()
    assert [layer["annotations"][TITLE_ANNOTATION] for layer in stored["layers"]] == FILES
    # Pull into a fresh server and store: every blob comes over the wire.
    with ServerProcess(
        tmp_path / "models", {"MODELYARD_BACKENDS": "onnx", "MODELYARD_BUNDLED_MODELS": "none"}
    ) as other:
        pulled = httpx.post(
            other.url + "/api/pull", json={"model": remote, "insecure": True, "stream": False}, timeout=120
        )
        assert pulled.json() == {"status": "success"}
        model = store_of(other).find(ModelName.parse(remote))
        assert (
            msgspec.json.decode(model.manifest_path.read_bytes(), type=Manifest)
            == store_of(onnx_server).find(ModelName.parse(TINY)).manifest
        )
        assert sorted(model.files) == FILES
        answer = httpx.post(
            other.url + "/api/generate",
            json={"model": remote, "prompt": "hi", "stream": False, "options": {"num_predict": 4}},
            timeout=60,
        )
        assert answer.json()["eval_count"] == 4
