"""The suite runs green on the in-repo backends, against a server at a URL, and on an out-of-tree plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from support.suite import every_test

from modelyard_conformance.launcher import ServerProcess
from modelyard_conformance.schema import cases_dir

MODEL = "smollm2:135m"
REPO = Path(__file__).resolve().parents[2]
SERVER_ENV = {"MODELYARD_BUNDLED_MODELS": MODEL}
ONLY_SMOLLM2 = ["--server-env", f"MODELYARD_BUNDLED_MODELS={MODEL}"]
NO_BUNDLED = ["--server-env", "MODELYARD_BUNDLED_MODELS=none"]


def test_echo_backend_passes_the_suite(echo_run) -> None:
    returncode = echo_run.returncode
    assert returncode == 0, echo_run.explain()
    assert echo_run.reported() == every_test()
    assert echo_run.report["target"]["backend"] == "echo"
    assert "completion" in echo_run.report["target"]["capabilities"]


@pytest.mark.slow
def test_llamacpp_backend_passes_the_suite(llamacpp_run) -> None:
    returncode = llamacpp_run.returncode
    assert returncode == 0, llamacpp_run.explain()
    assert llamacpp_run.reported() == every_test()
    assert llamacpp_run.results("passed"), "the real model must pass the generation cases, not skip them"


def test_the_onnx_backend_passes_the_suite_on_the_tiny_model_but_its_known_gaps(onnx_tiny_run) -> None:
    """Random weights pass every case but the eight that need sensible text, which are strict xfails."""
    run = onnx_tiny_run
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()
    assert run.report["target"]["backend"] == "onnx"
    assert "format:onnx" in run.report["target"]["capabilities"]
    assert run.results("xfailed") == sorted(
        [
            *(
                f"{kind}/{case}[{mode}]"
                for kind in ("generate", "chat")
                for case in ("stop-sequence-ends-the-answer", "format-json-gives-json")
                for mode in ("stream", "no-stream")
            ),
            *(
                f"{case}[{mode}]"
                for case in (
                    "generate/system-changes-the-answer",
                    "chat/modelfile-system-changes-the-answer",
                    "openai/chat-stop-sequence-ends-the-answer",
                    "anthropic/stop-sequence-is-named",
                )
                for mode in ("stream", "no-stream")
            ),
        ]
    ), run.output


@pytest.mark.slow
def test_the_onnx_backend_passes_the_whole_suite_on_the_converted_smollm2(onnx_real_run) -> None:
    """The real model, with no expectations file: the cases that need sensible text pass too."""
    run = onnx_real_run
    assert run.returncode == 0, run.explain()
    assert run.reported() == every_test()
    assert not run.results("xfailed")
    assert "generate/stop-sequence-ends-the-answer[stream]" in run.results("passed")
    assert "chat/format-json-gives-json[no-stream]" in run.results("passed")


def test_a_missing_create_from_path_is_a_usage_error(suite, tmp_path: Path) -> None:
    run = suite(
        ["--backend", "onnx", "--model", "m", "--create-from", str(tmp_path / "absent"), *NO_BUNDLED],
        tmp_path / "report.json",
    )
    assert run.returncode == 4, run.output  # pytest's usage error
    assert "--create-from" in run.output and "no such file or folder" in run.output


def test_a_model_the_server_refuses_to_create_stops_the_run_with_its_error(suite, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    run = suite(
        ["--backend", "onnx", "--model", "m", "--create-from", str(folder), *NO_BUNDLED, "-x"],
        tmp_path / "report.json",
    )
    assert run.returncode != 0
    assert "could not create m" in run.output and "/api/create answered 400" in run.output, run.output


def test_create_from_takes_a_modelfile_in_base_url_mode(suite, tmp_path: Path) -> None:
    """A Modelfile FROM the bundled model with a SYSTEM prompt, created on a running server."""
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nSYSTEM You are terse.\n")
    with ServerProcess(tmp_path / "models", {"MODELYARD_BACKENDS": "echo", **SERVER_ENV}) as server:
        run = suite(
            ["--base-url", server.url, "--model", "terse:latest", "--create-from", str(modelfile), "-k", "show/"],
            tmp_path / "report.json",
        )
        shown = httpx.post(server.url + "/api/show", json={"model": "terse"}).json()
    assert run.returncode == 0, run.explain()
    assert shown["system"] == "You are terse."


def test_known_gaps_are_strict_xfails_with_their_issue(suite, tmp_path: Path) -> None:
    """A failing case listed in the expectations file shows as xfailed with its issue, and the run passes.

    Claiming the `image` capability for a text model makes the listed case really fail.
    """
    expectations = tmp_path / "expectations.yaml"
    expectations.write_text(
        textwrap.dedent(
            """\
            backend: echo
            xfail:
              - case: generate/image-generation-model-is-rejected
                issue: 4
                reason: smollm2 is not an image-generation model, whatever this run claims
            """
        )
    )
    run = suite(
        [
            "--backend",
            "echo",
            "--model",
            MODEL,
            *ONLY_SMOLLM2,
            "--capability",
            "image",
            "--expectations",
            str(expectations),
            "-k",
            "generate/image-generation-model-is-rejected",
        ],
        tmp_path / "report.json",
    )
    assert run.returncode == 0, run.output
    xfailed = [r for r in run.report["results"] if r["outcome"] == "xfailed"]
    assert xfailed and all(r["issue"] == 4 for r in xfailed), run.output


def test_a_fixed_gap_turns_the_run_red(suite, tmp_path: Path) -> None:
    expectations = tmp_path / "expectations.yaml"
    expectations.write_text(
        textwrap.dedent(
            """\
            backend: echo
            xfail:
              - case: server/version-reports-a-semver
                issue: 999
                reason: pretends the version endpoint is broken
            """
        )
    )
    run = suite(
        [
            "--backend",
            "echo",
            "--model",
            MODEL,
            *ONLY_SMOLLM2,
            "--expectations",
            str(expectations),
            "-k",
            "server/version",
        ],
        tmp_path / "report.json",
    )
    assert run.returncode != 0, run.output
    assert run.results("xpassed") == ["server/version-reports-a-semver"], run.output


def test_base_url_mode_runs_against_a_separate_server(suite, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "models", {"MODELYARD_BACKENDS": "echo", **SERVER_ENV}) as server:
        run = suite(["--base-url", server.url, "--model", MODEL, "--expectations", "echo"], tmp_path / "report.json")
    returncode = run.returncode
    assert returncode == 0, run.explain()
    assert run.report["target"]["mode"] == "base-url"
    assert run.reported() == every_test()


def test_the_cli_defaults_to_the_server_at_ollama_host(suite, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "models", {"MODELYARD_BACKENDS": "echo", **SERVER_ENV}) as server:
        run = suite(["-k", "server/version or tags/"], tmp_path / "report.json", env={"OLLAMA_HOST": server.url})
    returncode = run.returncode
    assert returncode == 0, run.explain()
    assert run.report["target"]["base_url"] == server.url
    assert run.report["target"]["model"] == MODEL


def test_the_plugin_is_inert_without_its_options(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", str(cases_dir()), "-q", "-p", "no:cacheprovider", "--co"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 5, completed.stdout + completed.stderr  # no tests collected
    assert "modelyard conformance" not in completed.stdout


# --- an out-of-tree backend, registered at run time ------------------------------------------------

PLUGIN = '''
"""A throwaway modelyard backend: answers with the user's words in reverse order."""

