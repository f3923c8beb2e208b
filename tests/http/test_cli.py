"""The CLI talks to a running server over HTTP, found through OLLAMA_HOST."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

MODEL = "smollm2:135m"


def modelyard(server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": server.url}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_version():
    result = subprocess.run([sys.executable, "-m", "modelyard", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("modelyard version is ")


def test_list(llama_server):
    result = modelyard(llama_server, "list")
    assert result.returncode == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(row.startswith(MODEL) and "98 MB" in row for row in rows)


@pytest.fixture
def short_model(llama_server) -> Iterator[str]:
    """SmolLM2 with `PARAMETER num_predict 24`: a sampled answer can ramble for minutes otherwise."""
    name = "smollm2-short"
    with httpx.Client(base_url=llama_server.url, timeout=60) as http:
        created = http.post(
            "/api/create", json={"model": name, "from": MODEL, "parameters": {"num_predict": 24}, "stream": False}
        )
        assert created.status_code == 200, created.text
        yield name
        http.request("DELETE", "/api/delete", json={"model": name})


def test_run_with_a_prompt_prints_the_answer(llama_server, short_model):
    result = modelyard(llama_server, "run", short_model, "Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.endswith("\n\n")  # Ollama ends an answer with an empty line


def test_run_reads_a_piped_prompt(llama_server, short_model):
    result = modelyard(llama_server, "run", short_model, stdin="Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.endswith("\n\n")


def test_run_puts_piped_text_before_the_prompt(echo_server):
    """As `ollama run`: stdin, then the prompt's words, one prompt; the echo backend repeats it."""
    result = modelyard(echo_server, "run", MODEL, "and", "these words", stdin="piped text")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "piped text and these words\n\n"


def test_run_verbose_and_format_flags(echo_server):
    result = modelyard(echo_server, "run", MODEL, "--verbose", "--format", "json", "hi there")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"echo": "hi there"}
    # The echo backend counts every word of the prompt it was given, the model's SYSTEM message too.
    system = httpx.post(echo_server.url + "/api/show", json={"model": MODEL}).json().get("system", "")
    assert re.search(rf"^prompt eval count:\s+{2 + len(system.split())} token\(s\)$", result.stderr, re.MULTILINE)
    assert re.search(r"^eval rate:\s+[0-9.]+ tokens/s$", result.stderr, re.MULTILINE)


def test_run_without_a_terminal_for_output_answers_once(echo_server):
    """A terminal on stdin but stdout to a pipe: no session (Ollama loads the model and leaves)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "OLLAMA_HOST": echo_server.url}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "modelyard", "run", MODEL],
            stdin=terminal,
            capture_output=True,
            env=env,
            text=True,
            timeout=120,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_run_unknown_model(echo_server):
    result = modelyard(echo_server, "run", "no-such-model", "hi")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: model 'no-such-model:latest' not found"


def test_ps_show_and_stop(llama_server):
    httpx.post(llama_server.url + "/api/generate", json={"model": MODEL}, timeout=60)  # load
    listed = modelyard(llama_server, "ps").stdout
    assert MODEL in listed and "100% CPU" in listed
    shown = modelyard(llama_server, "show", MODEL).stdout
    assert "llama" in shown and "134.52M" in shown and "Q4_1" in shown and "completion" in shown
    assert modelyard(llama_server, "stop", MODEL).returncode == 0
    assert MODEL not in modelyard(llama_server, "ps").stdout


def test_errors_are_reported_not_raised(llama_server):
    result = modelyard(llama_server, "show", "no-such-model")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: model 'no-such-model:latest' not found"


def test_no_server(tmp_path):
    env = {**os.environ, "OLLAMA_HOST": "127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "modelyard", "list"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "could not connect" in result.stderr
