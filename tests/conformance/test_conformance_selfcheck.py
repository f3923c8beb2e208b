"""The suite checks itself, and its schema and check language reject what they must."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

from modelyard.config import Settings
from modelyard.server import create_app
from modelyard_conformance import selfcheck
from modelyard_conformance.checks import MISSING, failures, parse_check, resolve
from modelyard_conformance.cli import pytest_arguments
from modelyard_conformance.schema import Case, DataError, Expect, load_case_file, load_cases, load_coverage


def implemented_endpoints(tmp_path: Path) -> list[tuple[str, str]]:
    """What modelyard's app serves, as (method, path), from its routes."""
    app = create_app(Settings(models=tmp_path / "models", backends=("echo",), bundled_models=()))
    return sorted((method, route.path) for route in app.routes for method in route.methods if method != "OPTIONS")


def case(**fields) -> Case:
    base = {
        "id": "generate/something-holds",
        "description": "Something holds.",
        "reference": "2.3 Response",
        "request": {"path": "/api/generate", "body": {"model": "m"}},
    }
    return msgspec.convert({**base, **fields}, Case)


def test_the_suite_has_no_problems(tmp_path: Path) -> None:
    assert selfcheck.problems(implemented=implemented_endpoints(tmp_path)) == []


def test_every_implemented_endpoint_has_a_case(tmp_path: Path) -> None:
    endpoints = implemented_endpoints(tmp_path)
    assert ("POST", "/api/generate") in endpoints
    used = {endpoint for c in load_cases() for endpoint in c.endpoints()}
    missing = [route for route in endpoints if not any(selfcheck.Endpoint(*route).matches(*pair) for pair in used)]
    assert missing == []


def test_the_reference_index_matches_the_reference() -> None:
    reference = selfcheck.find_reference()
    if reference is None:
        pytest.skip(f"ollama-api.md is not beside this checkout; set {selfcheck.REFERENCE_ENV} to check the index")
    assert selfcheck.index_problems(reference) == []


def test_every_error_row_is_covered_or_pending() -> None:
    index = selfcheck.load_index()
    covered = {row for c in load_cases() for row in c.covers}
    pending = {entry.row for entry in load_coverage().pending if entry.row}
    assert {row.key for row in index.errors} == covered | pending
    assert len(index.errors) > 40


def test_an_unknown_key_in_a_case_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(
        "- id: generate/x-holds\n  description: X holds.\n  reference: '2.3 Response'\n"
        "  request: {path: /api/generate, body: {}}\n  expcet: {status: 200}\n"
    )
    with pytest.raises(DataError, match="expcet"):
        load_case_file(path)


def test_an_unknown_check_operator_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown check operator"):
        parse_check({"eqals": 1})
    with pytest.raises((ValueError, msgspec.ValidationError)):
        case(expect={"body": {"done": {"typ": "boolean"}}})


def test_a_case_needs_a_request_or_steps() -> None:
    with pytest.raises(ValueError, match="either"):
        case(request=None)
    with pytest.raises(ValueError, match="endpoint/what-holds"):
        case(id="Generate Something")


def test_descriptions_are_declarative() -> None:
    assert selfcheck.description_problems(case()) == []
    assert selfcheck.description_problems(case(description="num_predict caps eval_count.")) == []
    for bad in (
        "Test that the stream ends.",
        "The stream should end.",
        "the stream ends.",
        "The stream ends",
        "The stream ends. Then it stops.",
    ):
        assert selfcheck.description_problems(case(description=bad)), bad


def test_duplicate_ids_unresolved_references_and_unknown_capabilities_are_found() -> None:
    index = selfcheck.load_index()
    problems = selfcheck.case_problems((case(), case()), index)
    assert any("used by 2 cases" in problem for problem in problems)
    assert selfcheck.case_problems((case(reference="2.3 Responses"),), index)
    assert selfcheck.case_problems((case(reference="2"),), index)  # names several headings
    assert selfcheck.case_problems((case(requires=["completoin"]),), index)
    assert selfcheck.case_problems((case(covers=["No such row | generate"]),), index)


