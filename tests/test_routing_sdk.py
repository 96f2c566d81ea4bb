"""The official SDKs through the routing layer (issue 3): the ``openai`` SDK through a
model alias (streaming and not), the ``anthropic`` SDK through ``/anthropic/v1/messages``
and ``/v1/messages``; the upstream sees the real model and the provider key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import GW_KEY, StartGateway
from mock_upstream import Json, MockUpstream, Sse
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    ANT_KEY,
    KEY_A,
    KEY_B,
    MESSAGE,
    bearer_key,
    cfg,
    prov,
    ups_fixture,
)

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "deepseek/deepseek-chat",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def sdk_cfg(p1: MockUpstream, p2: MockUpstream) -> dict[str, Any]:
    return cfg(
        {"p1": prov(p1, priority=1, keys=[KEY_A]), "p2": prov(p2, priority=2, keys=[KEY_B])},
        routes=[{"match": "smart", "model": "deepseek/deepseek-chat", "providers": ["p2"]}],
    )


async def test_openai_sdk_through_model_alias(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    p2.enqueue(
        Json(
            body={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "deepseek/deepseek-chat",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "routed ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            }
        )
    )
    gw = await start_gateway(sdk_cfg(p1, p2))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], temperature=0.5
        )
        resp = raw.parse()
    finally:
        await client.close()
    assert resp.choices[0].message.content == "routed ok"
    assert raw.headers["x-rawgw-provider"] == "p2"
    assert raw.headers["x-rawgw-attempts"] == "1"
    assert p1.requests == []
    (req,) = p2.requests
    body = req.json()
    assert body == {"messages": [{"role": "user", "content": "hi"}], "model": "deepseek/deepseek-chat", "temperature": 0.5}
    assert req.header_values("authorization") == [f"Bearer {KEY_B}".encode()]
    assert GW_KEY.encode() not in req.raw_head


async def test_openai_sdk_streaming_through_model_alias(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    words = ["Hel", "lo ", "wörld"]
    pieces = [chunk(w) for w in words] + [chunk(None, "stop"), b"data: [DONE]\n\n"]
    p2.enqueue(Sse(pieces=pieces, delay=0.01))
    gw = await start_gateway(sdk_cfg(p1, p2))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        stream = await client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}], stream=True)
        got = []
        async for ev in stream:
            if ev.choices and ev.choices[0].delta.content:
                got.append(ev.choices[0].delta.content)
    finally:
        await client.close()
    assert "".join(got) == "Hello wörld"
    (req,) = p2.requests
    assert req.json()["model"] == "deepseek/deepseek-chat"
    assert req.json()["stream"] is True
    assert bearer_key(req) == KEY_B
    assert p1.requests == []


async def test_anthropic_sdk_through_named_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, ant, _ = ups
    ant.enqueue(Json(body=MESSAGE))
    gw = await start_gateway(cfg({"oa": prov(oa, priority=1), "anthropic": prov(ant, type="anthropic", keys=[ANT_KEY], priority=2)}))
    client = anthropic.AsyncAnthropic(base_url=gw.url + "/anthropic", api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        msg = await client.messages.create(model="claude-sonnet-4", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert msg.content[0].text == "Hello from the mock"  # type: ignore[union-attr]
    assert msg.usage.output_tokens == 5
    (req,) = ant.requests
    assert req.path == "/v1/messages"
    assert req.header_values("x-api-key") == [ANT_KEY.encode()]
    assert req.header("authorization") is None
    # the SDK sends its own anthropic-version: kept, exactly one
    (version,) = req.header_values("anthropic-version")
    assert version
    assert GW_KEY.encode() not in req.raw_head
    assert req.json() == {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "model": "claude-sonnet-4"}
    assert oa.requests == []


async def test_anthropic_sdk_through_v1_messages(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, ant, _ = ups
    ant.enqueue(Json(body=MESSAGE))
    gw = await start_gateway(
        cfg(
            {"oa": prov(oa, priority=1), "ant": prov(ant, type="anthropic", keys=[ANT_KEY], priority=2)},
            routes=[{"match": "sonnet", "model": "claude-sonnet-4-20250514", "providers": ["ant"]}],
        )
    )
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        msg = await client.messages.create(model="sonnet", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert msg.content[0].text == "Hello from the mock"  # type: ignore[union-attr]
    (req,) = ant.requests
    assert req.path == "/v1/messages"
    assert req.json()["model"] == "claude-sonnet-4-20250514"
    assert req.header_values("x-api-key") == [ANT_KEY.encode()]
    assert oa.requests == []
