"""Prompt text: Ollama's library templates of the bundled models, and continuing a trailing assistant
message with Go and Jinja templates."""

from __future__ import annotations

import msgspec
import pytest

from modelyard.errors import BadRequest
from modelyard.runtime.messages import Message, ToolCall
from modelyard.store.bundled import GEMMA3_TEMPLATE, SMOLLM2_TEMPLATE
from modelyard.templates.chat_template import ChatTemplate
from modelyard.templates.gotemplate import GoTemplate
from modelyard.templates.prompt import collate, render_go_template, template_capabilities

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CHATML = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"


def message(role: str, content: str = "", **fields) -> Message:
    return Message(role=role, content=content, **fields)


def test_smollm2_library_template_renders_a_conversation():
    prompt = render_go_template(
        SMOLLM2_TEMPLATE,
        [message("system", "Be brief."), message("user", "Hi"), message("assistant", "Hello"), message("user", "Bye")],
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.\n"  # the library template has no <|im_end|> after the system prompt
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_library_template_renders_tools_calls_and_results():
    call = msgspec.convert({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}, ToolCall)
    prompt = render_go_template(
        SMOLLM2_TEMPLATE,
        [message("user", "Weather?"), message("assistant", tool_calls=[call]), message("tool", "sunny")],
        TOOLS,
    )
    # .Tools prints as JSON, as Ollama's api.Tools does; arguments too.
    assert '<tools>[{"type":"function","function":{"name":"get_weather","parameters":' in prompt
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in prompt
    assert prompt.endswith(
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_templates_that_read_tools_give_the_tools_capability():
    assert template_capabilities(SMOLLM2_TEMPLATE) == {"tools"}
    assert template_capabilities(GEMMA3_TEMPLATE) == set()
    assert template_capabilities("{{ .Prompt }}{{ .Suffix }}") == {"insert"}


def test_a_messages_template_leaves_a_trailing_assistant_message_open():
    counting = [message("user", "Count."), message("assistant", "1, 2,")]
    assert (
        render_go_template(SMOLLM2_TEMPLATE, counting)
        == "<|im_start|>user\nCount.<|im_end|>\n<|im_start|>assistant\n1, 2,"
    )
    assert (
        render_go_template(GEMMA3_TEMPLATE, counting)
        == "<start_of_turn>user\nCount.<end_of_turn>\n<start_of_turn>model\n1, 2,"
    )


def test_gemma_template_puts_the_system_prompt_in_the_first_user_turn():
    prompt = render_go_template(GEMMA3_TEMPLATE, [message("system", "Sys"), message("user", "Hi")])
    assert prompt == "<start_of_turn>user\nSys\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_a_legacy_template_is_cut_after_the_response_of_the_last_turn():
    """Ollama renders each finished turn whole, and the last one up to {{ .Response }}."""
    conversation = [
        message("system", "S"),
        message("user", "a"),
        message("assistant", "b"),
        message("user", "c"),
        message("assistant", "d"),
    ]
    assert render_go_template(CHATML, conversation) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\nd"
    )
    # A new turn ends at the assistant header: what follows {{ .Response }} is cut even when it is empty.
    assert (
        render_go_template(CHATML, [message("user", "a")]) == "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    )
    # A template without .Response gets it appended, as Ollama's Parse does.
    assert (
        render_go_template("[{{ .Prompt }}]", [message("user", "a"), message("assistant", "b"), message("user", "c")])
        == "[a]b[c]"
    )


def test_cut_after_field_drops_everything_after_the_first_read():
    template = GoTemplate("{{ if .A }}x{{ .R }}y{{ else }}z{{ end }}w")
    assert template.cut_after_field("R").render({"A": True, "R": "r"}) == "xr"
    assert template.render({"A": True, "R": "r"}) == "xryw"


def test_collate_merges_consecutive_messages_of_a_role_but_not_tool_results():
    system, merged = collate(
        [
            message("system", "a"),
            message("system", "b"),
            message("user", "c"),
            message("user", "d"),
            message("tool", "e"),
            message("tool", "f"),
        ]
    )
    assert system == "a\n\nb"
    assert [(m.role, m.content) for m in merged] == [
        ("system", "a\n\nb"),
        ("user", "c\n\nd"),
        ("tool", "e"),
        ("tool", "f"),
    ]


SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_jinja_template_continues_a_trailing_assistant_message():
    template = ChatTemplate(SMOLLM2_JINJA)
    continued = template.render([message("user", "Count."), message("assistant", "1, 2, ")])
    assert continued.endswith("<|im_start|>user\nCount.<|im_end|>\n<|im_start|>assistant\n1, 2,")
    answered = template.render([message("user", "Count.")])
    assert answered.endswith("<|im_start|>assistant\n")


def test_a_jinja_template_that_drops_the_final_message_cannot_continue_it():
    template = ChatTemplate(
        "{% for message in messages if message['role'] == 'user' %}{{ message['content'] }}{% endfor %}"
    )
    with pytest.raises(BadRequest):
        template.render([message("user", "Count."), message("assistant", "1, 2,")])


def test_the_modelfile_of_the_bundled_smollm2_parses_back_to_its_layers(tmp_path):
    from modelyard.api.ollama.models import modelfile_quote, modelfile_text
    from modelyard.store.bundled import SMOLLM2, install_smollm2
    from modelyard.store.local import ModelStore
    from modelyard.store.modelfile import parse_modelfile

    store = ModelStore(tmp_path / "models")
    install_smollm2(store)
    parsed = parse_modelfile(modelfile_text(store.find(SMOLLM2.name)))
    assert parsed.template == SMOLLM2.template
    assert parsed.system == SMOLLM2.system
    assert parsed.parameters == {"stop": ["<|im_start|>", "<|im_end|>"]}
    # Ollama's quoting: triple quotes only for a multi-line value that holds a quote.
    quoted = modelfile_quote("a\nb")
    assert quoted == '"a\nb"'
    assert parse_modelfile("FROM x\nLICENSE " + quoted + "\n").licenses == ["a\nb"]
    assert modelfile_quote(' "x"\n') == '""" "x"\n"""'


def test_tool_call_arguments_are_a_go_map_in_templates():
    """Ollama's arguments are a map[string]any: range, index and len work on them, and they print as JSON."""
    call = msgspec.convert({"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}, ToolCall)
    template = (
        "{{ range .Messages }}{{ range .ToolCalls }}"
        "{{ range $key, $value := .Function.Arguments }}{{ $key }}={{ $value }};{{ end }}"
        '|{{ index .Function.Arguments "city" }}|{{ len .Function.Arguments }}|{{ .Function.Arguments }}'
        "{{ end }}{{ end }}"
    )
    prompt = render_go_template(template, [message("user", "Weather?"), message("assistant", tool_calls=[call])])
    assert prompt == 'city=Paris;days=2;|Paris|2|{"city":"Paris","days":2}'
