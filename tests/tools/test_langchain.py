"""LangChain's standard chat-model tests for tool calling (langchain-tests' ChatModelIntegrationTests),
through langchain-ollama's ChatOllama against modelyard on the bundled SmolLM2 135M (`-m langchain`).

langchain-ollama drops `tool_choice` (its bind_tools says Ollama does not support it), so the model under test
is `hermes-smol-agent`: the Hermes-form template and `PARAMETER tool_choice required`, which forces a valid
call whenever tools are bound. `test_tool_choice` is skipped by langchain-tests itself (has_tool_choice is false).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_ollama import ChatOllama
from langchain_tests.integration_tests import ChatModelIntegrationTests

pytestmark = [
    pytest.mark.langchain,
    # ChatOllama never closes the ollama clients (httpx) it makes: their sockets are collected in later tests.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

# The standard tests about tool calling; conftest.py deselects the rest of the class (images, PDFs, usage...).
TOOL_TESTS = (
    "test_tool_calling",
    "test_tool_calling_async",
    "test_bind_runnables_as_tools",
    "test_tool_message_histories_string_content",
    "test_tool_message_histories_list_content",
    "test_tool_choice",
    "test_tool_calling_with_no_arguments",
    "test_tool_message_error_status",
    "test_structured_few_shot_examples",
    "test_agent_loop",
)


class TestChatOllamaTools(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOllama]:
        return ChatOllama

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # A seed: a seeded request evaluates its whole prompt, so greedy answers do not depend on what the
        # cache held (a cached prefix changes the logits' last bits, enough to flip a 135M model's argument).
        return {"model": "hermes-smol-agent", "num_predict": 100, "seed": 1}

    @property
    def has_tool_choice(self) -> bool:
        return False  # langchain-ollama does not send it; the model's PARAMETER stands in

    @property
    def has_structured_output(self) -> bool:
        return True

    @pytest.fixture
    def model(self, request: Any, server: Any) -> ChatOllama:
        extra = getattr(request, "param", None) or {}
        return ChatOllama(
            **{**self.standard_chat_model_params, **self.chat_model_params, "base_url": server.url, **extra}
        )
