"""A router (a modelyard running only the upstream backend) in front of real modelyard servers: the official
`ollama` client gets through it what it gets from the upstream directly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from routing import SMOLLM2, pool, router

from modelyard_conformance.launcher import ServerProcess

ROUTED = "routed/smollm2:135m"  # the router's name for the upstream's smollm2:135m
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}


@pytest.fixture(scope="module")
def llama_router(llama_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router whose pool `routed/smollm2:135m` is the llama.cpp server's smollm2:135m, and whose `*` pattern
    pool offers every model the llama.cpp server lists under its own name."""
    tmp = tmp_path_factory.mktemp("router")
    config = pool(ROUTED, llama_server.url, upstream_model=SMOLLM2) + pool("smollm2:*", llama_server.url)
    config += pool("ghost", llama_server.url, upstream_model="nowhere:1b")  # a model the upstream lacks
    with router(tmp, config + "[health]\ninterval = 0.5\n", MODELYARD_UPSTREAM_REMOTES="127.0.0.1") as server:
        yield server


@pytest.fixture
def direct(llama_server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=llama_server.url)
    yield client
    client._client.close()


@pytest.fixture
def routed(llama_router: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=llama_router.url)
    yield client
    client._client.close()


def test_chat_through_the_router_is_the_upstreams_answer(direct, routed):
    messages = [{"role": "user", "content": "Name three colours."}]
    expected = direct.chat(model=SMOLLM2, messages=messages, options=GREEDY)
    answer = routed.chat(model=ROUTED, messages=messages, options=GREEDY)
    assert answer.message.content == expected.message.content and answer.message.content
    assert (answer.prompt_eval_count, answer.eval_count) == (expected.prompt_eval_count, expected.eval_count)
    assert answer.done_reason == expected.done_reason == "length"
    assert answer.eval_duration and answer.prompt_eval_duration  # the upstream's own measures
    assert answer.model == ROUTED


def test_a_stream_through_the_router_has_the_same_pieces(direct, routed):
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    expected = [
        part.message.content for part in direct.chat(model=SMOLLM2, messages=messages, options=GREEDY, stream=True)
    ]
    pieces = [
        part.message.content for part in routed.chat(model=ROUTED, messages=messages, options=GREEDY, stream=True)
    ]
    assert pieces == expected and len(pieces) > 2


def test_generate_passes_system_and_context_through(direct, routed):
    first = routed.generate(model=ROUTED, prompt="Count: one, two,", system="You count.", options=GREEDY)
    expected = direct.generate(model=SMOLLM2, prompt="Count: one, two,", system="You count.", options=GREEDY)
    assert first.response == expected.response and first.context == expected.context and first.context
    again = routed.generate(model=ROUTED, prompt="And then?", context=first.context, options=GREEDY)
    direct_again = direct.generate(model=SMOLLM2, prompt="And then?", context=expected.context, options=GREEDY)
    assert again.response == direct_again.response


def test_raw_generate_is_forwarded_raw(direct, routed):
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    answer = routed.generate(model=ROUTED, prompt=prompt, raw=True, options=GREEDY)
    assert answer.response == direct.generate(model=SMOLLM2, prompt=prompt, raw=True, options=GREEDY).response


def test_pool_models_are_listed_shown_and_marked_remote(llama_router, llama_server, routed):
    listing = {model.model: model for model in routed.list().models}
    assert ROUTED in listing and SMOLLM2 in listing  # the pattern pool lists what the upstream's probe found
    entry = next(m for m in httpx.get(llama_router.url + "/api/tags").json()["models"] if m["name"] == ROUTED)
    assert (entry["remote_model"], entry["remote_host"]) == (SMOLLM2, llama_server.url)
    shown = httpx.post(llama_router.url + "/api/show", json={"model": ROUTED}).json()
    assert shown["remote_host"] == llama_server.url and "completion" in shown["capabilities"]
    routed.generate(model=ROUTED, prompt="hi", options={"num_predict": 1})
    assert ROUTED in [model.model for model in routed.ps().models]


