"""Errors that reach a client, in the OpenAI error shape.

Every service maps its own failures to one of these at its HTTP boundary, so a client always
gets ``{"error": {"message", "type", "code"}}`` with a meaningful status and never a traceback::

    ApiError (status, type, code)
    ├── BadRequest            400 invalid_request_error   malformed body
    ├── Unauthorized          401 authentication_error
    ├── NotFound              404 not_found_error
    │   └── ModelNotFound     404 invalid_request_error   model_not_found (OpenAI's shape)
    ├── PayloadTooLarge       413 invalid_request_error   body over the size limit
    ├── UnsupportedMediaType  415 invalid_request_error   neither JSON nor msgpack
    ├── InvalidField          400 invalid_request_error   a field has a wrong type or value
    │                                                      (OpenAI's status: the SDKs raise
    │                                                      BadRequestError and name ``param``)
    ├── InvalidSetting        422 invalid_request_error   an admin API setting is refused
    ├── RateLimited           429 rate_limit_error        carries Retry-After
    ├── ServiceUnavailable    503 service_unavailable     no upstream could answer; Retry-After
    └── UpstreamTimeout       504 timeout_error           the request's deadline passed
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """An error with an HTTP status, shown to the client in the OpenAI error shape."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Retry-After takes whole seconds; round up so a client never retries too early.
        return {"Retry-After": str(max(1, int(-(-self.retry_after_s // 1))))}


def error_body(
    message: str, error_type: str, code: str, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error document."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


class BadRequest(ApiError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    error_type = "not_found_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class RequestTimeout(ApiError):
    status = 408
    error_type = "invalid_request_error"
    default_code = "body_timeout"


class Conflict(ApiError):
    status = 409
    error_type = "conflict_error"
    default_code = "version_conflict"


class PayloadTooLarge(ApiError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class InvalidField(ApiError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_field"


class InvalidSetting(ApiError):
    """The admin API's refusal of a well-formed document whose settings do not validate."""

    status = 422
    error_type = "invalid_request_error"
    default_code = "invalid_setting"


class RateLimited(ApiError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class ServiceUnavailable(ApiError):
    status = 503
    error_type = "service_unavailable"
    default_code = "upstream_unavailable"


class UpstreamTimeout(ApiError):
    status = 504
    error_type = "timeout_error"
    default_code = "deadline_exceeded"
