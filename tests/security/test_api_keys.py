"""API keys (docs/security.md) as users meet them: the official ollama client with OLLAMA_API_KEY, curl-like
requests with `Authorization: Bearer` and `x-api-key`, the CLI with MODELYARD_API_KEY, and `modelyard keys`
editing the file of a running server. The server runs the echo backend: the checks are the core's."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.api.auth import (
    ApiKey,
    KeyRing,
    RateLimiter,
    add_key,
    hash_key,
    insecure_bind_warning,
    read_key_file,
    write_key_file,
)
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.server import create_app
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"


class Keys:
    """The keys a test server knows, by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.user, _ = add_key(path, "user", models=["*"], scopes=["inference"])
        self.admin, _ = add_key(path, "admin", models=["*"], scopes=["admin"])
        self.limited, _ = add_key(path, "limited", models=["smollm2"], scopes=["inference"])
        self.builder, _ = add_key(path, "builder", models=["mine-*"], scopes=["admin"])
        self.metrics, _ = add_key(path, "scraper", models=["*"], scopes=["metrics"])
        self.throttled, _ = add_key(path, "throttled", models=["*"], scopes=["inference"], rate_limit=3)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys") / "api-keys.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("keyed") / "models"
    env = {"MODELYARD_BACKENDS": "echo", "MODELYARD_BUNDLED_MODELS": MODEL, "MODELYARD_API_KEYS": str(keys.path)}
    with ServerProcess(models, env) as running:
        yield running


def client(server: ServerProcess, key: str | None = None, header: str = "authorization") -> httpx.Client:
    headers = {} if key is None else {header: f"Bearer {key}" if header == "authorization" else key}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_the_official_client_sends_ollama_api_key(server, keys, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", keys.user)
    with ollama.Client(host=server.url) as keyed:
        assert MODEL in [model.model for model in keyed.list().models]
        answer = keyed.generate(MODEL, "hello there", options={"num_predict": 2})
        assert answer.done and answer.response.strip()
        chunks = list(keyed.chat(MODEL, messages=[{"role": "user", "content": "hi"}], stream=True))
        assert chunks[-1].done

    monkeypatch.delenv("OLLAMA_API_KEY")
    with ollama.Client(host=server.url) as anonymous:
        with pytest.raises(ollama.ResponseError) as refused:
            anonymous.list()
    assert refused.value.status_code == 401
    assert "API key" in refused.value.error


def test_bearer_and_x_api_key_are_accepted_and_anything_else_is_401(server, keys):
    with client(server, keys.user) as bearer, client(server, keys.user, header="x-api-key") as anthropic_style:
        assert bearer.get("/api/tags").status_code == 200
        assert anthropic_style.post("/api/show", json={"model": MODEL}).status_code == 200
    for key in (None, "myk_not-a-key", keys.user + "x", keys.user[:-1]):
        with client(server, key) as refused:
            response = refused.post("/api/generate", json={"model": MODEL, "prompt": "hi"})
            assert response.status_code == 401
            assert error_of(response).startswith("unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
    with httpx.Client(base_url=server.url, headers={"authorization": f"Basic {keys.user}"}) as wrong_scheme:
        assert wrong_scheme.get("/api/ps").status_code == 401


def test_root_and_version_stay_open(server):
    with client(server) as anonymous:
        assert anonymous.get("/").text == "Ollama is running"
        assert anonymous.get("/api/version").status_code == 200
        assert anonymous.head("/").status_code == 200
        assert anonymous.get("/api/ps").status_code == 401


def test_a_key_without_the_admin_scope_cannot_change_the_store(server, keys):
    with client(server, keys.user) as user, client(server, keys.admin) as admin:
        refused = user.request("DELETE", "/api/delete", json={"model": MODEL})
        assert refused.status_code == 403
        assert "admin scope" in error_of(refused)
        for path, body in (
            ("/api/copy", {"source": MODEL, "destination": "stolen"}),
            ("/api/create", {"model": "stolen", "from": MODEL}),
            ("/api/pull", {"model": "localhost:1/x/y"}),
            ("/api/push", {"model": MODEL}),
        ):
            assert user.post(path, json=body).status_code == 403, path
        assert user.head(f"/api/blobs/sha256:{'0' * 64}").status_code == 403
        assert MODEL in [m["name"] for m in user.get("/api/tags").json()["models"]]  # nothing was deleted

        assert admin.post("/api/copy", json={"source": MODEL, "destination": "spare"}).status_code == 200
        assert admin.request("DELETE", "/api/delete", json={"model": "spare"}).status_code == 200
        assert admin.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False}).status_code == 200


