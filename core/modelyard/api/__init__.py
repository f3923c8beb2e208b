"""The HTTP APIs: shared plumbing here, one subpackage per API (ollama)."""
