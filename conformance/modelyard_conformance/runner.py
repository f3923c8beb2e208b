"""Run one case in one streaming mode against a target, over HTTP.

Besides what a case expects, every response must keep the contract that holds for all of them: the status
and content type, JSON bodies that decode through the API's response types (contract.py), so a field of the
wrong type or a missing required field fails, error bodies that are exactly `{"error": "..."}`, and NDJSON
streams whose lines each end in a newline, decode, and end with one final line (`done: true`) or one error
line.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec

from .checks import MISSING, Check, check_paths, failures, resolve
from .contract import RESPONSE_TYPES
from .schema import Case, CompiledExpect, Request, Step
from .target import Target

TEXT_FIELDS = {"/api/generate": "response", "/api/chat": "message.content"}
MIME_KINDS = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "text/event-stream": "sse",
    "text/plain": "text",
}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CaseFailure(AssertionError):
    """A case that did not hold: what failed, and the exchange that showed it."""


class Exchange(msgspec.Struct, kw_only=True):
    """One request and what came back."""

    method: str
    url: str
    sent: bytes | None
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    disconnected: bool = False
    first_chunk_seconds: float | None = None  # when the first bytes of the answer came

    def transcript(self, limit: int = 1500) -> str:
        sent = "" if self.sent is None else "\n  " + self.sent.decode(errors="replace")[:500]
        body = self.body.decode(errors="replace")
        if len(body) > limit:
            body = body[:limit] + f"... ({len(self.body)} bytes)"
        headers = ", ".join(f"{k}: {v}" for k, v in self.headers.items() if k in ("content-type", "location"))
        return f"> {self.method} {self.url}{sent}\n< {self.status} ({headers}) in {self.seconds:.2f} s\n  {body}"


# --- variables ----------------------------------------------------------------------------------------


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """`${name}` replaced in every string of a value; a string that is only `${name}` takes its value as is."""
    if isinstance(value, str):
        whole = _VARIABLE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), variables)
        return _VARIABLE.sub(lambda match: str(_lookup(match.group(1), variables)), value)
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {
            _VARIABLE.sub(lambda m: str(_lookup(m.group(1), variables)), key): substitute(item, variables)
            for key, item in value.items()
        }
    return value


def _lookup(name: str, variables: dict[str, Any]) -> Any:
    if name not in variables:
        raise CaseFailure(f"the case uses ${{{name}}}, which is not defined (known: {', '.join(sorted(variables))})")
    return variables[name]


# --- sending ------------------------------------------------------------------------------------------


def request_body(request: Request, mode: str | None) -> bytes | None:
    if request.raw is not None:
        return request.raw.encode()
    if request.body is msgspec.UNSET:
        return None
    body = request.body
    if mode is not None and request.is_streaming and isinstance(body, dict):
        body = {**body, "stream": mode == "stream"}
    return json.dumps(body).encode()


def send(target: Target, request: Request, mode: str | None) -> Exchange:
    content = request_body(request, mode)
    headers = dict(request.headers)
    if content is not None and request.raw is None:
        headers.setdefault("Content-Type", "application/json")
    started = time.perf_counter()
    chunks: list[bytes] = []
    first_chunk: float | None = None
    disconnected = False
    timeout = request.timeout if target.request_timeout is None else min(request.timeout, target.request_timeout)
    with target.http.stream(request.verb, request.path, content=content, headers=headers, timeout=timeout) as response:
        lines = 0
        for chunk in response.iter_raw():
            if not chunks:
                first_chunk = time.perf_counter() - started
            chunks.append(chunk)
            lines += chunk.count(b"\n")
            if request.disconnect_after_lines is not None and lines >= request.disconnect_after_lines:
                disconnected = True
                break
            # A stream that keeps coming never trips the read timeout: a capped run ends it here.
            if target.request_timeout is not None and time.perf_counter() - started > timeout:
                raise httpx.ReadTimeout(f"the answer took longer than {timeout:g} s")
    return Exchange(
        method=request.verb,
        url=request.path,
        sent=content,
        status=response.status_code,
        headers={key.lower(): value for key, value in response.headers.items()},
        body=b"".join(chunks),
        seconds=time.perf_counter() - started,
        disconnected=disconnected,
        first_chunk_seconds=first_chunk,
    )


# --- checking -----------------------------------------------------------------------------------------


def content_kind(headers: dict[str, str]) -> str:
    mime = headers.get("content-type", "").split(";")[0].strip().lower()
    return MIME_KINDS.get(mime, mime or "empty")


def streams(request: Request, mode: str | None) -> bool:
    """Whether the server streams its answer to this request (stream defaults to true)."""
    if not request.is_streaming or request.raw is not None or not isinstance(request.body, dict):
        return False
    if mode is not None:
        return mode == "stream"
    return request.body.get("stream") is not False


def decode(path: str, status: int, document: dict[str, Any], where: str) -> list[str]:
    """Problems decoding one JSON object through the wire type of its endpoint (or the error type)."""
    if path.startswith("/v1/"):
        # The OpenAI- and Anthropic-compatible APIs have their own envelopes; the cases check their shapes.
        return []
    if "error" in document or status >= 400:
        if set(document) != {"error"} or not isinstance(document.get("error"), str):
            return [f'{where}: an error body must be exactly {{"error": "<message>"}}, is {json.dumps(document)[:300]}']
        return []
    response_type = RESPONSE_TYPES.get(path)
    if response_type is None:
        return []
    try:
        msgspec.convert(document, response_type, strict=True)
    except msgspec.ValidationError as exc:
        return [f"{where}: does not decode as {response_type.__name__}: {exc}"]
    return []


def text_of(path: str, documents: list[dict[str, Any]]) -> str:
    field = TEXT_FIELDS.get(path)
    if field is None:
        return ""
    parts = []
    for document in documents:
        for _, value in resolve(document, field):
            if isinstance(value, str):
                parts.append(value)
    return "".join(parts)


class Outcome(msgspec.Struct, kw_only=True):
    problems: list[str]
    final: Any = None
    text: str = ""


def evaluate(request: Request, expect: CompiledExpect, exchange: Exchange, mode: str | None) -> Outcome:
    problems: list[str] = []
    statuses = expect.status if isinstance(expect.status, list) else [expect.status or 200]
    if exchange.status not in statuses:
        problems.append(f"status must be {' or '.join(map(str, statuses))}, is {exchange.status}")
    stream = streams(request, mode) and exchange.status == 200
    kinds = expect.content_type or (["ndjson"] if stream else ["json"])
    kind = content_kind(exchange.headers)
    if not exchange.body and "empty" in kinds:
        pass  # an empty answer, which the case allows whatever its content type says
    elif request.verb == "HEAD":
        if exchange.body:
            problems.append(f"a HEAD answer has no body, has {len(exchange.body)} bytes")
        if expect.content_type and kind not in kinds:
            problems.append(f"content type must be {' or '.join(kinds)}, is {exchange.headers.get('content-type')!r}")
    elif kind not in kinds:
        problems.append(f"content type must be {' or '.join(kinds)}, is {exchange.headers.get('content-type')!r}")
    for name, check in expect.headers.items():
        problems.extend(f"header {name}: {problem}" for problem in failures(check, exchange.headers.get(name, MISSING)))
    text_body = exchange.body.decode("utf-8", errors="replace")
    if expect.raw is not None:
        problems.extend(f"body: {problem}" for problem in failures(expect.raw, text_body))
    if expect.max_seconds is not None and exchange.seconds > expect.max_seconds:
        problems.append(f"the answer must come within {expect.max_seconds} s, took {exchange.seconds:.1f} s")

    documents: list[dict[str, Any]] = []
    if request.verb != "HEAD" and kind in ("json", "ndjson") and exchange.body:
        documents, parse_problems = parse_documents(kind, exchange)
        problems.extend(parse_problems)
        for index, document in enumerate(documents):
            where = f"line {index + 1}" if kind == "ndjson" else "body"
            problems.extend(decode(request.path, exchange.status, document, where))
        if kind == "ndjson" and not exchange.disconnected:
            problems.extend(stream_shape(request.path, documents))
    elif request.verb != "HEAD" and kind in ("json", "ndjson") and "empty" not in kinds:
        problems.append("the body is empty")

    final = documents[-1] if documents else MISSING
    if expect.body:
        if final is MISSING:
            problems.append("no JSON body to check")
        else:
            problems.extend(check_paths(final, expect.body, "body" if kind == "json" else "final line"))
    if expect.chunks and kind == "ndjson":
        for index, document in enumerate(documents[:-1]):
            problems.extend(check_paths(document, expect.chunks, f"line {index + 1}"))
    if expect.line_count is not None and kind == "ndjson":
        problems.extend(f"line count: {problem}" for problem in failures(expect.line_count, len(documents)))
    error = final.get("error", MISSING) if isinstance(final, dict) else MISSING
    if expect.error is not None:
        problems.extend(f"error: {problem}" for problem in failures(expect.error, error))
    elif error not in (MISSING, None) and exchange.status < 400:  # OpenAI's Responses API sends "error": null
        problems.append(f"unexpected error line: {error!r}")
    if expect.plausible_durations:
        first = exchange.first_chunk_seconds
        streaming = None if first is None or kind != "ndjson" else exchange.seconds - first
        problems.extend(implausible_durations(final, exchange.seconds, streaming))
    text = text_of(request.path, [d for d in documents if "error" not in d])
    if expect.text is not None:
        problems.extend(f"text: {problem}" for problem in failures(expect.text, text))
    return Outcome(problems=problems, final=final, text=text)


DURATIONS = ("load_duration", "prompt_eval_duration", "eval_duration")
# The least time a server spends on a request it answers, relative to what the client waited: a total in
# milliseconds (a millionth of the nanoseconds) falls far below it, a real one stays far above.
LEAST_SHARE_INSIDE_THE_SERVER = 1e-3
LEAST_NS_PER_TOKEN = 1000  # no engine generates a token in less than a microsecond
LEAST_SHARE_OF_STREAM = 0.1


def implausible_durations(final: Any, seconds: float, streaming: float | None = None) -> list[str]:
    """Why the final object's durations cannot be nanoseconds of this request (empty when they can).

    Each part fits inside total_duration, which fits inside the time the client waited and is not
    a thousand times less; eval_duration allows at least a microsecond per generated token and, for a
    stream, is not a tenth of the time between its first and its last line, which generation filled."""
    if not isinstance(final, dict):
        return ["no final object with durations"]
    total = final.get("total_duration")
    if not isinstance(total, int):
        return [f"total_duration must be integer nanoseconds, is {total!r}"]
    waited = seconds * 1e9
    problems = []
    if total > waited:
        problems.append(f"total_duration {total} ns is longer than the request took ({waited:.0f} ns)")
    if total < waited * LEAST_SHARE_INSIDE_THE_SERVER:
        problems.append(f"total_duration {total} is too short for a request of {waited:.0f} ns: not nanoseconds?")
    if any(not isinstance(final.get(name), int) for name in DURATIONS if name in final):
        problems.append(f"durations must be integer nanoseconds: { {name: final.get(name) for name in DURATIONS} }")
        return problems
    parts: dict[str, int] = {name: final[name] for name in DURATIONS if name in final}
    if sum(parts.values()) > total:
        problems.append(f"{' + '.join(parts)} = {sum(parts.values())} exceeds total_duration {total}")
    eval_count = final.get("eval_count")
    eval_duration = parts.get("eval_duration")
    if isinstance(eval_count, int) and eval_duration is not None and eval_duration < eval_count * LEAST_NS_PER_TOKEN:
        problems.append(f"eval_duration {eval_duration} ns is under a microsecond a token ({eval_count} tokens)")
    if streaming is not None and eval_duration is not None and eval_duration < streaming * 1e9 * LEAST_SHARE_OF_STREAM:
        problems.append(f"eval_duration {eval_duration} ns is too short for a stream that took {streaming:.3f} s")
    return problems


def parse_documents(kind: str, exchange: Exchange) -> tuple[list[dict[str, Any]], list[str]]:
    problems: list[str] = []
    if kind == "json":
        pieces = [exchange.body]
    else:
        pieces = exchange.body.split(b"\n")
        if exchange.body.endswith(b"\n") or exchange.disconnected:
            pieces = pieces[:-1]  # nothing after the last newline, or a line cut off by our disconnect
        else:
            problems.append("the stream's last line does not end with a newline")
    documents = []
    for index, piece in enumerate(pieces):
        where = "body" if kind == "json" else f"line {index + 1}"
        try:
            document = json.loads(piece)
        except ValueError as exc:
            problems.append(f"{where} is not JSON ({exc}): {piece[:200]!r}")
            continue
        if not isinstance(document, dict):
            problems.append(f"{where} must be a JSON object, is {piece[:200]!r}")
            continue
        documents.append(document)
    return documents, problems


def stream_shape(path: str, documents: list[dict[str, Any]]) -> list[str]:
    """Chunks with `done: false`, then one final line with `done: true`, or an error line last.

    Progress streams (pull, push, create) have status lines and end with `{"status": "success"}`.
    """
    problems = []
    if not documents:
        return ["the stream has no lines"]
    progress = path not in TEXT_FIELDS
    for index, document in enumerate(documents[:-1]):
        if "error" in document:
            problems.append(f"line {index + 1}: an error line must be the last line")
        elif progress:
            continue
        elif document.get("done") is not False:
            problems.append(f"line {index + 1}: only the last line may have done true, is {document.get('done')!r}")
    last = documents[-1]
    if progress and "error" not in last and last.get("status") != "success":
        problems.append(f'line {len(documents)}: the last line must be {{"status": "success"}} or an error line')
    elif not progress and "error" not in last and last.get("done") is not True:
        problems.append(f"line {len(documents)}: the last line must have done true or be an error line")
    return problems


# --- a whole case -------------------------------------------------------------------------------------


def run_case(case: Case, mode: str | None, target: Target) -> None:
    """Run every step of `case`; raise CaseFailure with the exchange transcript at the first that fails."""
    captured: dict[str, Any] = {}
    steps = case.all_steps()
    sent_mode = mode if case.stream == "both" else None
    for number, raw_step in enumerate(steps, start=1):
        variables = {**target.variables, **captured}
        step = msgspec.convert(substitute(msgspec.to_builtins(raw_step), variables), Step)
        label = f"step {number} of {len(steps)}: " if len(steps) > 1 else ""
        singles = step.single()
        if len(singles) == 1:
            outcomes = [_exchange(case, singles[0], sent_mode, target, label)]
        else:
            with ThreadPoolExecutor(len(singles)) as pool:
                futures = [
                    pool.submit(_exchange, case, single, sent_mode, target, f"{label}parallel request {index}: ")
                    for index, single in enumerate(singles, start=1)
                ]
                outcomes = [future.result() for future in futures]
        for single, (outcome, exchange) in zip(singles, outcomes, strict=False):
            for name, path in single.capture.items():
                if path == "$text":
                    captured[name] = outcome.text
                    continue
                values = [value for _, value in resolve(outcome.final, path) if value is not MISSING]
                if not values:
                    raise CaseFailure(f"{label}nothing to capture at {path}\n{exchange.transcript()}")
                captured[name] = values[0]


def _exchange(case: Case, step: Step, mode: str | None, target: Target, label: str) -> tuple[Outcome, Exchange]:
    """Send one step's request and check its answer."""
    assert step.request is not None
    expect = step.expect.for_mode(mode if step.request.is_streaming else None).compiled()
    try:
        exchange = send(target, step.request, mode)
    except httpx.HTTPError as exc:
        log = target.server_log()
        raise CaseFailure(
            f"{label}{step.request.verb} {step.request.path} failed: {exc!r}"
            + (f"\n--- server log (tail) ---\n{log}" if log else "")
        ) from exc
    outcome = evaluate(step.request, expect, exchange, mode)
    if outcome.problems:
        details = "\n".join(f"  - {problem}" for problem in outcome.problems)
        raise CaseFailure(f"{label}{case.description}\n{details}\n{exchange.transcript()}")
    return outcome, exchange


def requirement_problem(case: Case, target: Target) -> str | None:
    """Why the target cannot run `case` (a missing or present capability), or None."""
    missing = [name for name in case.requires if name not in target.capabilities]
    if missing:
        return f"needs capability {', '.join(missing)}, which {target.model} on this server lacks"
    present = [name for name in case.lacks if name in target.capabilities]
    if present:
        return f"applies to models without {', '.join(present)}; {target.model} has it"
    return None


__all__ = ["CaseFailure", "Check", "run_case", "requirement_problem"]
