"""Request validation on routed endpoints, before any upstream work (issue 4.7).

Only what a provider would certainly refuse is checked, so valid requests for
newer API fields are never blocked; each error names the field.
"""

from __future__ import annotations

from typing import Any

from rawgw.errors import GatewayError


def _bad(field: str, message: str) -> GatewayError:
    return GatewayError(400, f"{field}: {message}", code="invalid_request")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_body(rest: str, body: dict[str, Any]) -> None:
    """Raise a 400 GatewayError naming the first bad field of ``body``."""
    if rest in ("chat/completions", "messages", "messages/count_tokens"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages", "required, a non-empty list of message objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise _bad(f"messages[{i}]", "must be an object")
            if not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}].role", "required, a string")
    if "temperature" in body and body["temperature"] is not None:
        t = body["temperature"]
        if not _number(t) or not 0 <= t <= 2:
            raise _bad("temperature", "must be a number from 0 to 2")
    if "top_p" in body and body["top_p"] is not None:
        p = body["top_p"]
        if not _number(p) or not 0 <= p <= 1:
            raise _bad("top_p", "must be a number from 0 to 1")
    for name in ("n", "max_tokens", "max_completion_tokens", "max_output_tokens"):
        if name in body and body[name] is not None and not _positive_int(body[name]):
            raise _bad(name, "must be a positive integer")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _bad("stream", "must be a boolean")
