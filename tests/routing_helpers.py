"""Helpers for the routing tests (issue 3): several MockUpstreams as providers, configs
built from them, one-shot client requests, and readers for what the gateway reports.

Import the fixture into a test module (``from routing_helpers import ups_fixture``) to
get ``ups``: three started MockUpstreams, closed after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import pytest
from conftest import GW_KEY, Gateway, Response, chat_body, free_port
from mock_upstream import Json, MockUpstream, RecordedRequest
from ops_helpers import call as call_port

# Provider keys: long enough to be masked, distinct in their last 4 characters.
KEY_A = "sk-prov-key-alpha-0000aaaa"
KEY_B = "sk-prov-key-bravo-1111bbbb"
KEY_C = "sk-prov-key-charl-2222cccc"

ANT_KEY = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789-z9y8"
# A Messages API answer (what an anthropic-type provider returns)
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4",
    "content": [{"type": "text", "text": "Hello from the mock"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 5},
}


@pytest.fixture(name="ups")
async def ups_fixture() -> AsyncIterator[list[MockUpstream]]:
    """Three MockUpstreams; each answers by default ``{"who": "upN"}`` (N = 0, 1, 2)."""
    mocks = [await MockUpstream.start() for _ in range(3)]
    for i, m in enumerate(mocks):
        m.default = Json(body={"who": f"up{i}"})
    try:
        yield mocks
    finally:
        for m in mocks:
            await m.close()


def dead_url(base_path: str = "/v1") -> str:
    """A base URL on a loopback port nothing listens on (connect refused)."""
    return f"http://127.0.0.1:{free_port()}{base_path}"


def prov(
    target: MockUpstream | str,
    *,
    type: str = "openai",
    keys: Sequence[str] = (KEY_A,),
    base_path: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One ``[providers.NAME]`` table pointing at ``target`` (a mock, or a base URL)."""
    if base_path is None:
        base_path = "" if type == "anthropic" else "/v1"
    base_url = target.url(base_path) if isinstance(target, MockUpstream) else target
    out: dict[str, Any] = {"type": type, "base_url": base_url, "keys": list(keys)}
    out.update(fields)
    return out


def cfg(
    providers: Mapping[str, Mapping[str, Any]],
    routes: Sequence[Mapping[str, Any]] = (),
    *,
    keys: Sequence[Mapping[str, Any]] | None = None,
    server: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1, **(server or {})},
        "keys": list(keys) if keys is not None else [{"key": GW_KEY, "name": "tester"}],
        "providers": {k: dict(v) for k, v in providers.items()},
        "logging": {"dir": "logs"},
    }
    if routes:
        out["routes"] = [dict(r) for r in routes]
    return out


def chat(model: str, **fields: Any) -> bytes:
    """A chat body with json.dumps' default separators (", " and ": "): conftest.chat_body."""
    return chat_body(model, compact=False, **fields)


async def call(gw: Gateway, body: bytes | None = None, **kwargs: Any) -> Response:
    """One request on a fresh connection; the complete response (ops_helpers.call by gateway)."""
    return await call_port(gw.port, body, **kwargs)


async def get_json(gw: Gateway, path: str, headers: Iterable[tuple[str, str]] = ()) -> Any:
    r = await call(gw, b"", path=path, method="GET", headers=headers)
    assert r.status == 200, (r.status, r.body[:300])
    return r.json()


def auth_of(req: RecordedRequest) -> str | None:
    v = req.header("authorization")
    return None if v is None else v.decode("latin-1")


def bearer_key(req: RecordedRequest) -> str:
    v = auth_of(req)
    assert v is not None and v.startswith("Bearer "), v
    return v.removeprefix("Bearer ")


def routed_by(r: Response) -> tuple[str | None, str | None]:
    """(X-Rawgw-Provider, X-Rawgw-Attempts) of a response."""
    return r.header("x-rawgw-provider"), r.header("x-rawgw-attempts")


async def health_keys(gw: Gateway, provider: str) -> list[dict[str, Any]]:
    """The key entries ``/health/providers`` shows for ``provider`` (in pool order)."""
    doc = await get_json(gw, "/health/providers")
    providers = doc.get("providers", doc)
    entry = providers[provider]
    keys = entry["keys"] if isinstance(entry, dict) else entry
    assert isinstance(keys, list), doc
    return keys


async def settle(seconds: float = 0.15) -> None:
    """A sleep, kept for old callers only: wait for a fact instead, ops_helpers.recorded
    (the request's access-log line, written after its last upstream attempt)."""
    await asyncio.sleep(seconds)


def typed(value: Any) -> Any:
    """A JSON value with its Python types made part of equality (1 != 1.0 != True)."""
    if isinstance(value, dict):
        return ("obj", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("arr", [typed(v) for v in value])
    return (type(value).__name__, value)