import asyncio
from typing import Any, ClassVar

import msgspec

from modelyard.plugin import (
    Backend,
    Completion,
    InternalError,
    LoadedModel,
    LoadSpec,
    TextDelta,
    TokenLoop,
    hookimpl,
)

FAIL_BEFORE = "modelyard-conformance:fail-before-first-chunk"
FAIL_AFTER = "modelyard-conformance:fail-after-first-chunk"


def instance(schema: Any) -> Any:
    """The smallest value that validates against a simple JSON Schema."""
    if not isinstance(schema, dict):
        return {}
    kind = schema.get("type", "object")
    if kind == "object":
        return {name: instance(schema.get("properties", {}).get(name, {})) for name in schema.get("required", [])}
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "null": None}.get(kind, {})


class ReverseBackend(Backend):
    name: ClassVar[str] = "reverse"

    def serves(self, model: Any) -> bool:
        return True

    async def load(self, model: Any, spec: LoadSpec) -> "ReverseModel":
        return ReverseModel(spec.context_length)


class ReverseModel(LoadedModel):
    size = 1

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    async def generate(self, completion: Completion):
        loop = TokenLoop(completion, self.context_length)
        messages = completion.messages or completion.conversation  # words, not a Go template's markup
        if messages:
            prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
            conversation = " ".join(m.content for m in messages)
        else:
            prompt = conversation = completion.prompt or ""
        if FAIL_BEFORE in prompt:
            raise InternalError("the reverse engine failed before answering")
        # A word is a token (an empty prompt is one): the conversation is capped to the context, and the
        # answer reverses the user's words that are left.
        conversation_words = conversation.split()
        kept = loop.fit(list(range(len(conversation_words))) or [0], keep=0)
        words = prompt.split()
        if len(kept) < len(conversation_words):
            words = words[len(words) - len(kept) :]
        if completion.format is not None:
            pieces = [msgspec.json.encode(instance(completion.format)).decode()]
        else:
            pieces = [word if i == 0 else " " + word for i, word in enumerate(reversed(words))] or ["..."]
        for index, piece in enumerate([] if loop.finished else pieces):
            if text := loop.push(index, piece):
                yield TextDelta(text)
            if FAIL_AFTER in prompt:
                raise InternalError("the reverse engine failed while answering")
            if loop.finished:
                break
            await asyncio.sleep(0)
        for event in loop.finish():
            yield event


