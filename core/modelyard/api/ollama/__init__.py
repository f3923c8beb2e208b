"""Ollama's REST API: wire types, routes, NDJSON streaming and `stream: false` merging."""
