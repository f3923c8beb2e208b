"""The thinking parser on recorded outputs of each family, cut into pieces every way a stream could cut them;
the tags it takes from real templates; the think values templates see."""

from __future__ import annotations

import random

import pytest

from modelyard.plugin import ChatTemplate, Done, Event, Logprobs, Message, TextDelta, ThinkingDelta, TokenLogprob
from modelyard.runtime.thinking import THINK, ThinkingParser, ThinkingTags, starts_inside, template_tags
from modelyard.templates.prompt import render_go_template, template_capabilities

DONE = Done(reason="stop", prompt_eval_count=1, prompt_eval_duration=1, eval_count=1, eval_duration=1)

# (family, tags, starts inside the thinking, what the model wrote, thinking, answer)
RECORDED = [
    (
        "qwen3",
        THINK,
        False,
        "<think>\nOkay, the user asks why the sky is blue. Rayleigh scattering.\n</think>\n\n"
        "The sky is blue because air scatters short wavelengths more.",
        "Okay, the user asks why the sky is blue. Rayleigh scattering.",
        "The sky is blue because air scatters short wavelengths more.",
    ),
    (
        "deepseek-r1",  # the template's generation prompt already wrote "<think>\n"
        THINK,
        True,
        "Okay, so I need to add 2 and 2.\n\nThat is 4.\n</think>\n\n**Answer:** 4",
        "Okay, so I need to add 2 and 2.\n\nThat is 4.",
        "**Answer:** 4",
    ),
    (
        "magistral",
        ThinkingTags("[THINK]", "[/THINK]"),
        False,
        "[THINK]Let me compute 17*3: 51.[/THINK]17 × 3 = 51.",
        "Let me compute 17*3: 51.",
        "17 × 3 = 51.",
    ),
    (
        "kimi",
        ThinkingTags("◁think▷", "◁/think▷"),
        False,
        "◁think▷The capital of France is Paris.◁/think▷Paris.",
        "The capital of France is Paris.",
        "Paris.",
    ),
    ("no thinking", THINK, False, "Just an answer, <think> inside it.", "", "Just an answer, <think> inside it."),
    ("whitespace first", THINK, False, "\n  <think>hmm</think>ok", "hmm", "ok"),
    (
        "never closed",
        THINK,
        False,
        "<think>still thinking when the budget ran out <",
        "still thinking when the budget ran out <",
        "",
    ),
    ("empty thinking", THINK, False, "<think>\n\n</think>\n\nDirect answer.", "", "Direct answer."),
]


def parse(parser: ThinkingParser, pieces: list[str]) -> tuple[str, str, list[Event]]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.split(TextDelta(piece))
    events += parser.split(DONE)
    assert events[-1] == DONE
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    return thinking, answer, events


def cuttings(text: str) -> list[list[str]]:
    whole = [[text], list(text)]
    halves = [[text[:cut], text[cut:]] for cut in range(1, len(text))]
    chance = random.Random(13)
    shuffled = []
    for _ in range(20):
        cuts = sorted(chance.sample(range(1, len(text)), k=min(6, len(text) - 1)))
        shuffled.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return whole + halves + shuffled


@pytest.mark.parametrize(("family", "tags", "inside", "written", "thinking", "answer"), RECORDED, ids=lambda v: "")
def test_recorded_outputs_however_they_are_cut(
    family: str, tags: ThinkingTags, inside: bool, written: str, thinking: str, answer: str
) -> None:
    for pieces in cuttings(written):
        got = parse(ThinkingParser(tags, inside=inside), pieces)[:2]
        assert got == (thinking, answer), (family, pieces)


def test_thinking_streams_before_the_closing_tag() -> None:
    parser = ThinkingParser(THINK)
    assert parser.split(TextDelta("<think>first ")) == [ThinkingDelta("first")]
    assert parser.split(TextDelta("thought </th")) == [ThinkingDelta(" thought")]  # the tag's start waits
    assert parser.split(TextDelta("ink> answer")) == [TextDelta("answer")]