@hookimpl
def register_backends(register: Any) -> None:
    register(ReverseBackend)
'''

# Like echo, the reverse backend answers with the user's words, which no system prompt changes.
GAPS = """\
backend: reverse
xfail:
  - {case: generate/system-changes-the-answer, issue: 16, reason: the answer is the prompt reversed}
  - {case: chat/modelfile-system-changes-the-answer, issue: 16, reason: the answer is the user's words reversed}
  - {case: chat/tool-choice-names-the-function-called, issue: 13, reason: a forced call needs a grammar and the plugin applies none}
  - {case: chat/tool-choice-required-returns-a-call, issue: 13, reason: a forced call needs a grammar and the plugin applies none}
  - {case: openai/chat-tool-choice-named-function, issue: 13, reason: a forced call needs a grammar and the plugin applies none}
  - {case: openai/chat-tool-choice-required-returns-tool-calls, issue: 13, reason: a forced call needs a grammar and the plugin applies none}
  - {case: openai/chat-tool-choice-required-streams-tool-call-deltas, issue: 13, reason: a forced call needs a grammar and the plugin applies none}
  - {case: logprobs/chat-gives-one-per-token, issue: 13, reason: the plugin has no logits to report}
  - {case: logprobs/generate-gives-one-per-token, issue: 13, reason: the plugin has no logits to report}
  - {case: openai/chat-logprobs-in-openais-shape, issue: 13, reason: the plugin has no logits to report}
  - {case: openai/completion-logprobs-in-openais-shape, issue: 13, reason: the plugin has no logits to report}
"""


def install_plugin(site: Path) -> None:
    """A package and its dist-info on a path entry: what `pip install` of a plugin leaves behind."""
    (site / "modelyard_reverse").mkdir(parents=True)
    (site / "modelyard_reverse" / "__init__.py").write_text(PLUGIN)
    info = site / "modelyard_reverse-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelyard-reverse\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[modelyard]\nreverse = modelyard_reverse\n")


def test_an_out_of_tree_backend_plugin_passes_the_suite(suite, tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    (tmp_path / "reverse.yaml").write_text(GAPS)
    run = suite(
        [
            "--backend",
            "reverse",
            "--model",
            MODEL,
            "--expectations",
            str(tmp_path / "reverse.yaml"),
            "--capability",
            "fault-injection",
            *ONLY_SMOLLM2,
        ],
        tmp_path / "report.json",
        env={"PYTHONPATH": str(tmp_path / "site")},
    )
    returncode = run.returncode
    assert returncode == 0, run.explain()
    assert run.report["target"]["backend"] == "reverse"
    assert run.reported() == every_test()
    passed = run.results("passed")
    assert "generate/error-after-the-first-chunk-is-a-final-error-line[stream]" in passed
    assert "generate/error-before-the-first-chunk-gets-its-status[stream]" in passed
