"""`modelyard conformance`: run the suite with pytest.

    modelyard conformance --backend llamacpp                    # start a server with that backend, bundled model
    modelyard conformance --base-url http://host:11434 --model llama3.2
    modelyard conformance --model smollm2:135m                  # the server at OLLAMA_HOST
    modelyard conformance --self-check                          # the suite's own checks, no server

Every other argument goes to pytest (`-k chat/`, `-x`, `--conformance-report report.json`, ...).
"""

from __future__ import annotations

import os
import sys

from .schema import cases_dir

DEFAULT_MODEL = "smollm2:135m"
MODE_OPTIONS = ("--backend", "--conformance-backend", "--base-url", "--conformance-base-url")
MODEL_OPTIONS = ("--model", "--conformance-model")


def _given(argv: list[str], names: tuple[str, ...]) -> bool:
    return any(arg in names or arg.split("=", 1)[0] in names for arg in argv)


def pytest_arguments(argv: list[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """The pytest command line that runs the suite with `argv`'s options and the CLI's defaults."""
    from modelyard.config import base_url

    # This process imported the suite before pytest could mark it for assertion rewriting, which the
    # suite does not use: pytest's warning about that is noise here.
    arguments = [str(cases_dir()), "-p", "no:cacheprovider", "-ra", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        arguments += ["-p", "modelyard_conformance.pytest_plugin"]
    if not _given(argv, MODE_OPTIONS):
        arguments += ["--base-url", base_url(environ.get("OLLAMA_HOST"))]
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
        print("  --conformance-report PATH")
        return 0
    if "--self-check" in argv:
        from .selfcheck import main as selfcheck_main

        return selfcheck_main([arg for arg in argv if arg != "--self-check"])
    import pytest

    return int(pytest.main(pytest_arguments(argv)))