def test_logprobs_wait_for_the_piece_they_belong_to() -> None:
    parser = ThinkingParser(THINK)
    token = TokenLogprob(token="<think>", logprob=-0.5)
    assert parser.split(Logprobs([token])) == []
    assert parser.split(TextDelta("<think>")) == []  # the tag alone shows nothing: its logprob waits
    second = TokenLogprob(token="Hmm", logprob=-1.0)
    assert parser.split(Logprobs([second])) == []
    assert parser.split(TextDelta("Hmm")) == [Logprobs([token, second]), ThinkingDelta("Hmm")]


def test_thinking_a_backend_separated_itself_passes_through() -> None:
    parser = ThinkingParser(THINK)
    assert parser.split(ThinkingDelta("upstream thought")) == [ThinkingDelta("upstream thought")]


QWEN3_JINJA = (
    "{%- for message in messages %}{%- if message.role == 'assistant' %}{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
DEEPSEEK_R1_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
OLLAMA_QWEN3_GO = (
    "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
    "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n'
    "{{ if and $.IsThinkSet (not $.Think) -}}<think>\n\n</think>\n\n{{ end }}{{ end }}{{- end }}"
)


def test_tags_and_start_from_real_templates() -> None:
    assert template_tags(QWEN3_JINJA, jinja=True) == THINK
    assert not starts_inside(THINK, None, QWEN3_JINJA)  # it writes both tags only to switch thinking off
    assert template_tags(DEEPSEEK_R1_JINJA, jinja=True) == THINK
    assert starts_inside(THINK, None, DEEPSEEK_R1_JINJA)
    assert template_tags("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", jinja=True) is None
    assert template_tags("[THINK]{{ .Prompt }}[/THINK]") == ThinkingTags("[THINK]", "[/THINK]")
    assert template_tags("{{ if .Think }}reason first{{ end }}{{ .Prompt }}") == THINK  # reads .Think
    assert template_tags("{{ .System }} {{ .Prompt }}") is None
    assert starts_inside(THINK, "<|im_start|>assistant\n<think>\n")
    assert not starts_inside(THINK, "<|im_start|>assistant\n")


def test_capability_from_a_go_template() -> None:
    assert "thinking" in template_capabilities(OLLAMA_QWEN3_GO)
    assert "thinking" not in template_capabilities("{{ .System }} {{ .Prompt }}")


@pytest.mark.parametrize(
    ("think", "think_set", "seen"),
    [
        (None, None, "false||false"),
        (True, None, "true||false"),  # the model's default turned thinking on
        (True, True, "true||true"),
        (False, False, "false||true"),
        ("high", "high", "true|high|true"),
        ("max", "max", "true|max|true"),
    ],
)
def test_go_templates_see_think_as_ollama_sets_it(
    think: bool | str | None, think_set: bool | str | None, seen: str
) -> None:
    source = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    assert render_go_template(source, [Message(role="user", content="hi")], think=think, think_set=think_set) == seen


def test_ollamas_qwen3_template_switches_thinking_off_only_when_asked() -> None:
    messages = [Message(role="user", content="hi")]
    assert render_go_template(OLLAMA_QWEN3_GO, messages, think=True, think_set=None).endswith("assistant\n")
    off = render_go_template(OLLAMA_QWEN3_GO, messages, think=False, think_set=False)
    assert off.endswith("<think>\n\n</think>\n\n")


def test_jinja_templates_get_enable_thinking_and_reasoning_effort() -> None:
    messages = [Message(role="user", content="hi")]
    template = ChatTemplate(QWEN3_JINJA)
    assert template.render(messages, think=False).endswith("<think>\n\n</think>\n\n")
    assert template.render(messages, think=True).endswith("<|im_start|>assistant\n")
    assert template.render(messages).endswith("<|im_start|>assistant\n")  # undefined: the template's default
    effort = ChatTemplate("{{ reasoning_effort | default('medium') }}/{{ enable_thinking | default('unset') }}")
    assert effort.render(messages, think="low") == "low/True"
    assert effort.render(messages) == "medium/unset"
