"""Models on disk: the Ollama-layout store, names, manifests, formats, the registry client, create/copy/delete."""
