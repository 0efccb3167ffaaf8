"""The model server's client errors: a request it will not serve, and the OpenAI-shaped body that says why
({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse

from moeops.serving.openai.api_models import ErrorBody, ErrorDetail


class ClientError(Exception):
    """A request this server will not serve, and why (an OpenAI-shaped error with this status)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = dict(headers or {})
        """Extra response headers (Retry-After with a 429)."""


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


def error_event(message: str) -> str:
    """A server-sent event carrying an error (a stream that already answered 200 cannot change its status)."""
    return f"data: {ErrorBody(error=ErrorDetail(message=message, type='server_error')).model_dump_json()}\n\n"
