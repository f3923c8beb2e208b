"""The CLI talks to a running server over HTTP, found through OLLAMA_HOST."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import httpx

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


def test_run_with_a_prompt_prints_the_answer(llama_server):
    result = modelyard(llama_server, "run", MODEL, "Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_run_reads_a_piped_prompt(llama_server):
    result = modelyard(llama_server, "run", MODEL, stdin="Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_run_interactive_chat_on_a_terminal(llama_server):
    """Typed lines on a terminal: each gets a streamed answer; /bye ends the session."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "OLLAMA_HOST": llama_server.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "run", MODEL],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    os.write(controller, b"/set parameter num_predict 12\nMy name is Ada.\nWhat is my name?\n/bye\n")
    stdout, stderr = process.communicate(timeout=120)
    os.close(controller)
    os.close(terminal)
    assert process.returncode == 0, stderr
    answers = [line for line in stdout.split(">>> ") if line.strip()]
    assert len(answers) == 2
    assert "Set parameter 'num_predict' to '12'" in stderr


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
