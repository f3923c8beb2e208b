"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses.

Domain errors keep their status; the type follows it as OpenAI's API names them. `OpenAIError` carries a
`param` and a `code` for what only this API checks (an unsupported field, say).
"""

from __future__ import annotations

import msgspec

from modelyard.errors import BadRequest, ModelyardError

JSON = "application/json; charset=utf-8"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None  # every key is sent, null included, as OpenAI does
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class OpenAIError(BadRequest):
    """A 400 of this API about one field: OpenAI's `param` and `code` say which, and why."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def error_detail(message: str, status: int, exc: BaseException | None = None) -> ErrorDetail:
    param = exc.param if isinstance(exc, OpenAIError) else None
    code = exc.code if isinstance(exc, OpenAIError) else None
    if code is None and status == 404 and isinstance(exc, ModelyardError):
        code = "model_not_found"  # the only domain 404 an inference or models route raises
    return ErrorDetail(message=message, type=ERROR_TYPES.get(status, "api_error"), param=param, code=code)