def wait_for_probe(routed: ollama.Client) -> None:
    """Until the router's probe has read the upstream (the pattern pool lists smollm2:135m once it has)."""
    deadline = time.monotonic() + 30
    while SMOLLM2 not in [model.model for model in routed.list().models] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert SMOLLM2 in [model.model for model in routed.list().models], "the router never probed its upstream"


def test_a_model_no_upstream_has_is_a_404(llama_router, routed):
    # Before the first probe the upstream's own 404 comes back; once the probe has listed the upstream's
    # models the router knows it lacks "nowhere:1b" and answers for it. Wait for the probe, so the test knows
    # which.
    wait_for_probe(routed)
    with pytest.raises(ollama.ResponseError) as missing:
        routed.chat(model="ghost", messages=[{"role": "user", "content": "hi"}])
    assert (missing.value.status_code, missing.value.error) == (404, "model 'ghost' not found")


def test_show_gives_the_upstreams_own_capabilities_and_details(direct, routed):
    wait_for_probe(routed)  # the probe reads the upstream's /api/show
    upstream = direct.show(SMOLLM2)
    shown = routed.show(ROUTED)
    assert shown.capabilities == upstream.capabilities and "embedding" not in (shown.capabilities or [])
    assert shown.details.family == upstream.details.family == "llama"
    assert shown.details.parameter_size == upstream.details.parameter_size
    assert shown.details.quantization_level == upstream.details.quantization_level


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "think": True}, "does not support thinking"),
        ("/api/embed", {"input": "hi"}, "does not support embeddings"),
        ("/api/generate", {"prompt": "hi", "images": ["iVBORw0KGgo="]}, "does not support images"),
    ],
)
def test_what_the_upstream_cannot_do_is_refused_as_for_a_local_model(
    llama_server, llama_router, routed, path, body, error
):
    wait_for_probe(routed)
    direct = httpx.post(llama_server.url + path, json={"model": SMOLLM2, **body, "stream": False}, timeout=60)
    answer = httpx.post(llama_router.url + path, json={"model": ROUTED, **body, "stream": False}, timeout=60)
    assert (answer.status_code, direct.status_code) == (400, 400)
    # The same words, with the name the client used.
    assert answer.json() == {"error": direct.json()["error"].replace(f'"{SMOLLM2}"', f'"{ROUTED}"')}
    assert error in answer.json()["error"]


def test_v1_models_lists_and_retrieves_pool_models_marked_remote(llama_router, llama_server, routed):
    wait_for_probe(routed)
    sdk = openai.OpenAI(base_url=llama_router.url + "/v1", api_key="modelyard")
    try:
        listed = {model.id: model for model in sdk.models.list().data}
        retrieved = sdk.models.retrieve(ROUTED)
    finally:
        sdk.close()
    for model in (listed[ROUTED], retrieved):
        assert model.id == ROUTED and model.object == "model"
        assert (model.model_extra or {}) == {"remote_model": SMOLLM2, "remote_host": llama_server.url}
    assert listed[SMOLLM2].model_extra == {"remote_model": SMOLLM2, "remote_host": llama_server.url}
    missing = httpx.get(llama_router.url + "/v1/models/ghost-of-nothing:1b")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "model 'ghost-of-nothing:1b' not found"


def test_remote_models_of_the_store_run_when_their_host_is_allowed(llama_router, llama_server, direct, routed):
    for name, host in (("there", llama_server.url), ("elsewhere", "http://gpu-box:11434")):
        body = {"model": name, "from": SMOLLM2, "remote_host": host, "stream": False}
        assert httpx.post(llama_router.url + "/api/create", json=body).status_code == 200
    messages = [{"role": "user", "content": "Hello from afar"}]
    answer = routed.chat(model="there", messages=messages, options=GREEDY)
    assert answer.message.content == direct.chat(model=SMOLLM2, messages=messages, options=GREEDY).message.content
    with pytest.raises(ollama.ResponseError) as refused:
        routed.chat(model="elsewhere", messages=[{"role": "user", "content": "hi"}])
    assert (refused.value.status_code, refused.value.error) == (400, "this server cannot run this remote model")