def test_the_official_client_cannot_delete_a_model_without_the_admin_scope(server, keys):
    with ollama.Client(host=server.url, headers={"authorization": f"Bearer {keys.user}"}) as user:
        with pytest.raises(ollama.ResponseError) as refused:
            user.delete(MODEL)
        assert refused.value.status_code == 403 and "admin scope" in refused.value.error
        assert MODEL in [model.model for model in user.list().models]
    with ollama.Client(host=server.url, headers={"authorization": f"Bearer {keys.admin}"}) as admin:
        assert admin.copy(MODEL, "deletable").status == "success"
        assert admin.delete("deletable").status == "success"


def test_a_path_that_matches_no_route_needs_a_key_too(server, keys):
    """Without a key every path is 401 alike, so the answers do not map the routes; with one, Ollama's 404."""
    with client(server) as anonymous:
        for path in ("/api/nothing", "/admin", "/api/tags/extra", "/v1/nothing"):
            refused = anonymous.get(path)
            assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"  # /v1/: OpenAI's envelope
        assert anonymous.get("/api/generate").status_code == 401  # a route, but not for GET: 401 all the same
    with client(server, keys.user) as user:
        missing = user.get("/api/nothing")
        assert (missing.status_code, missing.text) == (404, "404 page not found")
        assert user.get("/api/generate").status_code == 405
    with client(server, keys.metrics) as scraper:  # a path that matches nothing asks for the inference scope
        assert scraper.get("/api/nothing").status_code == 403


