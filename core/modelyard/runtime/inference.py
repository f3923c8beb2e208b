"""/api/generate and /api/chat: request validation in Ollama's order, then the stream of response chunks.

Each request becomes one async generator of wire chunks. Everything that can fail with a status (bad
input, unknown model, loading) happens before its first chunk; the server awaits that chunk before it
opens the response, and the generator's `finally` closes the engine stream and releases the model.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import msgspec
from msgspec import UNSET

from modelyard.api.ollama.wire import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    Message,
    ResponseMessage,
)
from modelyard.errors import BadRequest, NotFound
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.contract import (
    COMPLETION,
    INSERT,
    THINKING,
    TOOLS,
    VISION,
    Backend,
    Completion,
    Done,
    ModelView,
    TextDelta,
)
from modelyard.runtime.options import Format, Options, merge_options, parse_format, parse_keep_alive, parse_options
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import Lease, Scheduler
from modelyard.templates.prompt import model_capabilities, render_go_template

THINK_LEVELS = ("high", "medium", "low", "max")


class UtcClock:
    """Go's time.Now().UTC() in RFC 3339 with nanoseconds, trailing zeros trimmed.

    The seconds part is formatted once per second: this runs for every streamed token.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        seconds, fraction = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._prefix = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        digits = f"{fraction:09d}".rstrip("0")
        return f"{self._prefix}.{digits}Z" if digits else f"{self._prefix}Z"


def _check_top_logprobs(value: int | None) -> None:
    if value is not None and not 0 <= value <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")


def _check_think(think: bool | str | None, model_field: str, capabilities: frozenset[str]) -> None:
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise BadRequest(f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)')
    if think not in (None, False) and THINKING not in capabilities:
        raise BadRequest(f'"{model_field}" does not support thinking')


def _check_images(images: list[str], model_field: str, capabilities: frozenset[str]) -> None:
    if not images:
        return
    for image in images:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"illegal base64 data in image: {exc}") from exc
    if VISION not in capabilities:
        raise BadRequest(f'"{model_field}" does not support images: the model has no vision capability')


