"""Request parameters with Ollama's parsing rules: model options, keep_alive and format.

Options follow `api.Options.FromMap`: a known key with the wrong JSON type is an error, an unknown key is
logged and ignored, `null` is "not given". Legacy options the official clients still declare are accepted
silently. `max_tokens` is accepted as an alias of `num_predict` (a modelyard addition, see
docs/compatibility.md).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

import msgspec

from modelyard.errors import BadRequest, InternalError

log = logging.getLogger(__name__)


class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Effective options of one request: defaults < the model's PARAMETERs < the request's options."""

    # Load-time options: changing one reloads the model.
    num_ctx: int = 0  # 0: the server's default context length, capped at the model's trained length
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0  # 0: every core available to the process
    # Sampling and generation options.
    num_keep: int = 4
    seed: int = -1
    num_predict: int = -1
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    temperature: float = 0.8
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    draft_num_predict: int = 0
    stop: list[str] = msgspec.field(default_factory=list)


OptionKind = Literal["integer", "float32", "boolean", "array"]

OPTION_KINDS: dict[str, OptionKind] = {
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "integer",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "draft_num_predict": "integer",
    "stop": "array",
}

LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")

# Options Ollama removed that ollama-python and ollama-js still declare: accepted and ignored.
LEGACY_OPTIONS = frozenset(
    {
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "numa",
        "embedding_only",
    }
)

# Aliases a user's documentation promises; the real option wins when both are given.
OPTION_ALIASES = {"max_tokens": "num_predict"}


INT64 = (-(2**63), 2**63 - 1)  # Go's int: any integer option
INT32_MAX = 2**31 - 1  # what reaches the engines as a C int
# llama.cpp (GGML_MAX_N_THREADS) stops at 512 threads; far more crashes the process.
MAX_THREADS = 512

# Values an engine would crash on or misread, refused with a 400 before any engine sees them (a
# modelyard addition: Ollama passes them on; docs/compatibility.md lists them). (low, high, message).
OPTION_RANGES: dict[str, tuple[int, int, str]] = {
    "num_ctx": (1, INT32_MAX, "num_ctx must be a positive integer"),
    "num_batch": (1, INT32_MAX, "num_batch must be a positive integer"),
    "num_thread": (0, MAX_THREADS, f"num_thread must be between 0 (every core) and {MAX_THREADS}"),
    "num_gpu": (-1, INT32_MAX, "num_gpu must be -1 (as many layers as fit) or a number of layers"),
    "main_gpu": (0, INT32_MAX, "main_gpu must be a device index (0 or more)"),
    "top_k": (-INT32_MAX, INT32_MAX, f"top_k must be between {-INT32_MAX} and {INT32_MAX}"),
    "repeat_last_n": (-1, INT32_MAX, "repeat_last_n must be -1 (the whole context), 0 (off) or more"),
    "draft_num_predict": (0, INT32_MAX, "draft_num_predict must be 0 or more"),
}


def _checked_integer(key: str, value: int | float) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f'option "{key}" must be a finite number')
    number = int(value)  # Go truncates 2048.9 to 2048
    low, high, message = OPTION_RANGES.get(key, (*INT64, f'option "{key}" is out of range'))
    if not low <= number <= high:
        raise BadRequest(message)
    return number


def _checked_value(key: str, kind: OptionKind, value: Any) -> Any:
    """One option value converted the way Go's FromMap does: the reference's type error (500), or a
    400 for a value out of its range."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer":
        if is_number:
            return _checked_integer(key, value)
        raise InternalError(f'option "{key}" must be of type integer')
    if kind == "float32":
        if is_number:
            if not math.isfinite(value):
                raise BadRequest(f'option "{key}" must be a finite number')
            return float(value)
        raise InternalError(f'option "{key}" must be of type float32')
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        raise InternalError(f'option "{key}" must be of type boolean')
    if not isinstance(value, list):
        raise InternalError(f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise InternalError(f'option "{key}" must be of an array of strings')
    return list(value)


def parse_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Checked values of the options a request gives, by canonical name."""
    if not raw:
        return {}
    given: dict[str, Any] = {}
    aliased: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in OPTION_ALIASES:
            target = OPTION_ALIASES[key]
            aliased[target] = _checked_value(key, OPTION_KINDS[target], value)
        elif key in OPTION_KINDS:
            given[key] = _checked_value(key, OPTION_KINDS[key], value)
        elif key not in LEGACY_OPTIONS:
            log.warning("invalid option provided: %s", key)
    return {**aliased, **given}


def merge_options(*layers: dict[str, Any]) -> Options:
    """Options from the defaults overlaid by each layer in turn (model parameters, then request)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return Options(**merged)


# --- keep_alive ---------------------------------------------------------------------------------

# Nanoseconds per unit, as Go's time.ParseDuration reads them.
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
# Go's time.Duration is an int64 of nanoseconds: the longest duration, and so the longest keep_alive.
MAX_DURATION_NS = 2**63 - 1
MAX_DURATION_SECONDS = MAX_DURATION_NS / 1e9


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("1h30m", "-1m", "300ms"), with Go's error messages.

    Like Go, it counts whole nanoseconds and refuses a duration beyond int64 nanoseconds (about 292
    years) as invalid: "9999999999h" is a 400, not a date overflow later.
    """
    quoted = '"' + text + '"'
    invalid = BadRequest(f"time: invalid duration {quoted}")
    body = text
    negative = False
    if body and body[0] in "+-":
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise invalid
    total = 0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        assert match is not None  # every part of the pattern may be empty, so it matches anywhere
        whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3)
        if not whole and not fraction:
            raise invalid
        if not unit:
            raise BadRequest(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise BadRequest(f'time: unknown unit "{unit}" in duration {quoted}')
        if len(whole) > 19:  # more than int64 nanoseconds whatever the unit
            raise invalid
        scale = _DURATION_UNITS[unit]
        nanoseconds = int(whole or "0") * scale
        fraction = fraction[:19]  # digits beyond a nanosecond of an hour change nothing (Go drops them too)
        if fraction:
            nanoseconds += int(int(fraction) * scale / 10 ** len(fraction))
        total += nanoseconds
        if total > MAX_DURATION_NS + 1:  # Go allows exactly -2**63
            raise invalid
        position = match.end()
    if not negative and total > MAX_DURATION_NS:
        raise invalid
    return (-total if negative else total) / 1e9


def _go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return type(value).__name__


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded (math.inf: forever), or None when the request gives none."""
    if value is msgspec.UNSET or value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        # Go converts seconds beyond int64 nanoseconds into garbage; here they are the longest duration.
        if seconds > MAX_DURATION_SECONDS:
            return math.inf
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise BadRequest(f"Unsupported type: '{_go_type_name(value)}'")
    return math.inf if seconds < 0 else seconds


def parse_keep_alive_setting(text: str) -> float:
    """OLLAMA_KEEP_ALIVE: a Go duration or whole seconds; negative means forever."""
    try:
        seconds = float(int(text))
    except ValueError:
        seconds = parse_go_duration(text)
    return math.inf if seconds < 0 or seconds > MAX_DURATION_SECONDS else seconds


# --- format -------------------------------------------------------------------------------------

Format = Literal["json"] | dict[str, Any] | None


def parse_format(value: Any) -> Format:
    """`"json"`, a JSON Schema object, or None; anything else is Ollama's 500 error."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raw = msgspec.json.encode(value).decode()
    quoted = msgspec.json.encode(raw).decode()
    raise InternalError(f'invalid format: {quoted}; expected "json" or a valid JSON Schema object')
