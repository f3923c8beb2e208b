"""`modelyard conformance` (or `modelyard-conformance`, where only the suite is installed): run it with pytest.

    modelyard conformance --backend llamacpp                    # start a server with that backend, bundled model
    modelyard conformance --base-url http://host:11434 --model llama3.2
    modelyard conformance --model smollm2:135m                  # the server at OLLAMA_HOST
    modelyard-conformance --base-url http://host:8080 --model m --api openai   # only /v1: any OpenAI server
    modelyard conformance --self-check                          # the suite's own checks, no server
    modelyard conformance --mutation-score --backend llamacpp   # score the suite against the mutant catalogue

Every other argument goes to pytest (`-k chat/`, `-x`, `--conformance-report report.json`, ...).
"""

from __future__ import annotations

import os
import sys

from .schema import cases_dir

DEFAULT_MODEL = "smollm2:135m"
DEFAULT_PORT = 11434
MODE_OPTIONS = ("--backend", "--conformance-backend", "--base-url", "--conformance-base-url")
MODEL_OPTIONS = ("--model", "--conformance-model")


def _given(argv: list[str], names: tuple[str, ...]) -> bool:
    return any(arg in names or arg.split("=", 1)[0] in names for arg in argv)


def ollama_host_url(value: str | None) -> str:
    """The URL of the server that OLLAMA_HOST names, as Ollama's clients read it (`host:port`, `:port`,
    `host`, a scheme, `[::1]:port`); modelyard's own reader (modelyard.config.base_url) agrees."""
    text = (value or "").strip()
    scheme = "https" if text.startswith("https://") else "http"
    text = text.split("://", 1)[1] if "://" in text else text
    text = text.split("/", 1)[0]
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:]:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text) if port_text else DEFAULT_PORT
    if host in ("", "0.0.0.0", "::"):  # the server listens everywhere: reach it on loopback
        host = "127.0.0.1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def pytest_arguments(argv: list[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """The pytest command line that runs the suite with `argv`'s options and the CLI's defaults."""
    # This process imported the suite before pytest could mark it for assertion rewriting, which the
    # suite does not use: pytest's warning about that is noise here.
    arguments = [str(cases_dir()), "-p", "no:cacheprovider", "-ra", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        arguments += ["-p", "modelyard_conformance.pytest_plugin"]
    if not _given(argv, MODE_OPTIONS):
        arguments += ["--base-url", ollama_host_url(environ.get("OLLAMA_HOST"))]
    if not _given(argv, MODEL_OPTIONS):
        arguments += ["--model", DEFAULT_MODEL]
    return arguments + argv


def conformance_main(argv: list[str] | None = None) -> int:
    """Run the conformance suite; `argv` are the arguments after `modelyard conformance`. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print("\nSuite options (see also `pytest --help`, section modelyard-conformance):")
        print("  --backend NAME | --base-url URL, --model MODEL (default smollm2:135m), --expectations FILE,")
        print("  --capability NAME, --server-env KEY=VALUE, --models-dir DIR, --create-from PATH, --no-extensions,")
        print("  --api all|openai (openai: only the /v1 cases, the model looked up in /v1/models),")
        print("  --conformance-report PATH")
        print("  --mutation-score [--mutant ID] [--case-timeout S] [--report PATH] [--fail-under PERCENT]")
        return 0
    if "--mutation-score" in argv:
        from .mutation import main as mutation_main

        return mutation_main([arg for arg in argv if arg != "--mutation-score"])
    if "--self-check" in argv:
        from .selfcheck import main as selfcheck_main

        return selfcheck_main([arg for arg in argv if arg != "--self-check"])
    import pytest

    return int(pytest.main(pytest_arguments(argv)))


def main() -> None:
    """The `modelyard-conformance` command."""
    sys.exit(conformance_main())
