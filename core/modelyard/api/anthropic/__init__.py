"""Anthropic's Messages API (/v1/messages), as Ollama serves it."""
