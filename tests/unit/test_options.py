import math

import pytest

from modelyard.errors import BadRequest, InternalError
from modelyard.options import (
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
