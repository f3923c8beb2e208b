"""What /api/tags, /api/show and /api/ps say about models, stored or offered by a backend."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec

from modelyard.api.ollama.wire import ListModel, ListResponse, ModelDetails, ProcessModel, ProcessResponse, ShowResponse
from modelyard.errors import BadRequest, ModelyardError, NotFound
from modelyard.runtime.catalog import ModelCatalog
from modelyard.runtime.contract import Details, ModelView
from modelyard.runtime.plugins import Backends
from modelyard.runtime.scheduler import Scheduler
from modelyard.store.local import ModelStore, StoredModel, go_time
from modelyard.store.names import ModelName
from modelyard.templates.prompt import model_capabilities

# Go's zero time.Time: what Ollama would show for a model without a manifest (a backend's own models).
ZERO_TIME = "0001-01-01T00:00:00Z"


def wire_details(details: Details) -> ModelDetails:
    """The contract's Details as Ollama's ModelDetails (every key present, in Ollama's order)."""
    return ModelDetails(
        parent_model=details.parent_model,
        format=details.format,
        family=details.family,
        families=details.families,
        parameter_size=details.parameter_size,
        quantization_level=details.quantization_level,
    )


def capabilities(model: ModelView, backends: Backends) -> list[str]:
    try:
        return sorted(model_capabilities(model, backends.for_model(model)))
    except ModelyardError:  # no backend runs it here (a remote model, a format no engine reads)
        return []


def _remote_fields(model: ModelView) -> dict[str, Any]:
    return {} if model.remote is None else {"remote_model": model.remote.model, "remote_host": model.remote.host}


def list_models(
    store: ModelStore,
    backends: Backends,
    models: list[StoredModel] | None = None,
    offered: list[ModelView] | None = None,
) -> ListResponse:
    """/api/tags: the store's models (read from the store unless `models` is given), then those the
    backends offer (asked unless `offered` is given)."""
    stored = store.list() if models is None else models
    if offered is None:
        offered = ModelCatalog(store, backends).offered(stored)
    listed = [
        ListModel(
            name=model.name.display,
            model=model.name.display,
            modified_at=go_time(model.modified_at),
            size=model.size,
            digest=model.digest,
            details=wire_details(model.details()),
            capabilities=capabilities(model.view, backends),
            **_remote_fields(model.view),
        )
        for model in stored
    ]
    for view in offered:
        name = ModelName.parse(view.name).display
        listed.append(
            ListModel(
                name=name,
                model=name,
                modified_at=ZERO_TIME,
                size=view.size,
                digest=view.digest,
                details=wire_details(view.details),
                capabilities=capabilities(view, backends),
                **_remote_fields(view),
            )
        )
    return ListResponse(models=listed)


class TagsAnswer(msgspec.Struct, frozen=True):
    """An encoded /api/tags answer and what it was made from, to reuse while neither changes."""

    listing: list[StoredModel]
    offered: tuple[tuple[str, str, str], ...]  # (source, name, digest) of each offered model
    body: bytes


def _offer_key(offered: list[ModelView]) -> tuple[tuple[str, str, str], ...]:
    return tuple((view.source, view.name, view.digest) for view in offered)


async def tags_answer(catalog: ModelCatalog, previous: TagsAnswer | None) -> TagsAnswer:
    """/api/tags' body, the previous one when the store is unchanged (a stat walk) and the backends
    offer the same models; else manifests and headers are read again, in a thread."""
    listing = catalog.store.cached_list()
    offered = catalog.offered(listing) if listing is not None else None
    if (
        previous is not None
        and listing is not None
        and previous.listing is listing
        and offered is not None
        and previous.offered == _offer_key(offered)
    ):
        return previous

    def encode() -> TagsAnswer:
        models = catalog.store.list()
        fresh = catalog.offered(models)
        body = msgspec.json.encode(list_models(catalog.store, catalog.backends, models, fresh))
        return TagsAnswer(listing=models, offered=_offer_key(fresh), body=body)

    return await asyncio.to_thread(encode)


def _go_value(value: Any) -> str:
    """A parameter value the way Go's %#v prints it."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {_go_value(item)}")
    return "\n".join(lines)


def chat_template(model: StoredModel) -> str:
    """The model's template: the Modelfile TEMPLATE, else the chat template its files carry."""
    if model.template is not None:
        return model.template
    return model.chat_template


def modelfile_quote(text: str) -> str:
    """Ollama's Modelfile quoting: a value that spans lines or has outer spaces is quoted, in triple
    quotes when it holds a quote."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def _modelfile_value(value: Any) -> str:
    """A parameter value as Go's %v prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def modelfile_text(model: StoredModel) -> str:
    """A Modelfile that rebuilds the stored model, in the order and quoting of Ollama's (its TEMPLATE only
    when the model has a Go template layer); FROM names the weights file, nothing for a remote model (as
    Ollama writes it)."""
    weights = model.model_format.model_path(model)
    return _modelfile(model, model.name.display, "" if weights is None else str(weights), model.licenses)


def _modelfile(model: StoredModel | ModelView, name: str, source: str, licenses: list[str]) -> str:
    lines = [
        '# Modelfile generated by "modelyard show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {source}",
    ]
    if model.template:
        lines.append(f"TEMPLATE {modelfile_quote(model.template)}")
    if model.system:
        lines.append(f"SYSTEM {modelfile_quote(model.system)}")
    for key, value in model.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {modelfile_quote(_modelfile_value(item))}")
    for message in model.messages:
        lines.append(f"MESSAGE {message.role} {modelfile_quote(message.content)}")
    for license_text in licenses:
        lines.append(f"LICENSE {modelfile_quote(license_text)}")
    return "\n".join(lines) + "\n"


def _described(model: StoredModel | ModelView, template: str, licenses: list[str]) -> dict[str, Any]:
    """The optional fields of /api/show, present only when set (Ollama's omitempty)."""
    fields: dict[str, Any] = {}
    if model.parameters:
        fields["parameters"] = parameters_text(model.parameters)
    if template:
        fields["template"] = template
    if model.system:
        fields["system"] = model.system
    if licenses:
        fields["license"] = "\n".join(licenses)
    if model.messages:
        fields["messages"] = model.messages
    return fields


def describe_model(model: StoredModel, backends: Backends, verbose: bool) -> ShowResponse:
    """/api/show of a stored model: its format reads details, model_info, template and tensors."""
    fields = _described(model, chat_template(model), model.licenses)
    tensors = model.model_format.tensors(model)
    if tensors is not None:
        fields["tensors"] = [{"name": t.name, "type": t.type, "shape": t.shape} for t in tensors]
    return ShowResponse(
        modelfile=modelfile_text(model),
        details=wire_details(model.details()),
        model_info=model.model_info(verbose),
        capabilities=capabilities(model.view, backends),
        modified_at=go_time(model.modified_at),
        **_remote_fields(model.view),
        **fields,
    )


def describe_offered(model: ModelView, backends: Backends) -> ShowResponse:
    """/api/show of a model a backend offers: what its ModelView says (no files of ours to read)."""
    return ShowResponse(
        modelfile=_modelfile(model, ModelName.parse(model.name).display, ModelName.parse(model.name).display, []),
        details=wire_details(model.details),
        model_info={},
        capabilities=capabilities(model, backends),
        modified_at=ZERO_TIME,
        **_remote_fields(model),
        **_described(model, model.template or "", []),
    )


def show_model(catalog: ModelCatalog, requested: str | None, verbose: bool) -> ShowResponse:
    """/api/show: the model the catalog resolves the name to (the store's first), or Ollama's errors."""
    if not requested:
        raise BadRequest("model is required")
    name = ModelName.parse(requested)
    found = catalog.lookup(requested)
    if found is None:
        raise NotFound(f"model '{name.display}' not found")
    if isinstance(found, StoredModel):
        return describe_model(found, catalog.backends, verbose)
    return describe_offered(found, catalog.backends)


def describe_loaded(scheduler: Scheduler) -> ProcessResponse:
    now = dt.datetime.now().astimezone()
    return ProcessResponse(
        models=[
            ProcessModel(
                name=runner.model.name,
                model=runner.model.name,
                size=runner.loaded.size,
                digest=runner.model.digest,
                details=wire_details(runner.model.details),
                # A model in use expires keep_alive after its request ends; show that from now.
                expires_at=go_time(runner.expires_at or now + dt.timedelta(seconds=min(runner.keep_alive, 1e10))),
                size_vram=runner.loaded.size_vram,
                context_length=runner.loaded.context_length,
            )
            for runner in scheduler.loaded()
        ]
    )
