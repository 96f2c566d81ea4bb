"""The official SDKs through the gateway, unchanged (SPEC 9)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import GW_KEY, UPSTREAM_KEY, Gateway, StartGateway, base_config
from mock_upstream import Json, MockUpstream, Sse

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")


def split_awkwardly(data: bytes, sizes: Iterator[int] | None = None) -> list[bytes]:
    """Cut ``data`` into pieces of 7, 13, 3, 29, ... bytes: boundaries land anywhere,
    including inside UTF-8 sequences and between \\r and \\n."""
    out, i, k = [], 0, 0
    pattern = [7, 13, 3, 29, 1, 17]
    while i < len(data):
        n = pattern[k % len(pattern)]
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


def openai_chunk(content: str | None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    doc = {
        "id": "chatcmpl-sdk",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


async def test_openai_sdk_non_streaming(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(
        Json(
            body={
                "id": "chatcmpl-sdk",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello there, wörld ✓"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
        )
    )
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        resp = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert resp.choices[0].message.content == "Hello there, wörld ✓"
    assert resp.usage is not None and resp.usage.total_tokens == 7
    (req,) = mock_upstream.requests
    assert req.target == b"/v1/chat/completions"
    assert req.header_values("authorization") == [b"Bearer " + UPSTREAM_KEY.encode()]
    assert req.json()["messages"] == [{"role": "user", "content": "hi"}]


async def test_openai_sdk_streaming(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    words = ["Hel", "lo", ", ", "wörld", " ✓", "!"]
    stream = (
        openai_chunk("", role=True)
        + b"".join(openai_chunk(w) for w in words)
        + openai_chunk(None, finish="stop")
        + b"data: [DONE]\n\n"
    )
    mock_upstream.enqueue(Sse(pieces=split_awkwardly(stream), delay=0.005))
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        got = []
        finish = None
        s = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in s:
            if chunk.choices:
                if chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
                finish = chunk.choices[0].finish_reason or finish
    finally:
        await client.close()
    assert "".join(got) == "Hello, wörld ✓!"
    assert finish == "stop"
    (req,) = mock_upstream.requests
    assert req.json()["stream"] is True


ANTHROPIC_MESSAGE = {
    "id": "msg_sdk",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "Hi from clåude"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 4},
}


def anthropic_event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def test_anthropic_sdk_non_streaming(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    mock_upstream.enqueue(Json(body=ANTHROPIC_MESSAGE))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0, timeout=10)
    try:
        msg = await client.messages.create(
            model="claude-test", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        await client.close()
    assert msg.content[0].text == "Hi from clåude"
    (req,) = mock_upstream.requests
    assert req.target == b"/v1/messages"
    assert req.header_values("x-api-key") == [UPSTREAM_KEY.encode()]
    assert len(req.header_values("anthropic-version")) == 1
    assert GW_KEY.encode() not in bytes(req.conn.raw_received)


async def test_anthropic_sdk_streaming(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    start_msg = dict(ANTHROPIC_MESSAGE, content=[], stop_reason=None, usage={"input_tokens": 5, "output_tokens": 1})
    texts = ["Hi", " from", " clå", "ude"]
    stream = (
        anthropic_event("message_start", {"type": "message_start", "message": start_msg})
        + anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        + b"".join(
            anthropic_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
            )
            for t in texts
        )
        + anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + anthropic_event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 4}},
        )
        + anthropic_event("message_stop", {"type": "message_stop"})
    )
    mock_upstream.enqueue(Sse(pieces=split_awkwardly(stream), delay=0.005))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0, timeout=10)
    got = []
    try:
        s = await client.messages.create(
            model="claude-test", max_tokens=32, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                got.append(event.delta.text)
    finally:
        await client.close()
    assert "".join(got) == "Hi from cl\u00e5ude"
