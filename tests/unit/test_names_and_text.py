import pytest

from modelyard.config import base_url, parse_host
from modelyard.errors import BadRequest
from modelyard.runtime.text import StopSequences
from modelyard.store.gguf import human_number
from modelyard.store.names import ModelName


@pytest.mark.parametrize(
    ("text", "display", "fully_qualified"),
    [
        ("smollm2", "smollm2:latest", "registry.ollama.ai/library/smollm2:latest"),
        ("smollm2:135m", "smollm2:135m", "registry.ollama.ai/library/smollm2:135m"),
        ("user/model", "user/model:latest", "registry.ollama.ai/user/model:latest"),
        ("host:5000/ns/m:tag", "host:5000/ns/m:tag", "host:5000/ns/m:tag"),
        ("https://example.com/ns/m:v1", "example.com/ns/m:v1", "example.com/ns/m:v1"),
    ],
)
def test_names(text, display, fully_qualified):
    name = ModelName.parse(text)
    assert name.display == display
    assert name.fully_qualified == fully_qualified


@pytest.mark.parametrize("text", ["", "a/b/c/d", "../x", "x/..", "-bad", "m:t@g:", "na me", "..:x", "ns/../m"])
def test_invalid_names(text):
    with pytest.raises(BadRequest, match="invalid model name"):
        ModelName.parse(text)


def test_names_match_case_insensitively():
    assert ModelName.parse("SmolLM2:135M").folded() == ModelName.parse("smollm2:135m").folded()


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        (None, "127.0.0.1", 11434),
        ("0.0.0.0", "0.0.0.0", 11434),
        (":8080", "127.0.0.1", 8080),
        ("example.com:1234", "example.com", 1234),
        ("http://10.0.0.1:5000", "10.0.0.1", 5000),
        ("[::1]:9000", "::1", 9000),
    ],
)
def test_ollama_host(value, host, port):
    assert parse_host(value) == (host, port)


def test_base_url_reaches_a_wildcard_bind_on_loopback():
    assert base_url("0.0.0.0:1234") == "http://127.0.0.1:1234"
    assert base_url(None) == "http://127.0.0.1:11434"


@pytest.mark.parametrize(
    ("count", "text"),
    [(134515008, "134.52M"), (268098176, "268.10M"), (7_000_000_000, "7B"), (7_600_000_000, "7.6B"), (12_000, "12K")],
)
def test_human_number(count, text):
    assert human_number(count) == text


def test_stop_sequences_hold_back_partial_matches_and_never_emit_the_stop():
    stops = StopSequences(["<end>", "STOP"])
    assert stops.push("Hello <e") == ("Hello ", False)
    assert stops.push("n") == ("", False)
    assert stops.push("d> more") == ("", True)


def test_stop_sequences_release_text_that_did_not_match():
    stops = StopSequences(["<end>"])
    assert stops.push("a <en") == ("a ", False)
    assert stops.push("joy") == ("<enjoy", False)
    assert stops.push("!<") == ("!", False)
    assert stops.flush() == "<"


def test_no_stop_sequences_pass_text_through():
    assert StopSequences([]).push("abc") == ("abc", False)


def test_settings_from_the_environment(tmp_path):
    import math

    from modelyard.config import Settings

    settings = Settings.from_env(
        {
            "OLLAMA_HOST": ":9999",
            "OLLAMA_MODELS": str(tmp_path),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_CONTEXT_LENGTH": "2048",
            "MODELYARD_BACKENDS": "echo, llamacpp",
            "MODELYARD_BUNDLED_MODELS": "none",
        }
    )
    assert (settings.host, settings.port, settings.models) == ("127.0.0.1", 9999, tmp_path)
    assert settings.keep_alive == math.inf
    assert settings.context_length == 2048
    assert settings.backends == ("echo", "llamacpp")
    assert settings.bundled_models == ()
    assert (
        Settings.from_env(
            {"MODELYARD_MODELS": "/a", "OLLAMA_MODELS": "/b", "OLLAMA_KEEP_ALIVE": "10m"}
        ).models.as_posix()
        == "/a"
    )
    assert Settings.from_env({"OLLAMA_KEEP_ALIVE": "600"}).keep_alive == 600


def test_source_suffixes():
    from modelyard.store.names import strip_source

    assert strip_source("smollm2:135m:local") == "smollm2:135m"
    assert strip_source("smollm2:local") == "smollm2"
    assert strip_source("gpt-oss:cloud") == "gpt-oss:cloud"
    for both in ("m:tag:local:cloud", "m:tag:cloud:local", "m:tag-cloud:local"):
        with pytest.raises(BadRequest, match="use either :local or :cloud, not both"):
            strip_source(both)
