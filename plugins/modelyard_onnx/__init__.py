"""The ONNX Runtime GenAI backend. Registered like any third-party plugin.

It serves ONNX GenAI folders (genai_config.json, model.onnx and its weights, tokenizer files, chat
template) that entered the store through /api/create; at load time the model's files (ModelView.files)
are linked into a temporary folder (FolderView), which onnxruntime-genai reads. The execution provider
(cpu, cuda, dml) comes from MODELYARD_ONNX_PROVIDER or the model's `PARAMETER provider`; the three builds
of onnxruntime-genai provide the same module, one per install (`modelyard[onnx]`, `[onnx-cuda]`,
`[onnx-directml]`).

Each loaded model runs in an engine process of its own (engine.py: the binding keeps the GIL while it
computes, which would stop the server's event loop). There Ollama's options map to search options, tokens
stream through `TokenizerStream` into the core's `TokenLoop` (budget, stop strings, counts), and stop
between tokens when the client goes away; `format` uses the build's guidance (llguidance). docs/onnx.md
lists the options it ignores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar, Literal

import msgspec

from modelyard.plugin import (
    COMPLETION,
    MIN_CONTEXT,
    TOOLS,
    Backend,
    BackendUnavailable,
    BadRequest,
    Completion,
    Event,
    FolderView,
    InternalError,
    LoadedModel,
    LoadSpec,
    Logprobs,
    ModelView,
    Options,
    TextDelta,
    hookimpl,
    wait_uncancellable,
)

from .engine import (
    HEADER,
    Failed,
    Finished,
    Generate,
    Open,
    Piece,
    Probabilities,
    Ready,
    Reply,
    Stop,
    check_provider,
    closed_objects,
    frame,
    raise_failure,
)
from .format import folder_chat_template

__all__ = ["OnnxBackend", "OnnxModel", "OnnxSettings", "check_provider", "closed_objects"]

Provider = Literal["cpu", "cuda", "dml"]

INSTALL_HINT = (
    "the onnx backend needs onnxruntime-genai: pip install 'modelyard[onnx]' (or [onnx-cuda], [onnx-directml])"
)


class OnnxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """MODELYARD_ONNX_<FIELD> environment variables."""

    provider: Provider = "cpu"  # a model's `PARAMETER provider` overrides it
    # Prompt tokens evaluated per engine call (0: the whole prompt in one): a client that leaves during
    # a long prompt stops it after the chunk being computed.
    prefill_chunk: int = 64


class OnnxBackend(Backend):
    name: ClassVar[str] = "onnx"
    priority: ClassVar[int] = 11  # a real engine; after llama.cpp (they serve different formats)
    Settings: ClassVar[type[msgspec.Struct]] = OnnxSettings
    # Modelfile parameters of this backend, stored with the model (see manage.typed_parameter).
    parameters: ClassVar[Mapping[str, Any]] = {"provider": Provider}
    settings: OnnxSettings

    def serves(self, model: ModelView) -> bool:
        return model.format == "onnx"

    def capabilities(self, model: ModelView) -> frozenset[str]:
        found = {COMPLETION}
        if "tools" in folder_chat_template(model.files):
            found.add(TOOLS)
        return frozenset(found)

    def provider(self, model: ModelView) -> Provider:
        chosen = model.parameters.get("provider", self.settings.provider)
        try:
            return msgspec.convert(chosen, Provider)
        except msgspec.ValidationError:
            raise BadRequest(f"unknown onnx provider {chosen!r} in {model.name} (cpu, cuda or dml)") from None

    def load_spec(self, model: ModelView, options: Options) -> LoadSpec:
        trained = int(model.metadata.get("model", {}).get("context_length") or options.num_ctx)
        return LoadSpec(
            context_length=max(MIN_CONTEXT, min(options.num_ctx, trained)),
            threads=options.num_thread,
            main_gpu=options.main_gpu,
            extra=(("provider", self.provider(model)),),
        )

    def memory_estimate(self, model: ModelView, spec: LoadSpec) -> int:
        """Every file of the folder (the weights dominate) and the KV cache for the whole context."""
        weights = sum(path.stat().st_size for path in model.files.values())
        return weights + _kv_cache_bytes(model.metadata, spec.context_length, dict(spec.extra)["provider"])

    async def load(self, model: ModelView, spec: LoadSpec) -> OnnxModel:
        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise BackendUnavailable(INSTALL_HINT)
        provider = dict(spec.extra)["provider"]
        view = FolderView(model.files)
        opening = Open(
            str(view.path),
            provider,
            spec.threads,
            spec.main_gpu,
            spec.context_length,
            self.settings.prefill_chunk,
            model.name,
        )
        loaded = OnnxModel(opening, view, model.name, self.memory_estimate(model, spec))
        try:
            await loaded.start()
        except BaseException:
            await loaded.close()
            raise
        return loaded


def _kv_cache_bytes(config: Mapping[str, Any], n_ctx: int, provider: str) -> int:
    """K and V for every layer, from genai_config.json's decoder."""
    decoder = config.get("model", {}).get("decoder", {})
    layers = int(decoder.get("num_hidden_layers") or 0)
    kv_heads = int(decoder.get("num_key_value_heads") or decoder.get("num_attention_heads") or 0)
    head_size = int(decoder.get("head_size") or 0)
    element = 4 if provider == "cpu" else 2  # fp32 on the CPU, fp16 on accelerators
    return 2 * element * n_ctx * layers * kv_heads * head_size