class Inference:
    def __init__(self, catalog: ModelCatalog, backends: Backends, scheduler: Scheduler, context_length: int) -> None:
        self.catalog = catalog
        self.backends = backends
        self.scheduler = scheduler
        self.context_length = context_length  # num_ctx when neither the model nor the request sets it
        self.clock = UtcClock()

    def find_model(self, requested: str, *, missing_is_not_found: bool) -> ModelView:
        """The stored model a request names, with the errors of Ollama's generate/chat handlers."""
        if not requested:
            if missing_is_not_found:
                raise NotFound("model '' not found")
            raise BadRequest("model is required")
        model = self.catalog.find(requested)
        if model is None:
            raise NotFound(f"model '{requested}' not found")
        return model

    def _backend(
        self, model: ModelView, requested: str, verb: str, think: bool | str | None, images: list[str]
    ) -> tuple[Backend, frozenset[str]]:
        """The backend that runs the model, after the capability checks both endpoints share."""
        backend = self.backends.for_model(model)
        capabilities = model_capabilities(model, backend)
        if COMPLETION not in capabilities:
            raise BadRequest(f'"{requested}" does not support {verb}')
        _check_think(think, requested, capabilities)
        _check_images(images, requested, capabilities)
        return backend, capabilities

    async def _lease(
        self,
        model: ModelView,
        backend: Backend,
        raw_options: dict[str, Any] | None,
        raw_format: Any,
        keep_alive: float | None,
    ) -> tuple[Lease, Options, Format]:
        """Options (defaults < model PARAMETERs < request) and format checked, then the model leased."""
        request_options = parse_options(raw_options)
        format_ = parse_format(raw_format)
        declared = backend.parameters  # a backend's own Modelfile parameters
        model_options = {key: value for key, value in model.parameters.items() if key not in declared}
        options = merge_options({"num_ctx": self.context_length}, parse_options(model_options), request_options)
        return await self.scheduler.acquire(model, backend, options, keep_alive), options, format_

    async def generate(self, request: GenerateRequest, started: int) -> AsyncGenerator[GenerateResponse]:
        keep_alive = parse_keep_alive(request.keep_alive)
        _check_top_logprobs(request.top_logprobs)
        requested = request.model or ""
        model = self.find_model(requested, missing_is_not_found=True)
        prompt = request.prompt or ""

        def chunk(text: str, **fields: Any) -> GenerateResponse:
            return GenerateResponse(model=requested, created_at=self.clock.now(), response=text, **fields)

        if not prompt and keep_alive == 0:
            await self.scheduler.unload(model)
            yield chunk("", done=True, done_reason="unload")
            return
        if request.raw and (request.template or request.system or request.context):
            raise BadRequest("raw mode does not support template, system, or context")
        backend, capabilities = self._backend(model, requested, "generate", request.think, request.images or [])
        if request.suffix and INSERT not in capabilities:
            raise BadRequest(f"{model.name} does not support insert")
        lease, options, format_ = await self._lease(model, backend, request.options, request.format, keep_alive)
        try:
            if not prompt:
                yield chunk("", done=True, done_reason="load")
                return
            if request.raw:
                completion = Completion(
                    options=options, prompt=prompt, format=format_, truncate=request.truncate is not False
                )
            else:
                system = request.system or model.system
                messages = [Message(role="system", content=system)] if system else []
                if request.context is None:
                    messages += model.messages
                messages.append(Message(role="user", content=prompt))
                completion = Completion(
                    options=options,
                    messages=messages,
                    suffix=request.suffix or "",
                    context=request.context,
                    want_context=True,
                    format=format_,
                    truncate=request.truncate is not False,
                )
                template = request.template or model.template
                if template:
                    completion.prompt = render_go_template(template, messages, suffix=request.suffix or "")
                    completion.messages, completion.conversation = None, messages
            async with aclosing(lease.model.generate(completion)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield chunk(event.text, done=False)
                        continue
                    yield chunk(
                        "",
                        done=True,
                        done_reason=event.reason,
                        context=event.context if event.context is not None else UNSET,
                        **_stats(event, lease, started),
                    )
        finally:
            await lease.release()

    async def chat(self, request: ChatRequest, started: int) -> AsyncGenerator[ChatResponse]:
        keep_alive = parse_keep_alive(request.keep_alive)
        _check_top_logprobs(request.top_logprobs)
        requested = request.model or ""
        model = self.find_model(requested, missing_is_not_found=False)
        messages = request.messages or []

        def chunk(text: str, **fields: Any) -> ChatResponse:
            return ChatResponse(
                model=requested,
                created_at=self.clock.now(),
                message=ResponseMessage(role="assistant", content=text),
                **fields,
            )

        if not messages and keep_alive == 0:
            await self.scheduler.unload(model)
            yield chunk("", done=True, done_reason="unload")
            return
        images = [image for message in messages for image in (message.images or [])]
        backend, capabilities = self._backend(model, requested, "chat", request.think, images)
        if request.tools and TOOLS not in capabilities:
            raise BadRequest(f"{model.name} does not support tools")
        lease, options, format_ = await self._lease(model, backend, request.options, request.format, keep_alive)
        try:
            if not messages:
                yield chunk("", done=True, done_reason="load")
                return
            prompt_messages = list(model.messages) + messages
            if model.system and prompt_messages[0].role != "system":
                prompt_messages.insert(0, Message(role="system", content=model.system))
            completion = Completion(
                options=options,
                messages=prompt_messages,
                format=format_,
                tools=request.tools or None,
                truncate=request.truncate is not False,
            )
            if model.template:
                completion.prompt = render_go_template(model.template, prompt_messages, request.tools)
                completion.messages, completion.conversation = None, prompt_messages
            async with aclosing(lease.model.generate(completion)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield chunk(event.text, done=False)
                    else:
                        yield chunk("", done=True, done_reason=event.reason, **_stats(event, lease, started))
        finally:
            await lease.release()


def _stats(done: Done, lease: Lease, started: int) -> dict[str, int]:
    return {
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": lease.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }


def merge_generate(chunks: list[GenerateResponse]) -> GenerateResponse:
    """The `stream: false` answer: the final chunk carrying the whole text."""
    final = chunks[-1]
    return msgspec.structs.replace(final, response="".join(c.response for c in chunks))


def merge_chat(chunks: list[ChatResponse]) -> ChatResponse:
    final = chunks[-1]
    content = "".join(c.message.content for c in chunks)
    return msgspec.structs.replace(final, message=msgspec.structs.replace(final.message, content=content))
