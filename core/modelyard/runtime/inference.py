"""The inference service: API-neutral generation over the catalog, the backends and the scheduler.

An API decodes its own request into a `GenerationRequest` and calls `generate` (a prompt) or `chat`
(messages). Each returns an async generator of the contract's events ending in one `Done`, whose load,
queue and total durations the service fills in. Everything that can fail with a status (bad input, an
unknown model, loading) happens before the first event: an API awaits that event before it opens its
response. Closing the generator closes the engine's stream and releases the lease.

A load or unload request (no prompt) yields only `Done(reason="load")` or `Done(reason="unload")`.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

import msgspec

from modelyard.errors import BadRequest, InternalError, NotFound
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.contract import (
    COMPLETION,
    EMBEDDING,
    INSERT,
    THINKING,
    TOOLS,
    VISION,
    Backend,
    Completion,
    Done,
    Event,
    ModelView,
)
from modelyard.runtime.messages import Message
from modelyard.runtime.options import Format, Options, merge_options, parse_format, parse_options
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import Lease, Scheduler
from modelyard.runtime.thinking import ThinkingParser, starts_inside, template_tags
from modelyard.runtime.tools import ToolCallParser, ToolPlan, normalize_tool_choice, parse_tool_calls, plan_tools
from modelyard.store.names import ModelName
from modelyard.templates.prompt import model_capabilities, render_go_template

THINK_LEVELS = ("high", "medium", "low", "max")


class GenerationRequest(msgspec.Struct, kw_only=True):
    """One request, as any API hands it to the service (already decoded, not yet validated)."""

    model: str
    started: int  # time.perf_counter_ns() when the request arrived
    prompt: str = ""  # generate: the user's text, rendered with the model's template unless raw
    messages: list[Message] | None = None  # chat
    system: str | None = None  # generate: overrides the model's SYSTEM
    template: str | None = None  # generate: overrides the model's TEMPLATE
    raw: bool = False  # generate: the prompt is used as is
    suffix: str = ""
    context: list[int] | None = None  # generate: token ids an earlier answer returned
    images: list[str] = msgspec.field(default_factory=list)  # base64 (generate; chat has them in messages)
    options: dict[str, Any] | None = None  # as the client sent them; checked here
    format: Any = None  # as the client sent it; checked here
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    think: bool | str | None = None
    think_optional: bool = False  # a model without the thinking capability ignores `think` instead of a 400
    logprobs: bool = False
    top_logprobs: int | None = None
    keep_alive: float | None = None  # seconds (parsed by the API: each has its own syntax); None: the model's
    truncate: bool = True


class EmbedRequest(msgspec.Struct, kw_only=True):
    """One embedding request, as any API hands it to the service."""

    model: str
    started: int  # time.perf_counter_ns() when the request arrived
    inputs: list[str]  # none: the model is only loaded
    truncate: bool = True  # an input longer than the context: cut it (else BadRequest)
    options: dict[str, Any] | None = None
    keep_alive: float | None = None


class EmbedResult(msgspec.Struct, kw_only=True):
    """The engine's vectors (not normalised: each API decides) and the request's measurements."""

    vectors: list[list[float]]
    prompt_eval_count: int
    load_duration: int  # ns, loading and waiting for the model
    total_duration: int  # ns, from the request's arrival


def normalized(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The vector cut to `dimensions` (when given and shorter) and scaled to length 1, as Ollama's embed does."""
    if dimensions:
        vector = vector[:dimensions]
    if not all(math.isfinite(value) for value in vector):
        raise InternalError("embedding contains NaN or Inf values")
    length = math.sqrt(sum(value * value for value in vector))
    return [value / length for value in vector] if length > 0 else list(vector)


def full_name(model: ModelView) -> str:
    """The fully qualified name Ollama's capability errors use: registry.ollama.ai/library/x:tag."""
    return ModelName.parse(model.name).fully_qualified


def check_top_logprobs(value: int | None) -> None:
    if value is not None and not 0 <= value <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")


def resolve_think(think: bool | str | None, capabilities: frozenset[str]) -> bool | str | None:
    """A model that can think does unless told not to (Ollama since 0.13); others keep what was asked."""
    if think is None and THINKING in capabilities:
        return True
    return think


def thinking_parser(
    model: ModelView, completion: Completion, think: bool | str | None, template: str | None = None
) -> ThinkingParser | None:
    """The parser that separates thinking from the answer, when thinking is on (`think`, the model's default
    applied) and the template names tags."""
    if think in (None, False):
        return None
    go_template = template or model.template
    if go_template:
        tags = template_tags(go_template)
        return ThinkingParser(tags, inside=starts_inside(tags, completion.prompt)) if tags else None
    jinja = str(model.metadata.get("tokenizer.chat_template", "")) if model.format == "gguf" else ""
    tags = template_tags(jinja, jinja=True) if jinja else None  # no template: the backend separates it, if at all
    if tags is None:
        return None
    prompt = completion.prompt if completion.messages is None else None  # a raw prompt is at hand
    return ThinkingParser(tags, inside=starts_inside(tags, prompt, jinja))


