"""Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}` with Anthropic's statuses."""

from __future__ import annotations

import msgspec

JSON = "application/json; charset=utf-8"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    type: str = "error"
    error: ErrorDetail


def error_body(message: str, status: int) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(type=ERROR_TYPES.get(status, "api_error"), message=message))
