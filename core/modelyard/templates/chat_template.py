"""Hugging Face style Jinja chat templates (the `tokenizer.chat_template` of a GGUF file)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jinja2
import msgspec
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelyard.errors import BadRequest
from modelyard.runtime.contract import cut_after, final_assistant_text
from modelyard.runtime.messages import Message

# Used when a model ships no template: ChatML, which most small instruct models understand.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise BadRequest(f"the chat template rejected the messages: {message}")


def _strftime_now(format_: str) -> str:
    return dt.datetime.now().strftime(format_)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.source = source or CHATML
        self.template = environment.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None, think: bool | str | None = None
    ) -> str:
        """The prompt for the next assistant turn; a conversation that ends with an assistant message is
        continued instead: rendered without the generation prompt and cut right after that message's
        text, as Hugging Face's `continue_final_message` does (Ollama leaves that turn open too).
        `think` reaches the template as `enable_thinking` (Qwen3) and a level as `reasoning_effort`
        (gpt-oss); neither is defined when `think` is None, so the template's own default holds."""
        final = final_assistant_text(messages)
        switches: dict[str, Any] = {}
        if think is not None:
            switches["enable_thinking"] = think is not False
        if isinstance(think, str):
            switches["reasoning_effort"] = think
        try:
            text = self.template.render(
                # `content` is always there for templates, even when empty (the wire type omits it then).
                messages=[{**msgspec.to_builtins(message), "content": message.content} for message in messages],
                tools=tools or None,
                add_generation_prompt=not final,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **switches,
            )
        except jinja2.TemplateError as exc:
            raise BadRequest(f"the chat template could not render the messages: {exc}") from exc
        return cut_after(text, final) if final else text
