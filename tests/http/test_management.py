"""Model management against a real OCI registry on loopback: push, pull, resume, auth, concurrency,
cancellation, crash safety, create/copy/delete/blobs, and bad input that must change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from support.registry import LocalRegistry, RegistryProxy

from modelyard.store.bundled import smollm2_gguf
from modelyard.store.registry import transport_cause
from modelyard_conformance.launcher import ServerProcess

MODEL = "smollm2:135m"
SMOLLM2_DIGEST = "sha256:" + hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    local = LocalRegistry(tmp_path_factory.mktemp("registry"))
    yield local
    local.stop()


@pytest.fixture
def proxy(registry: LocalRegistry) -> Iterator[RegistryProxy]:
    front = RegistryProxy(registry.host)
    yield front
    front.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL}
    with ServerProcess(tmp_path / "models", env) as process:
        yield process


def lines(server: ServerProcess, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.url + path, json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def names(server: ServerProcess) -> list[str]:
    return sorted(m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"])


def generate(server: ServerProcess, model: str) -> dict:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    return httpx.post(server.url + "/api/generate", json=body, timeout=120).json()


def store_snapshot(server: ServerProcess) -> dict[str, int]:
    root = server.log_path.parent / "models"
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def push_bundled(server: ServerProcess, host: str, tag: str = "v1") -> str:
    remote = f"{host}/library/smol:{tag}"
    assert httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": remote}).status_code == 200
    pushed = lines(server, "/api/push", {"model": remote, "insecure": True})
    assert pushed[0] == {"status": "retrieving manifest"}
    assert pushed[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    return remote


def forget_locally(server: ServerProcess, *models: str) -> None:
    """Delete the models, so that the next pull must download every blob."""
    for model in (MODEL, *models):
        assert httpx.request("DELETE", server.url + "/api/delete", json={"model": model}).status_code == 200


def test_push_delete_pull_and_generate(server, registry):
    remote = push_bundled(server, registry.host)
    assert httpx.request("DELETE", server.url + "/api/delete", json={"model": remote}).status_code == 200
    assert remote not in names(server)
    progress = lines(server, "/api/pull", {"model": remote, "insecure": True})
    assert progress[0] == {"status": "pulling manifest"}
    assert progress[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    layer_lines = [p for p in progress if p["status"].startswith("pulling ") and p["status"] != "pulling manifest"]
    assert {p["status"] for p in layer_lines} >= {f"pulling {SMOLLM2_DIGEST[7:19]}"}
    for line in layer_lines:
        assert line["digest"].startswith("sha256:") and line["total"] > 0 and line.get("completed", 0) <= line["total"]
    assert remote in names(server)
    assert generate(server, remote)["eval_count"] == 3


def test_pull_without_streaming_gives_the_final_status(server, registry):
    remote = push_bundled(server, registry.host, "single")
    httpx.request("DELETE", server.url + "/api/delete", json={"model": remote})
    response = httpx.post(
        server.url + "/api/pull", json={"model": remote, "insecure": True, "stream": False}, timeout=300
    )
    assert (response.status_code, response.json()) == (200, {"status": "success"})


def test_pulling_a_missing_tag(server, registry):
    body = {"model": f"{registry.host}/library/smol:nope", "insecure": True}
    assert lines(server, "/api/pull", body) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    single = httpx.post(server.url + "/api/pull", json={**body, "stream": False}, timeout=60)
    assert (single.status_code, single.json()) == (500, {"error": "pull model manifest: file does not exist"})


def test_plain_http_needs_insecure(server, registry):
    # Ollama checks this before its first progress line on pull (so even a stream gets a 500), after it on push.
    model = f"http://{registry.host}/library/smol:v1"
    pulled = httpx.post(server.url + "/api/pull", json={"model": model})
    assert (pulled.status_code, pulled.json()) == (500, {"error": "insecure protocol http"})
    assert pulled.headers["content-type"].startswith("application/json")  # one object, not a stream
    assert httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": model}).status_code == 200
    assert lines(server, "/api/push", {"model": model}) == [
        {"status": "retrieving manifest"},
        {"error": "insecure protocol http"},
    ]


def test_a_dropped_connection_resumes_with_a_range_and_verifies(server, registry, proxy):
    forget_locally(server, push_bundled(server, registry.host, "resume"))
    proxy.drop_after = 30_000_000
    remote = f"{proxy.host}/library/smol:resume"
    assert lines(server, "/api/pull", {"model": remote, "insecure": True})[-1] == {"status": "success"}
    model_gets = [rng for path, rng in proxy.blob_gets if SMOLLM2_DIGEST in path]
    assert model_gets[0] is None and model_gets[1].startswith("bytes=") and int(model_gets[1][6:-1]) > 0
    blob = server.log_path.parent / "models" / "blobs" / f"sha256-{SMOLLM2_DIGEST[7:]}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == SMOLLM2_DIGEST[7:]
    assert generate(server, remote)["eval_count"] == 3


def test_bearer_token_challenge(server, registry, proxy):
    proxy.require_token = True
    remote = f"{proxy.host}/library/smol:auth"
    httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": remote})
    assert lines(server, "/api/push", {"model": remote, "insecure": True})[-1] == {"status": "success"}
    httpx.request("DELETE", server.url + "/api/delete", json={"model": remote})
    assert lines(server, "/api/pull", {"model": remote, "insecure": True})[-1] == {"status": "success"}
    assert proxy.token_requests >= 2


def test_two_pulls_of_one_blob_download_it_once(server, registry, proxy):
    forget_locally(server, push_bundled(server, registry.host, "shared"))
    proxy.delay = 0.002
    import concurrent.futures

    bodies = [{"model": f"{proxy.host}/library/smol:shared", "insecure": True, "stream": False}] * 2
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: httpx.post(server.url + "/api/pull", json=b, timeout=300).json(), bodies))
    assert results == [{"status": "success"}] * 2
    assert len([path for path, _ in proxy.blob_gets if SMOLLM2_DIGEST in path]) == 1


def test_a_client_that_goes_away_cancels_the_download_and_keeps_the_partial_file(server, registry, proxy):
    forget_locally(server, push_bundled(server, registry.host, "cancel"))
    proxy.delay = 0.01
    remote = f"{proxy.host}/library/smol:cancel"
    with httpx.stream(
        "POST", server.url + "/api/pull", json={"model": remote, "insecure": True}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if json.loads(line).get("completed", 0) > 1_000_000:
                break
    partial = server.log_path.parent / "models" / "blobs" / f"sha256-{SMOLLM2_DIGEST[7:]}-partial"
    time.sleep(1.0)
    size = partial.stat().st_size
    time.sleep(1.0)
    assert partial.stat().st_size == size  # the download stopped
    assert remote not in names(server)
    proxy.delay = 0
    assert lines(server, "/api/pull", {"model": remote, "insecure": True})[-1] == {"status": "success"}
    model_gets = [rng for path, rng in proxy.blob_gets if SMOLLM2_DIGEST in path]
    assert model_gets[-1] is not None and int(model_gets[-1][6:-1]) >= size  # resumed from the partial file


def test_sigkill_during_pull_and_create_leaves_only_complete_models(tmp_path, registry, proxy):
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL}
    models = tmp_path / "models"
    with ServerProcess(models, env) as first:
        forget_locally(first, push_bundled(first, registry.host, "crash"))
        proxy.delay = 0.01
        with httpx.stream(
            "POST",
            first.url + "/api/pull",
            json={"model": f"{proxy.host}/library/smol:crash", "insecure": True},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if json.loads(line).get("completed", 0) > 2_000_000:
                    first.process.send_signal(signal.SIGKILL)
                    break
        first.process.wait()
    with ServerProcess(models, env) as second:
        listed = names(second)
        assert f"{proxy.host}/library/smol:crash" not in listed
        for name in listed:
            assert generate(second, name)["done"] is True
        f16 = make_f16_gguf(tmp_path)
        digest = upload(second, f16)
        with httpx.stream(
            "POST",
            second.url + "/api/create",
            json={"model": "half", "files": {"m.gguf": digest}, "quantize": "q4_K_M"},
            timeout=300,
        ) as response:
            for line in response.iter_lines():
                if json.loads(line)["status"].startswith("quantizing"):
                    second.process.send_signal(signal.SIGKILL)
                    break
        second.process.wait()
    with ServerProcess(models, env) as third:
        listed = names(third)
        assert "half:latest" not in listed
        for name in listed:
            assert generate(third, name)["done"] is True


def make_f16_gguf(folder: Path) -> Path:
    """An F16 GGUF of SmolLM2, made here from the bundled Q4_1 file (llama.cpp requantizes)."""
    target = folder / "smollm2-f16.gguf"
    script = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params(); p.ftype = 1; p.allow_requantize = True\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(smollm2_gguf()), str(target)], check=True, capture_output=True)
    return target


def upload(server: ServerProcess, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 404
    with open(path, "rb") as file:
        assert httpx.post(f"{server.url}/api/blobs/{digest}", content=file, timeout=120).status_code == 201
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200
    with open(path, "rb") as file:
        assert httpx.post(f"{server.url}/api/blobs/{digest}", content=file, timeout=120).status_code == 200
    return digest


def test_create_from_an_uploaded_gguf_and_quantize(server, tmp_path):
    digest = upload(server, make_f16_gguf(tmp_path))
    plain = lines(server, "/api/create", {"model": "half", "files": {"smollm2-f16.gguf": digest}})
    assert plain[0] == {"status": "parsing GGUF"} and plain[-1] == {"status": "success"}
    assert httpx.post(server.url + "/api/show", json={"model": "half"}).json()["details"]["quantization_level"] == "F16"
    quantized = lines(server, "/api/create", {"model": "small", "files": {"m.gguf": digest}, "quantize": "q4_K_M"})
    assert any(p["status"] == "quantizing F16 model to Q4_K_M" for p in quantized)
    assert quantized[-1] == {"status": "success"}
    details = httpx.post(server.url + "/api/show", json={"model": "small"}).json()["details"]
    assert details["quantization_level"] == "Q4_K_M"
    assert generate(server, "small")["eval_count"] == 3


def test_quantizing_a_quantized_model_is_refused(server):
    response = httpx.post(server.url + "/api/create", json={"model": "x", "from": MODEL, "quantize": "q8_0"})
    assert response.status_code == 400
    assert "only supported for F16 and F32" in response.json()["error"]


def test_create_from_a_model_with_layers(server):
    body = {
        "model": "pirate",
        "from": MODEL,
        "system": "You are a pirate.",
        "template": "{{ .System }} {{ .Prompt }}",
        "parameters": {"temperature": "0.2", "stop": ["Arr", "Yo"], "num_ctx": 2048},
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy"}],
        "license": "MIT",
    }
    progress = lines(server, "/api/create", body)
    assert progress[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    shown = httpx.post(server.url + "/api/show", json={"model": "pirate"}).json()
    assert (shown["system"], shown["template"], shown["license"]) == (
        "You are a pirate.",
        "{{ .System }} {{ .Prompt }}",
        "MIT",
    )
    assert shown["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy"}]
    assert 'stop                           "Arr"' in shown["parameters"]
    assert "PARAMETER temperature 0.2" in shown["modelfile"]
    assert generate(server, "pirate")["done"] is True
    assert httpx.get(server.url + "/api/ps").json()["models"][0]["context_length"] == 2048


def test_store_written_here_has_ollamas_byte_layout(server, registry):
    lines(server, "/api/create", {"model": "layout", "from": MODEL, "system": "x"})
    root = server.log_path.parent / "models"
    manifest = json.loads((root / "manifests/registry.ollama.ai/library/layout/latest").read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    # The bundled model's template and params layers are inherited; its system layer is replaced.
    kinds = [layer["mediaType"].removeprefix("application/vnd.ollama.image.") for layer in manifest["layers"]]
    assert kinds == ["model", "template", "params", "system"]
    for layer in [manifest["config"], *manifest["layers"]]:
        blob = root / "blobs" / layer["digest"].replace(":", "-")
        assert blob.exists() and blob.stat().st_size == layer["size"]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"][7:]
    config = json.loads((root / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_bytes())
    assert (config["model_format"], config["model_family"], config["model_type"], config["file_type"]) == (
        "gguf",
        "llama",
        "134.52M",
        "Q4_1",
    )
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"] for layer in manifest["layers"]]}


def test_copy_then_delete_keeps_shared_blobs_and_prunes_the_rest(server):
    lines(server, "/api/create", {"model": "withsystem", "from": MODEL, "system": "only mine"})
    assert httpx.post(server.url + "/api/copy", json={"source": "withsystem", "destination": "twin"}).status_code == 200
    root = server.log_path.parent / "models" / "blobs"
    system_blob = root / f"sha256-{hashlib.sha256(b'only mine').hexdigest()}"
    httpx.request("DELETE", server.url + "/api/delete", json={"model": "withsystem"})
    assert system_blob.exists()  # twin still names it
    assert generate(server, "twin")["done"] is True
    httpx.request("DELETE", server.url + "/api/delete", json={"model": "twin"})
    assert not system_blob.exists()
    assert generate(server, MODEL)["done"] is True


def test_noprune_keeps_blobs(tmp_path):
    env = {"MODELYARD_BACKENDS": "llamacpp", "MODELYARD_BUNDLED_MODELS": MODEL, "OLLAMA_NOPRUNE": "1"}
    with ServerProcess(tmp_path / "models", env) as server:
        lines(server, "/api/create", {"model": "kept", "from": MODEL, "system": "keep me"})
        httpx.request("DELETE", server.url + "/api/delete", json={"model": "kept"})
        assert (tmp_path / "models" / "blobs" / f"sha256-{hashlib.sha256(b'keep me').hexdigest()}").exists()


def test_deleting_a_loaded_model_unloads_it(server):
    lines(server, "/api/create", {"model": "loaded", "from": MODEL})
    httpx.post(server.url + "/api/generate", json={"model": "loaded"})
    assert [m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]] == ["loaded:latest"]
    assert httpx.request("DELETE", server.url + "/api/delete", json={"model": "loaded"}).status_code == 200
    assert httpx.get(server.url + "/api/ps").json() == {"models": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/copy", {"source": "../../etc", "destination": "x"}, 400, 'source "../../etc" is invalid'),
        ("POST", "/api/copy", {"source": MODEL, "destination": "a/../../b"}, 400, 'destination "a/../../b" is invalid'),
        ("POST", "/api/copy", {"source": "missing", "destination": "x"}, 404, 'model "missing" not found'),
        ("DELETE", "/api/delete", {"model": "../etc/passwd"}, 400, 'name "../etc/passwd" is invalid'),
        ("DELETE", "/api/delete", {"model": "missing"}, 404, "model 'missing' not found"),
        ("DELETE", "/api/delete", {}, 400, "model is required"),
        ("POST", "/api/create", {"model": "../x", "from": MODEL}, 400, "invalid model name"),
        ("POST", "/api/create", {"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ("POST", "/api/create", {"model": "x", "from": "missing"}, 404, 'model "missing" not found'),
        (
            "POST",
            "/api/create",
            {"model": "x", "from": MODEL, "parameters": {"bogus": 1}},
            400,
            "unknown parameter 'bogus'",
        ),
        (
            "POST",
            "/api/create",
            {"model": "x", "files": {"/etc/passwd": SMOLLM2_DIGEST}},
            400,
            "file path must be relative",
        ),
        (
            "POST",
            "/api/create",
            {"model": "x", "files": {"../m.gguf": SMOLLM2_DIGEST}},
            400,
            "file path must be relative",
        ),
        ("POST", "/api/create", {"model": "x", "files": {"m.gguf": "sha256:../../x"}}, 400, "invalid digest format"),
        ("POST", "/api/create", {"model": "x", "files": {"m.gguf": ""}}, 400, "invalid digest format"),
        ("POST", "/api/pull", {"model": ""}, 400, "invalid model name"),
        ("POST", "/api/push", {}, 400, "model is required"),
    ],
)
def test_bad_input_changes_nothing(server, method, path, body, status, message):
    before = store_snapshot(server)
    response = httpx.request(method, server.url + path, json=body, timeout=60)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert store_snapshot(server) == before


def test_blob_digests_are_checked(server):
    before = store_snapshot(server)
    assert httpx.head(server.url + "/api/blobs/sha256:abc").status_code == 400
    wrong = "sha256:" + "0" * 64
    response = httpx.post(f"{server.url}/api/blobs/{wrong}", content=b"hello")
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == f'digest mismatch, expected "{wrong}", got "sha256:{hashlib.sha256(b"hello").hexdigest()}"'
    )
    truncated = smollm2_gguf().read_bytes()[:1_000_000]
    response = httpx.post(f"{server.url}/api/blobs/{SMOLLM2_DIGEST.replace('b179', 'c179')}", content=truncated)
    assert response.status_code == 400
    assert httpx.post(server.url + "/api/blobs/..%2F..%2Fetc", content=b"x").status_code in (400, 404)
    assert store_snapshot(server) == before


def test_create_refuses_a_file_that_is_not_gguf(server):
    digest = "sha256:" + hashlib.sha256(b"not a model").hexdigest()
    httpx.post(f"{server.url}/api/blobs/{digest}", content=b"not a model")
    before = store_snapshot(server)
    response = httpx.post(server.url + "/api/create", json={"model": "x", "files": {"m.gguf": digest}})
    assert (response.status_code, response.json()) == (400, {"error": "supplied file was not in GGUF format"})
    assert store_snapshot(server) == before


def test_cli_create_cp_rm_push_pull(server, registry, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        f'FROM {smollm2_gguf()}\nPARAMETER temperature 0.3\nPARAMETER stop "Arr"\nSYSTEM """You are\na pirate."""\nMESSAGE user Hi\n'
    )
    env = {**os.environ, "OLLAMA_HOST": server.url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "modelyard", *args], env=env, capture_output=True, text=True, timeout=300
        )

    created = cli("create", "cli-pirate", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    assert "success" in created.stderr
    shown = httpx.post(server.url + "/api/show", json={"model": "cli-pirate"}).json()
    assert shown["system"] == "You are\na pirate."
    remote = f"{registry.host}/library/cli:v1"
    assert cli("cp", "cli-pirate", remote).returncode == 0
    pushed = cli("push", "--insecure", remote)
    assert pushed.returncode == 0 and "success" in pushed.stderr
    assert cli("rm", remote).returncode == 0
    assert remote not in names(server)
    pulled = cli("pull", "--insecure", remote)
    assert pulled.returncode == 0 and "success" in pulled.stderr
    assert remote in names(server)
    failed = cli("pull", "--insecure", f"{registry.host}/library/cli:missing")
    assert failed.returncode == 1 and "file does not exist" in failed.stderr


# --- errors that name their cause -------------------------------------------------------------------
# Only loopback and `.invalid` names (which never resolve): no traffic leaves the machine.


def pull_error(server: ServerProcess, body: dict) -> str:
    """The error of a failed pull, checked in both forms: the last NDJSON line and the 500 of `stream: false`."""
    streamed = lines(server, "/api/pull", body)
    assert streamed[0] == {"status": "pulling manifest"}
    assert list(streamed[-1]) == ["error"], streamed
    single = httpx.post(server.url + "/api/pull", json={**body, "stream": False}, timeout=120)
    assert (single.status_code, single.json()) == (500, streamed[-1])
    return streamed[-1]["error"]


def test_pull_from_a_host_that_does_not_resolve_names_the_step_and_the_host(server):
    assert pull_error(server, {"model": "registry.invalid/library/smol:v1"}) == (
        'pull model manifest: Get "https://registry.invalid/v2/library/smol/manifests/v1": '
        "dial tcp: lookup registry.invalid: no such host"
    )


def test_pull_from_a_closed_port_says_connection_refused(server):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: a connect is refused, and no one can take the port
        host = f"127.0.0.1:{closed.getsockname()[1]}"
        assert pull_error(server, {"model": f"{host}/library/smol:v1", "insecure": True}) == (
            f'pull model manifest: Get "http://{host}/v2/library/smol/manifests/v1": dial tcp {host}: connect: connection refused'
        )


def test_https_to_a_plain_http_registry_says_tls_and_suggests_insecure(server, registry):
    message = pull_error(server, {"model": f"{registry.host}/library/smol:v1"})
    prefix = f'pull model manifest: Get "https://{registry.host}/v2/library/smol/manifests/v1": tls: handshake with {registry.host} failed'
    assert message.startswith(prefix), message
    assert message.endswith("if this registry speaks plain http, pull with --insecure")


def test_a_registry_error_carries_the_registrys_own_message(server, registry):
    remote = push_bundled(server, registry.host, "gone")
    forget_locally(server, remote)
    # The registry forgets the model's blob while its manifest stays: the pull's download is refused.
    deleted = httpx.delete(f"http://{registry.host}/v2/library/smol/blobs/{SMOLLM2_DIGEST}")
    assert deleted.status_code == 202, deleted.text
    message = pull_error(server, {"model": remote, "insecure": True})
    assert message == (
        f'pulling {SMOLLM2_DIGEST[7:19]}: Get "http://{registry.host}/v2/library/smol/blobs/{SMOLLM2_DIGEST}": '
        "404: blob unknown to registry"
    )
    assert remote not in names(server)


def test_a_push_refused_by_the_registry_carries_its_message(server, tmp_path):
    read_only = LocalRegistry(tmp_path / "read-only", read_only=True)
    try:
        remote = f"{read_only.host}/library/smol:v1"
        assert httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": remote}).status_code == 200
        streamed = lines(server, "/api/push", {"model": remote, "insecure": True})
        single = httpx.post(
            server.url + "/api/push", json={"model": remote, "insecure": True, "stream": False}, timeout=120
        )
    finally:
        read_only.stop()
    expected = f'upload blob: Post "http://{read_only.host}/v2/library/smol/blobs/uploads/": 405: Method not allowed'  # its plain-text body
    assert streamed[-1] == {"error": expected}
    assert (single.status_code, single.json()) == (500, {"error": expected})


def test_push_to_a_host_that_does_not_resolve_names_the_step(server):
    remote = "registry.invalid/library/smol:v1"
    assert httpx.post(server.url + "/api/copy", json={"source": MODEL, "destination": remote}).status_code == 200
    streamed = lines(server, "/api/push", {"model": remote})
    assert streamed[0] == {"status": "retrieving manifest"}
    assert streamed[-1]["error"].startswith('upload blob: Head "https://registry.invalid/v2/library/smol/blobs/sha256:')
    assert streamed[-1]["error"].endswith('": dial tcp: lookup registry.invalid: no such host')


def test_the_official_client_raises_the_cause(server):
    client = ollama.Client(host=server.url)
    try:
        with pytest.raises(ollama.ResponseError) as single:
            client.pull("registry.invalid/library/smol:v1")
        with pytest.raises(ollama.ResponseError) as streamed:
            list(client.pull("registry.invalid/library/smol:v1", stream=True))
    finally:
        client._client.close()
    assert single.value.status_code == 500
    assert streamed.value.status_code == -1  # an error line in a stream that had begun
    for raised in (single.value, streamed.value):
        assert raised.error.startswith(
            'pull model manifest: Get "https://registry.invalid/v2/library/smol/manifests/v1": '
        )
        assert raised.error.endswith("lookup registry.invalid: no such host")


def test_cli_pull_shows_the_cause(server):
    env = {**os.environ, "OLLAMA_HOST": server.url}
    failed = subprocess.run(
        [sys.executable, "-m", "modelyard", "pull", "registry.invalid/library/smol:v1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "pull model manifest: " in failed.stderr and "lookup registry.invalid: no such host" in failed.stderr


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (httpx.ConnectTimeout("timed out"), "dial tcp registry.invalid:443: i/o timeout"),
        (httpx.ReadTimeout("timed out"), "read tcp registry.invalid:443: i/o timeout (the registry stopped answering)"),
    ],
)
def test_timeouts_are_described_like_gos_net_errors(failure, cause):
    assert transport_cause(failure, httpx.URL("https://registry.invalid/v2/"), "pull") == cause
