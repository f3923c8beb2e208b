"""Fuzzing with a small budget, in the default run.

schemathesis generates requests from Ollama's own OpenAPI description (shared/reference/ollama-openapi.yaml)
and sends them to a real server (echo backend): no answer may be a 500 other than those Ollama gives on
purpose, every error is Ollama's `{"error": ...}` envelope, and a rejected request leaves the store as it
was. hypothesis checks the parsers a request reaches: model names, durations, Modelfiles, options and
Go templates fail only with their own errors, never with a crash.

The app's own OpenAPI (GET /openapi.json, made from the wire types the routes decode: api/openapi.py) is
fuzzed the same way, /v1 included: each error in its API's envelope. Pull and push are left out of both
(they would reach registries on the internet).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.api.openapi import OPERATIONS as APP_OPERATIONS
from modelyard.api.openapi import openapi_document
from modelyard.config import Settings
from modelyard.errors import BadRequest, ModelyardError
from modelyard.runtime.options import parse_go_duration, parse_keep_alive, parse_options
from modelyard.server import create_app
from modelyard.store.modelfile import ModelfileError, parse_modelfile
from modelyard.store.names import ModelName
from modelyard.templates.gotemplate import GoTemplate, GoTemplateError
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
SPEC = Path(__file__).parents[2] / "shared" / "reference" / "ollama-openapi.yaml"
if not SPEC.exists():  # the project's checkout keeps shared/ beside the worktrees
    SPEC = Path("/work/shared/reference/ollama-openapi.yaml")
# Ollama's own 500s for bad input, which modelyard keeps (compatibility.md): wrongly typed options, a
# format that is neither "json" nor a schema, a template that does not parse.
OLLAMA_500S = re.compile(r'option "[^"]+" must be|invalid format: |template: |must be of type')
# Per operation: about 12 s for the whole API on 2 busy cores. FUZZ_EXAMPLES=500 for a deeper run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same inputs every run: a failure here is reproducible
)

schema = schemathesis.openapi.from_path(SPEC)
# Pull and push would go to registries on the internet: the soak test covers them with a loopback one.
OPERATIONS = [
    operation
    for result in schema.get_all_operations()
    if (operation := result.ok()).path not in ("/api/pull", "/api/push")
]

APP_SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OWN_OPERATIONS = [
    operation
    for result in APP_SCHEMA.get_all_operations()
    if (operation := result.ok()).path not in ("/api/pull", "/api/push")
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("fuzz") / "models"
    with ServerProcess(models, {"MODELYARD_BACKENDS": "echo", "MODELYARD_BUNDLED_MODELS": MODEL}) as running:
        yield running


def store_state(root: Path) -> list[tuple[str, int]]:
    return sorted((str(path.relative_to(root)), path.stat().st_size) for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: f"{operation.method.upper()} {operation.path}")
def test_generated_requests_from_ollamas_openapi_get_no_500(server, operation):
    root = Path(server.log_path).parent / "models"

    @FUZZ
    @given(case=operation.as_strategy())
    def call(case: schemathesis.Case) -> None:
        before = store_state(root)
        response = case.call(base_url=server.url, timeout=60)
        sent = f"{case.method} {case.path} {case.body!r}"[:500]
        if response.status_code >= 500:
            assert response.status_code == 500 and OLLAMA_500S.search(response.text), (response.text, sent)
        content_type = (response.headers.get("content-type") or [""])[0]
        if response.status_code >= 400 and content_type.startswith("application/json"):
            assert set(response.json()) == {"error"}, (response.text, sent)
        if response.status_code >= 400:
            assert store_state(root) == before, sent  # a rejected request changed nothing

    call()
    after = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}, timeout=60)
    assert after.status_code == 200  # and the server still serves a plain request


def assert_envelope(path: str, response: schemathesis.Response, sent: str) -> None:
    """An error in the envelope of its path's API (what that API's SDK parses)."""
    body = response.json()
    if path == "/v1/messages":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, (response.text, sent)
    elif path.startswith("/v1/"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, (
            response.text,
            sent,
        )
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str), (response.text, sent)


@pytest.mark.parametrize(
    "operation", OWN_OPERATIONS, ids=lambda operation: f"{operation.method.upper()} {operation.path}"
)
def test_generated_requests_from_the_apps_own_openapi_get_no_500(server, operation):
    root = Path(server.log_path).parent / "models"

    @FUZZ
    @given(case=operation.as_strategy())
    def call(case: schemathesis.Case) -> None:
        before = store_state(root)
        response = case.call(base_url=server.url, timeout=60)
        sent = f"{case.method} {case.formatted_path} {case.body!r}"[:500]
        if response.status_code >= 500:
            assert response.status_code == 500 and OLLAMA_500S.search(response.text), (response.text, sent)
        content_type = (response.headers.get("content-type") or [""])[0]
        if response.status_code >= 400 and case.method != "HEAD" and content_type.startswith("application/json"):
            assert_envelope(operation.path, response, sent)
        if response.status_code >= 400:
            assert store_state(root) == before, sent  # a rejected request changed nothing

    call()
    after = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}, timeout=60)
    assert after.status_code == 200


def test_the_apps_openapi_names_every_route_and_is_served(server, tmp_path):
    app = create_app(Settings(models=tmp_path / "models", backends=("echo",), bundled_models=()))
    routes = {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", ())
        if method != "OPTIONS"  # Litestar answers OPTIONS on every path (CORS preflights)
    }
    assert routes == {(operation.method, operation.path) for operation in APP_OPERATIONS}
    served = httpx.get(server.url + "/openapi.json")
    assert served.status_code == 200 and served.json() == openapi_document()
    assert served.json()["paths"]["/api/generate"]["post"]["requestBody"]["required"] is True


# --- parsers ---------------------------------------------------------------------------------------

NAME_PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@FUZZ
@given(st.text(max_size=80))
def test_any_text_is_a_model_name_or_a_bad_request(text):
    try:
        name = ModelName.parse(text)
    except BadRequest as exc:
        assert exc.message == "invalid model name"
        return
    assert name.is_valid()
    assert ModelName.parse(name.display).folded() == name.folded()  # the display form names the same model
    assert ".." not in name.host and "/" not in name.model


@FUZZ
@given(st.tuples(NAME_PART, NAME_PART, NAME_PART).filter(lambda parts: ".." not in parts[0]))
def test_valid_names_round_trip_through_their_display_form(parts):
    namespace, model, tag = parts
    name = ModelName.parse(f"{namespace}/{model}:{tag}")
    assert (name.namespace, name.model, name.tag) == (namespace, model, tag)
    assert ModelName.parse(name.fully_qualified) == name


@FUZZ
@given(st.one_of(st.text(max_size=30), st.from_regex(r"-?([0-9]{1,6}(\.[0-9]{1,3})?(ns|us|µs|ms|s|m|h)){1,3}")))
def test_durations_parse_or_fail_with_gos_words(text):
    try:
        seconds = parse_go_duration(text)
    except BadRequest as exc:
        assert exc.message.startswith("time: ")
        return
    assert isinstance(seconds, float) and not math.isnan(seconds)


@FUZZ
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["h", "m", "s", "ms"]))
def test_go_durations_mean_what_they_say(count, unit):
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    assert parse_go_duration(f"{count}{unit}") == pytest.approx(count * scale)
    assert parse_keep_alive(f"-{count}{unit}") in (math.inf, 0.0)  # negative: forever (or zero)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
OPTION_NAMES = st.sampled_from(
    ["temperature", "top_k", "top_p", "num_ctx", "num_predict", "stop", "seed", "mirostat", "penalize_newline"]
)


@FUZZ
@given(st.dictionaries(OPTION_NAMES | st.text(max_size=12), JSON, max_size=5))
def test_options_of_any_shape_are_accepted_or_refused_with_an_error_the_api_can_send(raw):
    try:
        parsed = parse_options(raw)
    except ModelyardError as exc:  # 400, or Ollama's 500 for a wrongly typed option
        assert exc.status in (400, 500) and exc.message
        return
    assert set(parsed) <= set(raw)


@FUZZ
@given(st.text(max_size=200))
def test_modelfiles_parse_or_fail_with_a_modelfile_error(text):
    try:
        modelfile = parse_modelfile(text)
    except ModelfileError:
        return
    assert modelfile is not None


MODELFILE_LINES = st.lists(
    st.sampled_from(["FROM smollm2", "PARAMETER temperature 0.5", 'SYSTEM """be brief"""', "# comment", ""])
    | st.text(alphabet="FROMPARAETSYL \"'\n{}#", max_size=30),
    max_size=6,
)


@FUZZ
@given(MODELFILE_LINES)
def test_modelfiles_made_of_real_instructions_parse_or_fail_cleanly(lines):
    try:
        parse_modelfile("\n".join(lines))
    except ModelfileError:
        pass


TEMPLATE_PIECES = st.lists(
    st.sampled_from(
        ["{{ .Prompt }}", "{{ if .System }}", "{{ end }}", "{{ range .Messages }}", "{{ .Content }}", "{{- ", " -}}"]
        + ["{{ else }}", "{{ index .Messages 0 }}", "{{ len .Messages }}", "{{ json .Tools }}", "{{", "}}", "text"]
    )
    | st.text(max_size=8),
    max_size=8,
)


@FUZZ
@given(TEMPLATE_PIECES)
def test_go_templates_render_or_fail_with_a_template_error(pieces):
    source = "".join(pieces)
    data = {"Prompt": "hi", "System": "", "Messages": [{"Role": "user", "Content": "hi"}], "Tools": []}
    try:
        rendered = GoTemplate(source).render(data)
    except GoTemplateError:
        return
    assert isinstance(rendered, str)
