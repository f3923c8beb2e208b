"""Backend settings come from MODELYARD_<BACKEND>_<FIELD>; a misspelled one stops the server, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from modelyard.runtime.plugins import settings_from_env


class Knobs(msgspec.Struct, forbid_unknown_fields=True):
    flash_attn: bool = False
    threads: int = 2


def test_settings_are_converted_from_strings() -> None:
    env = {"MODELYARD_KNOB_FLASH_ATTN": "true", "MODELYARD_KNOB_THREADS": "8", "MODELYARD_OTHER_X": "1"}
    assert settings_from_env(Knobs, "MODELYARD_KNOB_", env) == Knobs(flash_attn=True, threads=8)


def test_a_misspelled_setting_is_named_with_the_ones_there_are() -> None:
    with pytest.raises(ValueError) as raised:
        settings_from_env(Knobs, "MODELYARD_KNOB_", {"MODELYARD_KNOB_FLASH_ATN": "1"})
    message = str(raised.value)
    assert "MODELYARD_KNOB_FLASH_ATN" in message
    assert "MODELYARD_KNOB_FLASH_ATTN" in message and "MODELYARD_KNOB_THREADS" in message


def test_serve_stops_at_start_on_a_misspelled_backend_setting(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODELYARD_MODELS": str(tmp_path / "models"),
        "MODELYARD_BACKENDS": "echo",
        "MODELYARD_ECHO_DELAI": "0.1",
        "OLLAMA_HOST": "127.0.0.1:1",  # never reached: it must stop before listening
    }
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "MODELYARD_ECHO_DELAI" in done.stderr and "MODELYARD_ECHO_DELAY" in done.stderr
