"""Domain errors. Each knows its HTTP status and OpenAI error type/code; edges translate them."""

from __future__ import annotations


class TuneryError(Exception):
    """Base error: a message a person can act on, plus the OpenAI error fields."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def to_body(self) -> dict:
        """The OpenAI error body: {"error": {message, type, param, code}}."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}


class InvalidRequest(TuneryError):
    status_code = 400
    default_code = "invalid_request"


class AuthenticationError(TuneryError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(TuneryError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFound(TuneryError):
    status_code = 404
    default_code = "not_found"


class Conflict(TuneryError):
    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(TuneryError):
    status_code = 413
    default_code = "file_too_large"


class RateLimited(TuneryError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class ModelUnavailable(TuneryError):
    """A known model that cannot be loaded here (no weights, no network, no chat template)."""

    status_code = 400
    default_code = "model_unavailable"
