import math

import pytest

from modelyard.errors import BadRequest, InternalError
from modelyard.runtime.options import (
    MAX_DURATION_SECONDS,
    Options,
    merge_options,
    parse_format,
    parse_go_duration,
    parse_keep_alive,
    parse_keep_alive_setting,
    parse_options,
)


def test_defaults_are_ollamas():
    options = Options()
    assert (options.temperature, options.top_k, options.top_p, options.repeat_penalty) == (0.8, 40, 0.9, 1.0)
    assert (options.seed, options.num_predict, options.num_keep, options.num_batch) == (-1, -1, 4, 512)


def test_integer_options_truncate_floats_like_go():
    assert parse_options({"num_ctx": 2048.9}) == {"num_ctx": 2048}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"num_predict": "5"}, 'option "num_predict" must be of type integer'),
        ({"num_predict": True}, 'option "num_predict" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "\n"}, 'option "stop" must be of type array'),
        ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_wrong_types_are_the_references_500(options, message):
    with pytest.raises(InternalError) as raised:
        parse_options(options)
    assert raised.value.message == message
    assert raised.value.status == 500


def test_legacy_and_unknown_options_are_ignored():
    assert parse_options({"mirostat": 2, "penalize_newline": True, "numa": False, "whatever": 1}) == {}


def test_null_means_not_given():
    assert parse_options({"temperature": None}) == {}


def test_max_tokens_is_an_alias_of_num_predict_and_loses_to_it():
    assert parse_options({"max_tokens": 1000}) == {"num_predict": 1000}
    assert parse_options({"max_tokens": 1000, "num_predict": 5}) == {"num_predict": 5}
    with pytest.raises(InternalError, match='option "max_tokens" must be of type integer'):
        parse_options({"max_tokens": "many"})


def test_request_options_override_model_parameters():
    merged = merge_options({"temperature": 0.1, "top_k": 5}, {"temperature": 0.7})
    assert (merged.temperature, merged.top_k) == (0.7, 5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("-1m", -60), ("0", 0), ("1.5s", 1.5), ("2h45m10s", 9910)],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("abc", 'time: invalid duration "abc"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        (True, "Unsupported type: 'bool'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
    ],
)
def test_bad_keep_alive_is_400(value, message):
    with pytest.raises(BadRequest) as raised:
        parse_keep_alive(value)
    assert raised.value.message == message


def test_keep_alive_numbers_are_seconds_and_negative_is_forever():
    assert parse_keep_alive(30) == 30
    assert parse_keep_alive(0.5) == 0.5
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1m") == math.inf
    assert parse_keep_alive(None) is None


def test_keep_alive_setting_accepts_whole_seconds():
    assert parse_keep_alive_setting("600") == 600
    assert parse_keep_alive_setting("10m") == 600
    assert parse_keep_alive_setting("-1") == math.inf


def test_format():
    assert parse_format(None) is None
    assert parse_format("") is None
    assert parse_format("json") == "json"
    assert parse_format({"type": "object"}) == {"type": "object"}
    with pytest.raises(InternalError) as raised:
        parse_format("xml")
    assert raised.value.message == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'


@pytest.mark.parametrize("text", ["9999999999h", "2562048h", "2562047h47m16.854775808s", "9" * 5000 + "s"])
def test_durations_beyond_int64_nanoseconds_are_gos_400(text):
    with pytest.raises(BadRequest) as raised:
        parse_keep_alive(text)
    assert raised.value.message == f'time: invalid duration "{text}"'


def test_the_longest_go_duration_and_its_negative_still_parse():
    assert parse_go_duration("2562047h47m16.854775807s") == pytest.approx(MAX_DURATION_SECONDS)
    assert parse_keep_alive("-2562047h47m16.854775808s") == math.inf


@pytest.mark.parametrize("value", [3e16, 1e308, MAX_DURATION_SECONDS * 2])
def test_keep_alive_numbers_too_long_for_go_mean_forever(value):
    assert parse_keep_alive(value) == math.inf


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": -5}, "num_ctx must be a positive integer"),
        ({"num_ctx": 0}, "num_ctx must be a positive integer"),
        ({"num_ctx": 2**40}, "num_ctx must be a positive integer"),
        ({"num_batch": 0}, "num_batch must be a positive integer"),
        ({"num_thread": -1}, "num_thread must be between 0 (every core) and 512"),
        ({"num_thread": 100_000}, "num_thread must be between 0 (every core) and 512"),
        ({"num_gpu": -2}, "num_gpu must be -1 (as many layers as fit) or a number of layers"),
        ({"main_gpu": -1}, "main_gpu must be a device index (0 or more)"),
        ({"repeat_last_n": -2}, "repeat_last_n must be -1 (the whole context), 0 (off) or more"),
        ({"num_predict": 2**70}, 'option "num_predict" is out of range'),
        ({"num_predict": float("inf")}, 'option "num_predict" must be a finite number'),
        ({"temperature": float("inf")}, 'option "temperature" must be a finite number'),
    ],
)
def test_values_an_engine_cannot_take_are_400(options, message):
    with pytest.raises(BadRequest) as raised:
        parse_options(options)
    assert (raised.value.message, raised.value.status) == (message, 400)


def test_values_ollama_gives_a_meaning_stay_accepted():
    given = {
        "num_gpu": -1,
        "num_thread": 0,
        "num_keep": -1,
        "num_predict": -2,
        "repeat_last_n": -1,
        "seed": 2**40,
        "top_k": 0,
    }
    assert parse_options(given) == given
