"""Errors the gateway itself produces: one table from status to OpenAI-shaped JSON.

Every gateway-made error body is ``{"error": {"message", "type", "code"}}`` so that
OpenAI/Anthropic SDKs and Big-AGI show the message instead of a parse failure.
Messages never contain a credential the client sent.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

# status -> (error type, default code)
ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout_error", "request_timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    431: ("invalid_request_error", "headers_too_large"),
    500: ("api_error", "internal_error"),
    501: ("invalid_request_error", "not_implemented"),
    502: ("upstream_error", "bad_gateway"),
    503: ("api_error", "service_unavailable"),
    504: ("timeout_error", "upstream_timeout"),
    505: ("invalid_request_error", "http_version_not_supported"),
}

# The standard reason phrase of every status (RFC 9110 names), for the responses
# the gateway writes itself; RFC 9110's newer names win over older ones.
REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus} | {
    413: b"Content Too Large",
    422: b"Unprocessable Content",
    529: b"Overloaded",
}


class GatewayError(Exception):
    """An answer the gateway gives itself instead of an upstream response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        etype, default_code = ERROR_TYPES.get(status, ("api_error", "error"))
        self.type = etype
        self.code = code or default_code
        self.headers = headers or []
        self.close = close
        # how the request ended, for logs: "timeout", "upstream_error", ...
        self.kind = kind or ("timeout" if status in (408, 504) else "upstream_error" if status >= 502 else "rejected")

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code)


def error_body(message: str, etype: str, code: str | int | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": etype, "code": code}})


def retry_after_header(seconds: float) -> tuple[bytes, bytes]:
    """SPEC 4: whole seconds, rounded up, at least 1."""
    whole = int(seconds) if seconds == int(seconds) else int(seconds) + 1
    return (b"retry-after", str(max(1, whole)).encode())
