"""Domain errors. Backends raise these without knowing HTTP; the server maps each class to its status.

Messages follow the Ollama error catalogue (../shared/reference/ollama-api.md §6), so clients that match on
them keep working.
"""

from __future__ import annotations


class ModelyardError(Exception):
    """An error a client sees as `{"error": message}` with `status`."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ModelyardError):
    status = 400


class NotFound(ModelyardError):
    status = 404


class Canceled(ModelyardError):
    """The client went away while its request waited (Ollama's nginx-style 499)."""

    status = 499


class InternalError(ModelyardError):
    status = 500


class Unavailable(ModelyardError):
    """The server cannot take the request now (queue full, backend missing)."""

    status = 503


class BackendUnavailable(Unavailable):
    """A backend's engine is not installed or cannot start; the message says how to install it."""
