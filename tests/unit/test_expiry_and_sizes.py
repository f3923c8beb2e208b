"""Guards against values that used to break the server for everyone: keep_alive arithmetic and sizes."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from modelyard.config import DEFAULT_MAX_BODY_SIZE, Settings, parse_size
from modelyard.runtime.scheduler import FOREVER, expiry_after


@pytest.mark.parametrize("seconds", [math.inf, 3e16, FOREVER.total_seconds(), 1e300])
def test_expiry_of_a_huge_keep_alive_is_capped_at_forever(seconds):
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert expiry_after(now, seconds) == now + FOREVER


def test_expiry_of_an_ordinary_keep_alive():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert expiry_after(now, 300) == now + dt.timedelta(minutes=5)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("512MiB", 512 * 1024**2), ("2GB", 2 * 1000**3), ("64 kib", 64 * 1024), ("0", None)],
)
def test_body_size_setting(text, size):
    assert parse_size(text) == size
    assert Settings.from_env({"MODELYARD_MAX_BODY_SIZE": text}).max_body_size == size


def test_body_size_default_and_bad_values():
    assert Settings.from_env({}).max_body_size == DEFAULT_MAX_BODY_SIZE
    with pytest.raises(ValueError, match="invalid size 'lots'"):
        parse_size("lots")


def test_context_length_zero_is_the_default():
    assert Settings.from_env({"OLLAMA_CONTEXT_LENGTH": "0"}).context_length == 4096
