"""Browser origins: Ollama's defaults (localhost, app and editor webviews) plus OLLAMA_ORIGINS."""

from litestar.testing import TestClient

from modelyard.config import Settings
from modelyard.server import create_app


def client(tmp_path, origins=()):
    settings = Settings(models=tmp_path / "models", backends=("echo",), bundled_models=(), origins=origins)
    return TestClient(create_app(settings))


def preflight(test_client, origin):
    return test_client.options(
        "/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_local_origins_are_allowed(tmp_path):
    with client(tmp_path) as test_client:
        for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "vscode-webview://abc"):
            response = preflight(test_client, origin)
            assert response.status_code in (200, 204)
            assert response.headers["access-control-allow-origin"] == origin


def test_other_origins_need_ollama_origins(tmp_path):
    with client(tmp_path) as test_client:
        refused = preflight(test_client, "https://example.com")
        assert (refused.status_code, refused.content) == (403, b"")
        assert test_client.get("/api/tags", headers={"Origin": "https://example.com"}).status_code == 403
    with client(tmp_path, origins=("https://example.com",)) as test_client:
        assert (
            preflight(test_client, "https://example.com").headers["access-control-allow-origin"]
            == "https://example.com"
        )


def test_foreign_host_headers_are_refused_on_loopback(tmp_path):
    with client(tmp_path) as test_client:
        assert test_client.get("/api/tags", headers={"Host": "evil.example.com"}).status_code == 403
        assert test_client.get("/api/tags", headers={"Host": "localhost:11434"}).status_code == 200
        assert test_client.get("/api/tags", headers={"Host": "devbox.local"}).status_code == 200
