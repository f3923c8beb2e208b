"""Prompt templates: Go templates (Modelfile TEMPLATE), Jinja chat templates, rendering messages."""
