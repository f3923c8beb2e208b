"""GET /openapi.json: the app's own OpenAPI 3.1 description, made from the wire types the routes decode.

The routes read raw bodies and decode them with msgspec (to keep Ollama's error texts), so the schema
Litestar would generate has no request bodies. This table names each route's body type instead, and
msgspec writes their JSON Schemas (2020-12, which OpenAPI 3.1 uses). tests/security/test_fuzz.py checks
that it names every route of the app, and fuzzes the app against it with schemathesis.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec
from litestar import Request, Response, get

from modelyard import __version__
from modelyard.api.anthropic.errors import ErrorBody as AnthropicErrorBody
from modelyard.api.anthropic.wire import MessagesRequest
from modelyard.api.http import JSON, api_of
from modelyard.api.ollama import wire as ollama
from modelyard.api.openai import wire as openai
from modelyard.api.openai.errors import ErrorBody as OpenAIErrorBody
from modelyard.api.openai.responses import ResponsesRequest
from modelyard.store.operations import CreateRequest

BINARY = "application/octet-stream"


class Operation(NamedTuple):
    method: str
    path: str  # Litestar's template: /api/blobs/{digest:str}
    summary: str
    body: type[msgspec.Struct] | str | None = None  # a wire type (JSON), a media type (raw bytes), or none


OPERATIONS = (
    Operation("GET", "/", "Whether the server is running"),
    Operation("HEAD", "/", "Whether the server is running"),
    Operation("GET", "/api/version", "The server's version"),
    Operation("HEAD", "/api/version", "The server's version"),
    Operation("POST", "/api/generate", "Generate a completion", ollama.GenerateRequest),
    Operation("POST", "/api/chat", "Generate the next chat message", ollama.ChatRequest),
    Operation("POST", "/api/embed", "Generate embeddings", ollama.EmbedRequest),
    Operation("POST", "/api/embeddings", "Generate an embedding (the older endpoint)", ollama.EmbeddingRequest),
    Operation("GET", "/api/tags", "List local models"),
    Operation("HEAD", "/api/tags", "List local models"),
    Operation("POST", "/api/show", "Show a model's information", ollama.ShowRequest),
    Operation("POST", "/api/create", "Create a model", CreateRequest),
    Operation("POST", "/api/pull", "Pull a model from a registry", ollama.PullRequest),
    Operation("POST", "/api/push", "Push a model to a registry", ollama.PushRequest),
    Operation("POST", "/api/copy", "Copy a model", ollama.CopyRequest),
    Operation("DELETE", "/api/delete", "Delete a model", ollama.DeleteRequest),
    Operation("HEAD", "/api/blobs/{digest:str}", "Whether a blob exists"),
    Operation("POST", "/api/blobs/{digest:str}", "Upload a blob", BINARY),
    Operation("GET", "/api/ps", "List loaded models"),
    Operation("POST", "/v1/chat/completions", "OpenAI: chat completion", openai.ChatCompletionRequest),
    Operation("POST", "/v1/completions", "OpenAI: completion", openai.CompletionRequest),
    Operation("POST", "/v1/embeddings", "OpenAI: embeddings", openai.EmbeddingsRequest),
    Operation("POST", "/v1/responses", "OpenAI: a response", ResponsesRequest),
    Operation("GET", "/v1/models", "OpenAI: list models"),
    Operation("GET", "/v1/models/{model:path}", "OpenAI: retrieve a model"),
    Operation("POST", "/v1/messages", "Anthropic: a message", MessagesRequest),
    Operation("GET", "/metrics", "Prometheus metrics"),
    Operation("GET", "/openapi.json", "This description"),
)
ERROR_TYPES = {"ollama": ollama.ErrorResponse, "openai": OpenAIErrorBody, "anthropic": AnthropicErrorBody}
_PARAMETER = re.compile(r"\{(\w+):\w+\}")


def openapi_path(template: str) -> str:
    """Litestar's `/api/blobs/{digest:str}` as OpenAPI writes it: `/api/blobs/{digest}`."""
    return _PARAMETER.sub(r"{\1}", template)


def openapi_document() -> dict[str, Any]:
    bodies = [op.body for op in OPERATIONS if isinstance(op.body, type)]
    errors = list(ERROR_TYPES.values())
    refs, components = msgspec.json.schema_components([*bodies, *errors], ref_template="#/components/schemas/{name}")
    body_refs = dict(zip(bodies, refs, strict=False))
    error_refs = dict(zip(ERROR_TYPES, refs[len(bodies) :], strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = openapi_path(op.path)
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()} {path}",
            "responses": {
                "200": {"description": "Done (a stream of JSON lines or server-sent events where asked)"},
                "default": {
                    "description": "An error, in the envelope of the path's API",
                    "content": {"application/json": {"schema": error_refs[api_of(path)]}},
                },
            },
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        if parameters:
            operation["parameters"] = parameters
        if isinstance(op.body, type):
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_refs[op.body]}},
            }
        elif op.body is not None:
            raw = {"type": "string", "format": "binary"}
            operation["requestBody"] = {"required": True, "content": {op.body: {"schema": raw}}}
        paths.setdefault(path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelyard",
            "version": __version__,
            "description": "Ollama's REST API, with OpenAI's and Anthropic's under /v1 (docs/compatibility.md).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


@get("/openapi.json")
async def openapi_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(msgspec.json.encode(openapi_document()), media_type=JSON)
