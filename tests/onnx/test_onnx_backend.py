"""The onnx backend in process, for what HTTP cannot reach on this machine: its settings, the provider
check against builds with and without CUDA or DirectML, a missing onnxruntime-genai, a build without
guidance, and how Ollama's options become search options."""

from __future__ import annotations

import asyncio
import sys
import types

import msgspec
import pytest

from modelyard.errors import BackendUnavailable, BadRequest
from modelyard.runtime.contract import Constraint
from modelyard.runtime.options import Options
from modelyard.runtime.plugins import Backends, build_plugin_manager
from modelyard_onnx import OnnxBackend, OnnxSettings, check_provider
from modelyard_onnx.engine import Engine


def discover(env: dict[str, str]) -> OnnxBackend:
    return Backends.discover(build_plugin_manager(), ("onnx",), env).backends[0]


def test_settings_come_from_the_environment_and_reject_unknown_providers():
    assert discover({}).settings.provider == "cpu"
    assert discover({"MODELYARD_ONNX_PROVIDER": "cuda"}).settings.provider == "cuda"
    with pytest.raises(msgspec.ValidationError, match="provider"):
        discover({"MODELYARD_ONNX_PROVIDER": "tpu"})
    with pytest.raises(TypeError):
        OnnxSettings(providers="cpu")


def fake_og(**available: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        **{f"is_{name}_available": (lambda value=value: value) for name, value in available.items()}
    )


def test_provider_check_names_the_missing_build():
    check_provider(fake_og(), "cpu")
    check_provider(fake_og(cuda=True), "cuda")
    check_provider(fake_og(dml=True), "dml")
    with pytest.raises(BackendUnavailable, match=r"no CUDA support: install modelyard\[onnx-cuda\]"):
        check_provider(fake_og(cuda=False, dml=True), "cuda")
    with pytest.raises(BackendUnavailable, match=r"no DML support: install modelyard\[onnx-directml\]"):
        check_provider(fake_og(cuda=True, dml=False), "dml")
    with pytest.raises(BackendUnavailable):
        check_provider(fake_og(), "dml")  # a build that predates the probe


def test_the_real_build_answers_the_probes():
    import onnxruntime_genai as og

    assert isinstance(og.is_cuda_available(), bool) and isinstance(og.is_dml_available(), bool)


def test_missing_engine_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'modelyard\[onnx\]'"):
        asyncio.run(OnnxBackend(OnnxSettings()).load(object(), Options()))


def bare_model() -> Engine:
    return Engine(og=None, engine=None, tokenizer=types.SimpleNamespace(eos_token_ids=[2]), n_ctx=4096)


def test_options_become_search_options():
    model = bare_model()
    sampled = model._search_options(Options(temperature=0.7, top_k=20, top_p=0.5, repeat_penalty=1.1, seed=5), 100)
    assert sampled == {
        "max_length": 100,
        "repetition_penalty": 1.1,
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.5,
        "random_seed": 5,
    }
    greedy = model._search_options(Options(temperature=0), 50)
    assert greedy == {"max_length": 50, "repetition_penalty": 1.0, "do_sample": False}
    unbounded = model._search_options(Options(temperature=1.0, top_k=-1, top_p=0.0), 10)
    assert (unbounded["top_k"], unbounded["top_p"]) == (0, 1.0)


def test_a_build_without_guidance_refuses_format_and_forced_calls_with_a_400():
    model = bare_model()
    model.og = types.SimpleNamespace(GeneratorParams=type("GeneratorParams", (), {}))
    model.engine = None
    model._set_constraint(object(), None)  # nothing to enforce: nothing asked of the build
    for constraint in (Constraint(schema="json"), Constraint(schema={"type": "object"}, prefix="<tool_call>")):
        with pytest.raises(BadRequest, match="forced tool calls need guidance, which this onnxruntime-genai build"):
            model._set_constraint(object(), constraint)


def test_the_provider_parameter_is_declared_for_the_store():
    assert msgspec.convert("dml", OnnxBackend.parameters["provider"]) == "dml"


def test_schemas_allow_only_the_listed_properties_as_ollama_does():
    from modelyard_onnx import closed_objects

    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}, "c": {"type": "object"}},
        "$defs": {"d": {"properties": {"e": {}}, "additionalProperties": True}},
        "anyOf": [{"properties": {"f": {}}}],
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["c"]  # no properties: any object
    assert closed["$defs"]["d"]["additionalProperties"] is True  # said explicitly
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the request's schema is left as it was
    named = closed_objects({"properties": {"properties": {"type": "string"}}})
    assert named["properties"] == {"properties": {"type": "string"}}  # a property named "properties"
    data = {"const": {"properties": {}}, "enum": [{"properties": {}}]}
    assert closed_objects(data) == data  # values, not schemas