def test_refusals_before_routing_are_counted_under_their_route(server, keys):
    def http_requests(scraper: httpx.Client, route: str, status: str) -> float:
        families = text_string_to_metric_families(scraper.get("/metrics").text)
        labels = {"route": route, "method": "GET", "status": status}
        return sum(
            s.value
            for f in families
            for s in f.samples
            if s.name.endswith("http_requests_total") and s.labels == labels
        )

    with client(server, keys.metrics) as scraper, client(server) as anonymous:
        before = (http_requests(scraper, "/api/ps", "401"), http_requests(scraper, "unmatched", "401"))
        assert anonymous.get("/api/ps").status_code == 401
        assert anonymous.get("/api/nowhere").status_code == 401
        after = (http_requests(scraper, "/api/ps", "401"), http_requests(scraper, "unmatched", "401"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_a_path_cannot_forge_a_log_line(server):
    with client(server) as anonymous:
        assert anonymous.get("/api/x%0Aforged%20line", headers={"X-Request-Id": "forger-1"}).status_code == 401
    deadline = time.monotonic() + 30
    while "request_id=forger-1" not in server.log_path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    lines = server.log_path.read_text().splitlines()
    assert not any(line.startswith("forged") for line in lines)
    assert any('GET "/api/x\\nforged line" 401' in line for line in lines)


def test_a_key_limited_to_some_models_uses_only_those(server, keys):
    with client(server, keys.admin) as admin:
        assert admin.post("/api/copy", json={"source": MODEL, "destination": "other"}).status_code == 200
        assert admin.post("/api/generate", json={"model": "other", "keep_alive": "1m"}).status_code == 200  # loaded
        assert {m["name"] for m in admin.get("/api/tags").json()["models"]} == {MODEL, "other:latest"}
    try:
        with client(server, keys.limited) as limited:
            allowed = limited.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
            assert allowed.status_code == 200 and allowed.json()["done"]
            refused = limited.post("/api/generate", json={"model": "other", "prompt": "hi", "stream": False})
            assert refused.status_code == 403
            assert error_of(refused) == 'forbidden: API key "limited" may not use model "other"'
            assert limited.post("/api/show", json={"name": "OTHER:latest"}).status_code == 403
            assert limited.post("/api/show", json={"model": "smollm2:135m"}).status_code == 200
            broken = limited.post("/api/generate", content=b"{not json")
            assert broken.status_code == 400  # the route's own answer: the body reached it unchanged
            assert [m["name"] for m in limited.get("/api/tags").json()["models"]] == [MODEL]  # "other" is hidden
            assert [m["name"] for m in limited.get("/api/ps").json()["models"]] == [MODEL]
        with client(server, keys.builder) as builder:  # admin, but only over mine-*
            assert builder.post("/api/copy", json={"source": MODEL, "destination": "mine-a"}).status_code == 403
            assert builder.post("/api/create", json={"model": "mine-a", "from": "mine-b"}).status_code == 404
            assert builder.request("DELETE", "/api/delete", json={"model": "other"}).status_code == 403
    finally:
        with client(server, keys.admin) as admin:
            admin.request("DELETE", "/api/delete", json={"model": "other"})


def test_a_key_over_its_rate_gets_429_with_retry_after(server, keys):
    with client(server, keys.throttled) as throttled:
        statuses = [throttled.get("/api/ps") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    assert "limited to 3 a minute" in error_of(statuses[-1])
    with client(server, keys.user) as other:  # limits are per key
        assert other.get("/api/ps").status_code == 200


def modelyard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: ServerProcess, *args: str, **env: str
) -> tuple[int, str, str]:
    """The CLI, run in this process (a subprocess per call costs seconds of imports): status, stdout, stderr."""
    for name in ("MODELYARD_API_KEY", "OLLAMA_API_KEY", "MODELYARD_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    for name, setting in env.items():
        monkeypatch.setenv(name, setting)
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_keys_added_and_removed_by_the_cli_take_effect_without_a_restart(server, keys, monkeypatch, capsys):
    run = functools.partial(modelyard, monkeypatch, capsys, server)
    status, out, err = run("keys", "add", "newcomer", "--model", "smollm2", MODELYARD_API_KEYS=str(keys.path))
    assert status == 0, err
    key = out.strip()
    assert key.startswith("myk_") and "shown only once" in err
    assert key not in keys.path.read_text()  # only its hash is kept
    assert oct(keys.path.stat().st_mode & 0o777) == "0o600"

    status, out, _ = run("keys", "list", "--file", str(keys.path))
    row = next(line for line in out.splitlines() if line.startswith("newcomer"))
    assert row.split()[1:4] == [key[:10] + "...", "inference", "smollm2"]

    with client(server, key) as newcomer:
        assert newcomer.get("/api/tags").status_code == 200
        assert run("keys", "rm", "newcomer", MODELYARD_API_KEYS=str(keys.path))[0] == 0
        assert newcomer.get("/api/tags").status_code == 401
    assert run("keys", "rm", "newcomer", MODELYARD_API_KEYS=str(keys.path))[0] == 1


def test_the_cli_sends_modelyard_api_key_or_ollama_api_key(server, keys, monkeypatch, capsys):
    run = functools.partial(modelyard, monkeypatch, capsys, server)
    for variable in ("MODELYARD_API_KEY", "OLLAMA_API_KEY"):
        status, out, err = run("list", **{variable: keys.user})
        assert status == 0, err
        assert MODEL in out
    status, _, err = run("list")
    assert status == 1
    assert "unauthorized" in err and "MODELYARD_API_KEY" in err
    status, _, err = run("rm", MODEL, MODELYARD_API_KEY=keys.user)
    assert status == 1 and "admin scope" in err


def test_the_request_log_names_the_key_and_leaves_prompts_out(server, keys):
    with client(server, keys.user) as user:
        answered = user.post(
            "/api/chat",
            json={"model": MODEL, "messages": [{"role": "user", "content": "secret words"}], "stream": False},
            headers={"X-Request-Id": "keyed-1"},
        )
        assert answered.status_code == 200 and answered.headers["x-request-id"] == "keyed-1"
    with client(server) as anonymous:
        assert anonymous.get("/api/ps", headers={"X-Request-Id": "keyless-1"}).status_code == 401
    deadline = time.monotonic() + 30
    while "request_id=keyless-1" not in server.log_path.read_text():  # written once the answer is sent
        assert time.monotonic() < deadline
        time.sleep(0.02)
    log = server.log_path.read_text()
    line = next(line for line in log.splitlines() if "request_id=keyed-1" in line)
    assert "POST /api/chat 200" in line and "key=user" in line and f"model={MODEL}" in line and "eval_tokens=" in line
    assert "GET /api/ps 401" in next(line for line in log.splitlines() if "request_id=keyless-1" in line)
    assert "secret words" not in log


# --- without a server ------------------------------------------------------------------------------


def test_a_warning_when_serving_beyond_loopback_without_keys(tmp_path):
    assert insecure_bind_warning(Settings(host="127.0.0.1")) is None
    assert insecure_bind_warning(Settings(host="0.0.0.0", api_keys=tmp_path / "keys.json")) is None
    warning = insecure_bind_warning(Settings(host="0.0.0.0", port=8080))
    assert warning is not None and "0.0.0.0:8080 without API keys" in warning


def test_settings_read_the_keys_file_and_open_paths(tmp_path):
    settings = Settings.from_env({"MODELYARD_API_KEYS": str(tmp_path / "k.json")})
    assert settings.api_keys == tmp_path / "k.json" and settings.open_paths == ("/", "/api/version")
    assert Settings.from_env({"MODELYARD_OPEN_PATHS": "none"}).open_paths == ()
    assert Settings.from_env({"MODELYARD_OPEN_PATHS": "/, /api/tags"}).open_paths == ("/", "/api/tags")
    assert Settings.from_env({}).api_keys is None


def test_a_broken_keys_file_stops_the_server_at_start_but_not_later(tmp_path, caplog):
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "x", "hash": "md5:abc"}]}')
    with pytest.raises(ValueError, match="has no sha256 hash"):
        create_app(Settings(models=tmp_path / "models", api_keys=path, backends=("echo",), bundled_models=()))

    key, _ = add_key(tmp_path / "good.json", "good", models=["*"], scopes=["inference"])
    ring = KeyRing(tmp_path / "good.json")
    assert ring.authenticate(key) is not None
    (tmp_path / "good.json").write_text("{broken")
    assert ring.authenticate(key) is not None  # the last good keys stay in force
    assert "invalid keys file" in caplog.text