def test_a_body_that_sets_stream_must_run_as_is() -> None:
    index = selfcheck.load_index()
    both = case(request={"path": "/api/generate", "body": {"model": "m", "stream": False}})
    assert selfcheck.case_problems((both,), index)
    assert not selfcheck.case_problems((msgspec.structs.replace(both, stream="as-is"),), index)


def test_coverage_problems_are_found() -> None:
    index = selfcheck.load_index()
    cases = load_cases()
    coverage = load_coverage()
    assert selfcheck.coverage_problems(cases, index, coverage) == []
    # An endpoint that the server gains stays red until it has a case and leaves coverage.yaml.
    problems = selfcheck.coverage_problems(cases, index, coverage, implemented=[("GET", "/api/status")])
    assert any("no case requests it" in problem for problem in problems)
    assert any("says pending" in problem for problem in problems)
    # A catalogue row neither covered nor pending.
    fewer = msgspec.structs.replace(
        coverage, pending=[p for p in coverage.pending if p.row != "`/api/me` not signed in | me"]
    )
    assert any("`/api/me` not signed in" in problem for problem in selfcheck.coverage_problems(cases, index, fewer))


def test_paths_find_values() -> None:
    document = {
        "models": [{"name": "a:latest", "size": 1}, {"name": "b:7b", "size": 2}],
        "model_info": {"general.architecture": "llama"},
    }
    assert [value for _, value in resolve(document, "models.*.size")] == [1, 2]
    assert [value for _, value in resolve(document, "models[name=b:7b].size")] == [2]
    assert [value for _, value in resolve(document, "models[name=c:1b].size")] == [MISSING]
    assert [value for _, value in resolve(document, 'model_info["general.architecture"]')] == ["llama"]


def test_checks_hold_or_say_why() -> None:
    assert failures(parse_check(3), 3) == []
    assert failures(parse_check(3), True)  # JSON equality: true is not 3
    assert failures(parse_check({"type": "integer", "min": 1000}), 12) != []
    assert failures(parse_check({"absent": True}), MISSING) == []
    assert failures(parse_check({"one_of": ["stop", "length"]}), "load") != []
    assert failures(parse_check({"json": {"type": "object", "required": ["a"]}}), '{"a": 1}') == []
    assert failures(parse_check({"json": {"type": "object", "required": ["a"]}}), '{"b": 1}') != []
    assert failures(parse_check({"json": True}), "{not json") != []
    assert failures(parse_check({"format": "rfc3339"}), "2025-10-26T17:15:24.097767123Z") == []
    assert failures(parse_check({"format": "rfc3339"}), "2025-10-26 17:15:24") != []
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    assert failures(parse_check({"seconds_from_now": {"min": 240, "max": 360}}), soon) == []
    assert failures(parse_check({"sorted": "descending", "sorted_by": "t"}), [{"t": 2}, {"t": 1}]) == []
    assert failures(parse_check({"sorted": "descending", "sorted_by": "t"}), [{"t": 1}, {"t": 2}]) != []


def test_expectations_per_mode() -> None:
    expect = msgspec.convert({"status": 200, "no-stream": {"status": 500}}, Expect)
    assert expect.for_mode("stream").status == 200
    assert expect.for_mode("no-stream").status == 500


def test_the_cli_fills_in_the_server_and_model() -> None:
    arguments = pytest_arguments(["-k", "chat/"], {"OLLAMA_HOST": "127.0.0.1:5555"})
    assert arguments[arguments.index("--base-url") + 1] == "http://127.0.0.1:5555"
    assert arguments[arguments.index("--model") + 1] == "smollm2:135m"
    arguments = pytest_arguments(["--backend", "echo", "--model", "x"], {})
    assert "--base-url" not in arguments and arguments.count("--model") == 1