class EngineGone(Exception):
    """The engine process ended (a crash, or killed)."""


class OnnxModel(LoadedModel):
    """A model loaded in an engine process (engine.py), which this side talks to over its pipes."""

    def __init__(self, opening: Open, view: FolderView, name: str, size: int) -> None:
        self.opening = opening
        self.view = view
        self.name = name
        self.context_length = opening.n_ctx
        self.size = size
        self.size_vram = 0 if opening.provider == "cpu" else self.size
        self.process: asyncio.subprocess.Process | None = None
        # A task reads the engine's replies into a queue, so that a request cancelled while it waits
        # never leaves half a message read; None in the queue: the engine ended.
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the engine process and load the model in it."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modelyard_onnx.engine", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._replies = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_replies(self.process.stdout, self._replies))
        try:
            await self._send(self.opening)
            answer = await self._receive()
        except EngineGone:
            raise InternalError(f"onnxruntime-genai could not load {self.name}: {self._exit_status()}") from None
        if isinstance(answer, Failed):
            raise_failure(answer)
        if not isinstance(answer, Ready):
            raise InternalError(f"the onnx engine answered {answer!r} to its start")

    def _exit_status(self) -> str:
        code = self.process.returncode if self.process is not None else None
        return "its engine process ended" + (f" (exit status {code})" if code is not None else "")

    async def _send(self, message: msgspec.Struct) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(frame(message))
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EngineGone from exc

    @staticmethod
    async def _read_replies(stdout: asyncio.StreamReader | None, replies: asyncio.Queue[Any]) -> None:
        assert stdout is not None
        decoder = msgspec.msgpack.Decoder(Reply)
        try:
            while True:
                (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
                replies.put_nowait(decoder.decode(await stdout.readexactly(size)))
        except asyncio.IncompleteReadError:
            replies.put_nowait(None)

    async def _receive(self) -> Any:
        assert self.process is not None
        reply = await self._replies.get()
        if reply is None:
            self._replies.put_nowait(None)  # every later read sees the end too
            await self.process.wait()
            raise EngineGone
        return reply

    async def generate(self, completion: Completion) -> AsyncGenerator[Event]:
        if self.process is None or self.process.returncode is not None or self._reader is None or self._reader.done():
            await self.start()  # the engine ended since the last request: load the model again
        finished = False
        try:
            await self._send(Generate(completion))
            while True:
                reply = await self._receive()
                if isinstance(reply, Piece):
                    yield TextDelta(reply.text)
                    continue
                if isinstance(reply, Probabilities):
                    yield Logprobs(reply.tokens)
                    continue
                finished = True
                if isinstance(reply, Failed):
                    raise_failure(reply)
                if not isinstance(reply, Finished):
                    raise InternalError(f"the onnx engine answered {reply!r} to a request")
                yield reply.done
                return
        except EngineGone:
            finished = True
            raise InternalError(
                f"onnxruntime-genai stopped while generating with {self.name}: {self._exit_status()}"
            ) from None
        finally:
            if not finished:  # the client went away: stop the engine, and wait until it is idle
                await wait_uncancellable(asyncio.ensure_future(self._stop_generating()))

    async def _stop_generating(self) -> None:
        try:
            await self._send(Stop())
            while not isinstance(await self._receive(), (Finished, Failed)):
                pass
        except EngineGone:
            pass

    async def close(self) -> None:
        process, self.process = self.process, None
        if self._reader is not None:
            self._reader.cancel()
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # the end of its input ends the engine
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.view.close()


@hookimpl
def register_backends(register: Any) -> None:
    register(OnnxBackend)