def _check_think(think: bool | str | None, model_field: str, capabilities: frozenset[str]) -> None:
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise BadRequest(f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)')
    if think not in (None, False) and THINKING not in capabilities:
        raise BadRequest(f'"{model_field}" does not support thinking')


def _decode_images(images: list[str], model_field: str, capabilities: frozenset[str]) -> list[bytes]:
    if not images:
        return []
    decoded = []
    for image in images:
        try:
            decoded.append(base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"illegal base64 data in image: {exc}") from exc
    if VISION not in capabilities:
        raise BadRequest(f'"{model_field}" does not support images: the model has no vision capability')
    return decoded


class Inference:
    def __init__(self, catalog: ModelCatalog, backends: Backends, scheduler: Scheduler, context_length: int) -> None:
        self.catalog = catalog
        self.backends = backends
        self.scheduler = scheduler
        self.context_length = context_length  # num_ctx when neither the model nor the request sets it

    def find_model(self, requested: str, *, missing_is_not_found: bool) -> ModelView:
        """The model a request names, with the errors of Ollama's generate/chat handlers."""
        if not requested:
            if missing_is_not_found:
                raise NotFound("model '' not found")
            raise BadRequest("model is required")
        model = self.catalog.find(requested)
        if model is None:
            raise NotFound(f"model '{requested}' not found")
        return model

    def _backend(
        self, model: ModelView, requested: str, verb: str, think: bool | str | None
    ) -> tuple[Backend, frozenset[str]]:
        """The backend that runs the model, after the capability checks both kinds of request share."""
        backend = self.backends.for_model(model)
        capabilities = model_capabilities(model, backend)
        if COMPLETION not in capabilities:
            raise BadRequest(f'"{requested}" does not support {verb}')
        _check_think(think, requested, capabilities)
        return backend, capabilities

    async def _lease(
        self, model: ModelView, backend: Backend, request: GenerationRequest
    ) -> tuple[Lease, Options, Format]:
        """Options (defaults < model PARAMETERs < request) and format checked, then the model leased."""
        request_options = parse_options(request.options)
        format_ = parse_format(request.format)
        own = backend.parameters  # the backend's own Modelfile parameters are not options, nor tool_choice
        model_options = {
            key: value for key, value in model.parameters.items() if key not in own and key != "tool_choice"
        }
        options = merge_options({"num_ctx": self.context_length}, parse_options(model_options), request_options)
        return await self.scheduler.acquire(model, backend, options, request.keep_alive), options, format_

    def _completion(self, request: GenerationRequest, options: Options, format_: Format, tools: ToolPlan) -> Completion:
        return Completion(
            options=options,
            format=format_,
            truncate=request.truncate,
            think=request.think,  # None stays the model's default: a backend (or another server) applies it
            tools=tools.offered,
            tool_choice=tools.choice,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            constraint=tools.constraint,
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event]:
        """A completion of `request.prompt` (Ollama's /api/generate, OpenAI's /v1/completions)."""
        check_top_logprobs(request.top_logprobs)
        requested = request.model
        model = self.find_model(requested, missing_is_not_found=True)
        if not request.prompt and request.keep_alive == 0:
            await self.scheduler.unload(model)
            yield _without_work("unload", request.started)
            return
        if request.raw and (request.template or request.system or request.context):
            raise BadRequest("raw mode does not support template, system, or context")
        backend, capabilities = self._backend(model, requested, "generate", request.think)
        think = resolve_think(request.think, capabilities)
        images = _decode_images(request.images, requested, capabilities)
        if request.suffix and INSERT not in capabilities:
            raise BadRequest(f"{full_name(model)} does not support insert")
        lease, options, format_ = await self._lease(model, backend, request)
        try:
            if not request.prompt:
                yield _without_work("load", request.started, lease)
                return
            completion = self._completion(request, options, format_, _tool_plan(model, request, format_, think))
            completion.images = images
            if request.raw:
                completion.prompt = request.prompt
            else:
                system = request.system or model.system
                messages = [Message(role="system", content=system)] if system else []
                if request.context is None:
                    messages += model.messages
                messages.append(Message(role="user", content=request.prompt))
                completion.messages = messages
                completion.suffix = request.suffix
                completion.context = request.context
                completion.want_context = True
                template = request.template or model.template
                if template:
                    completion.prompt = render_go_template(
                        template, messages, suffix=request.suffix, think=think, think_set=request.think
                    )
                    completion.messages, completion.conversation = None, messages
            parser = thinking_parser(model, completion, think, request.template)
            async for event in self._run(lease, completion, request.started, parser):
                yield event
        finally:
            await lease.release()

    async def chat(self, request: GenerationRequest) -> AsyncGenerator[Event]:
        """An answer to `request.messages` (Ollama's /api/chat, OpenAI's /v1/chat/completions)."""
        check_top_logprobs(request.top_logprobs)
        requested = request.model
        model = self.find_model(requested, missing_is_not_found=False)
        messages = request.messages or []
        if not messages and request.keep_alive == 0:
            await self.scheduler.unload(model)
            yield _without_work("unload", request.started)
            return
        if request.think_optional and THINKING not in model_capabilities(model, self.backends.for_model(model)):
            request.think = None
        backend, capabilities = self._backend(model, requested, "chat", request.think)
        think = resolve_think(request.think, capabilities)
        images = [image for message in messages for image in (message.images or [])]
        decoded = _decode_images(images, requested, capabilities)
        if request.tools and TOOLS not in capabilities:
            raise BadRequest(f"{full_name(model)} does not support tools")
        normalize_tool_choice(request.tool_choice, request.tools)  # a bad choice is a 400 before loading
        lease, options, format_ = await self._lease(model, backend, request)
        try:
            if not messages:
                yield _without_work("load", request.started, lease)
                return
            prompt_messages = list(model.messages) + messages
            if model.system and prompt_messages[0].role != "system":
                prompt_messages.insert(0, Message(role="system", content=model.system))
            plan = _tool_plan(model, request, format_, think)
            completion = self._completion(request, options, format_, plan)
            completion.images = decoded
            completion.messages = prompt_messages
            if model.template:
                completion.prompt = render_go_template(
                    model.template, prompt_messages, plan.offered, think=think, think_set=request.think
                )
                completion.messages, completion.conversation = None, prompt_messages
            thinking = thinking_parser(model, completion, think)
            async for event in self._run(lease, completion, request.started, thinking, plan.parser()):
                yield event
        finally:
            await lease.release()

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Vectors for `request.inputs` from a model with the EMBEDDING capability (Ollama's /api/embed,
        /api/embeddings and OpenAI's /v1/embeddings); no inputs only loads the model."""
        requested = request.model
        model = self.catalog.find(requested) if requested else None
        if model is None:
            raise NotFound(f'model "{requested}" not found, try pulling it first')
        backend = self.backends.for_model(model)
        if EMBEDDING not in model_capabilities(model, backend):
            raise BadRequest(f'"{requested}" does not support embeddings')
        lease, _, _ = await self._lease(
            model,
            backend,
            GenerationRequest(
                model=requested, started=request.started, options=request.options, keep_alive=request.keep_alive
            ),
        )
        try:
            embeddings = await lease.model.embed(request.inputs, truncate=request.truncate) if request.inputs else None
        finally:
            await lease.release()
        if embeddings is not None and len(embeddings.vectors) != len(request.inputs):
            raise InternalError(
                f"the backend returned {len(embeddings.vectors)} vectors for {len(request.inputs)} inputs"
            )
        return EmbedResult(
            vectors=embeddings.vectors if embeddings else [],
            prompt_eval_count=embeddings.prompt_eval_count if embeddings else 0,
            load_duration=lease.load_duration + lease.queue_duration,
            total_duration=time.perf_counter_ns() - request.started,
        )

    async def _run(
        self,
        lease: Lease,
        completion: Completion,
        started: int,
        thinking: ThinkingParser | None = None,
        tool_parser: ToolCallParser | None = None,
    ) -> AsyncGenerator[Event]:
        """The engine's events with its thinking separated and tool calls parsed from its answer (when the
        parsers are given), and the core's durations on the final Done."""
        async with AsyncExitStack() as stack:
            stream = await stack.enter_async_context(aclosing(lease.model.generate(completion)))
            if thinking is not None:
                stream = await stack.enter_async_context(aclosing(_split_thinking(stream, thinking)))
            if tool_parser is not None:
                stream = await stack.enter_async_context(aclosing(parse_tool_calls(stream, tool_parser)))
            async for event in stream:
                if type(event) is Done:
                    event = msgspec.structs.replace(
                        event,
                        load_duration=lease.load_duration,
                        queue_duration=lease.queue_duration,
                        total_duration=time.perf_counter_ns() - started,
                    )
                yield event


async def _split_thinking(events: AsyncIterator[Event], parser: ThinkingParser) -> AsyncGenerator[Event]:
    """The engine's events with its text split into thinking and answer."""
    async for event in events:
        for part in parser.split(event):
            yield part


def _tool_plan(model: ModelView, request: GenerationRequest, format_: Format, think: bool | str | None) -> ToolPlan:
    """The request's tools, tool_choice and format as the engine and the output parser need them."""
    template = model.template or str(model.metadata.get("tokenizer.chat_template", "") if not model.remote else "")
    choice = request.tool_choice
    if choice is None and request.tools:  # the model's PARAMETER tool_choice, for requests that offer tools
        choice = model.parameters.get("tool_choice")
    return plan_tools(
        request.tools,
        choice,
        format_,
        thinking=think not in (None, False),  # the model's default applied: format then follows the thinking
        template=template,
        parser=model.parser,
        parse=model.remote is None,  # a server that runs the model parses its own calls
    )


def _without_work(reason: str, started: int, lease: Lease | None = None) -> Done:
    """The Done of a request that only loads or unloads a model."""
    return Done(
        reason=reason,
        prompt_eval_count=0,
        prompt_eval_duration=0,
        eval_count=0,
        eval_duration=0,
        load_duration=lease.load_duration if lease else 0,
        queue_duration=lease.queue_duration if lease else 0,
        total_duration=time.perf_counter_ns() - started,
    )