def test_model_globs_match_names_as_ollama_spells_them():
    key = ApiKey(name="k", hash=hash_key("x"), models=["smollm2", "team/*:7b"])
    assert key.allows_model("smollm2") and key.allows_model("SmolLM2:135m")
    assert key.allows_model("registry.ollama.ai/library/smollm2:latest")
    assert key.allows_model("team/coder:7b") and not key.allows_model("team/coder:13b")
    assert not key.allows_model("smollm3") and not key.allows_model("../etc")


def test_the_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = ApiKey(name="k", hash=hash_key("x"), rate_limit=2)
    assert [limiter.retry_after(key) for _ in range(3)] == [0, 0, 30]
    now[0] = 30.0  # one request's worth refilled
    assert [limiter.retry_after(key) for _ in range(2)] == [0, 30]


def test_the_key_file_round_trips_and_rejects_unknown_scopes(tmp_path):
    path = tmp_path / "keys.json"
    _, entry = add_key(path, "a", models=["x"], scopes=["metrics"], rate_limit=10)
    assert read_key_file(path).keys == [entry]
    with pytest.raises(ValueError, match="exists already"):
        add_key(path, "a", models=[], scopes=[])
    with pytest.raises(ValueError, match="unknown scopes"):
        add_key(path, "b", models=[], scopes=["root"])
    found = read_key_file(path)
    found.keys[0].scopes = ["root"]
    write_key_file(path, found)
    with pytest.raises(ValueError, match="unknown scopes"):
        read_key_file(path)


def test_a_browser_preflight_is_answered_before_any_key_is_asked_for(server, keys):
    preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST"}
    with client(server) as anonymous:
        answered = anonymous.options("/api/chat", headers=preflight)
        assert answered.status_code == 204
        assert answered.headers["access-control-allow-origin"] == "http://localhost:3000"
    with client(server, keys.user) as browser:  # the real request, with its key, gets the CORS headers too
        tags = browser.get("/api/tags", headers={"origin": "http://localhost:3000"})
        assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_metrics_need_the_metrics_scope_when_keys_are_on(server, keys):
    with client(server, keys.metrics) as scraper, client(server, keys.user) as user, client(server) as anonymous:
        scraped = scraper.get("/metrics")
        assert scraped.status_code == 200 and "modelyard:http_requests_total" in scraped.text
        assert user.get("/metrics").status_code == 403
        assert anonymous.get("/metrics").status_code == 401
        assert scraper.get("/api/tags").status_code == 403  # and nothing else
