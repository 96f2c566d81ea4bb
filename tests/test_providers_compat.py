"""Issue 13 point 1: anthropic providers on the OpenAI endpoints (Anthropic's
OpenAI-compatible API), the Gemini preset, and `rawgw init --provider NAME`.

The gateway runs as a subprocess in front of MockUpstreams (the only mocks: providers).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import GW_KEY, StartGateway, assert_gateway_error, assert_wire_invariants
from mock_upstream import Json, MockUpstream, Sse
from providers_helpers import rawgw_cli
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    ANT_KEY,
    KEY_A,
    call,
    cfg,
    chat,
    prov,
    routed_by,
    ups_fixture,
)

CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "claude-3-5-sonnet-20241022",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


# --------------------------------------------------------------------------- anthropic on /chat/completions


async def test_key_pinned_to_anthropic_gets_openai_chat_through_the_compat_api(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    """The Go virtual-key router's case: a key pinned to an anthropic provider (models left
    at their default), OpenAI-format `POST /chat/completions` for a Claude model."""
    ant = ups[0]
    ant.default = Json(body=CHAT_ANSWER)
    config = cfg(
        {"openai": prov(ups[1]), "anthropic": prov(ant, type="anthropic", keys=[ANT_KEY])},
        keys=[{"key": GW_KEY, "name": "claude-team", "providers": ["anthropic"]}],
    )
    gw = await start_gateway(config)
    body = chat("claude-3-5-sonnet-20241022")
    r = await call(gw, body, path="/chat/completions")
    assert r.status == 200, r.body
    assert_wire_invariants(r)
    assert routed_by(r) == ("anthropic", "1")
    assert r.json() == CHAT_ANSWER
    (req,) = ant.requests
    assert req.path == "/v1/chat/completions"  # {base_url}/v1/chat/completions
    assert req.header("x-api-key") == ANT_KEY.encode()
    assert req.header("anthropic-version") == b"2023-06-01"
    assert req.header("authorization") is None  # neither the gateway key nor a Bearer
    assert req.body == body  # forwarded as received
    assert not ups[1].requests


async def test_anthropic_compat_stream_is_byte_for_byte(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    pieces = [
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
        b'data: {"id":"c1","object":"chat.completion.chunk","choi',
        b'ces":[{"index":0,"delta":{"content":"Hel"}}]}\n\ndata: {"id":"c1","object":"chat.completion.chunk",',
        b'"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    ups[0].default = Sse(pieces=pieces)
    gw = await start_gateway(cfg({"anthropic": prov(ups[0], type="anthropic", keys=[ANT_KEY])}))
    r = await call(gw, chat("claude-sonnet-4-20250514", stream=True))
    assert r.status == 200
    assert r.body == b"".join(pieces)
    assert r.header("content-type") == "text/event-stream"
    assert routed_by(r) == ("anthropic", "1")
    assert ups[0].requests[0].path == "/v1/chat/completions"


async def test_anthropic_default_models_take_only_claude_on_the_openai_endpoint(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    """An anthropic provider with `models` unset is tried first for claude-* (priority)
    but never for an OpenAI model name; explicit globs are used as written."""
    config = cfg(
        {
            "anthropic": prov(ups[0], type="anthropic", keys=[ANT_KEY], priority=1),
            "openai": prov(ups[1], priority=2),
            "compat": prov(ups[2], type="anthropic", keys=[ANT_KEY], models=["house-*"], priority=3),
        }
    )
    gw = await start_gateway(config)
    assert routed_by(await call(gw, chat("claude-3-5-haiku-latest"))) == ("anthropic", "1")
    assert routed_by(await call(gw, chat("gpt-4o"))) == ("openai", "1")
    assert routed_by(await call(gw, chat("house-model"))) == ("openai", "1")  # openai serves "*" at priority 2
    gw2 = await start_gateway(cfg({"compat": prov(ups[2], type="anthropic", keys=[ANT_KEY], models=["house-*"])}))
    assert routed_by(await call(gw2, chat("house-model"))) == ("compat", "1")
    assert ups[2].requests[-1].path == "/v1/chat/completions"


async def test_anthropic_compat_only_on_chat_completions_and_messages_stays_anthropic_only(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    config = cfg({"anthropic": prov(ups[0], type="anthropic", keys=[ANT_KEY], models=["claude-*"]), "openai": prov(ups[1], models=["gpt-*"])})
    gw = await start_gateway(config)
    # Anthropic's compatibility API has no embeddings: not a candidate there
    r = await call(gw, b'{"model": "claude-3-5-sonnet-20241022", "input": "x"}', path="/v1/embeddings")
    assert_gateway_error(r, 404)
    # /v1/messages never goes to an openai provider
    r = await call(gw, b'{"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}', path="/v1/messages")
    assert_gateway_error(r, 404)
    assert not ups[0].requests and not ups[1].requests
    r = await call(gw, b'{"model": "claude-3-5-sonnet-20241022", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}', path="/v1/messages")
    assert routed_by(r) == ("anthropic", "1")
    assert ups[0].requests[0].path == "/v1/messages"


async def test_route_naming_anthropic_with_openai_failover(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """A route pinning [anthropic, openai]: a 529 from Anthropic fails over to OpenAI with
    the per-provider model, in the same OpenAI format."""
    ups[0].enqueue(Json(status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))
    routes = [{"match": "smart", "model": "claude-sonnet-4-20250514", "providers": ["anthropic", "openai"], "provider_models": {"openai": "gpt-4o"}}]
    gw = await start_gateway(cfg({"anthropic": prov(ups[0], type="anthropic", keys=[ANT_KEY]), "openai": prov(ups[1])}, routes))
    r = await call(gw, chat("smart"))
    assert routed_by(r) == ("openai", "2")
    assert ups[0].requests[0].json()["model"] == "claude-sonnet-4-20250514"
    assert ups[0].requests[0].path == "/v1/chat/completions"
    assert ups[1].requests[0].json()["model"] == "gpt-4o"


# --------------------------------------------------------------------------- gemini preset


async def test_gemini_preset_shape_through_the_gateway(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """type openai with Google's base path (/v1beta/openai): Bearer key, client headers such
    as x-goog-api-client forwarded untouched."""
    gemini_key = "AIzaSyD-0123456789abcdefghijklmnop"
    ups[0].default = Json(body=CHAT_ANSWER)
    gw = await start_gateway(cfg({"gemini": prov(ups[0], keys=[gemini_key], base_path="/v1beta/openai", models=["gemini-*"])}))
    r = await call(gw, chat("gemini-2.0-flash"), headers=[("x-goog-api-client", "genai-js/0.21.0 gl-node/22")])
    assert routed_by(r) == ("gemini", "1")
    (req,) = ups[0].requests
    assert req.path == "/v1beta/openai/chat/completions"
    assert req.header("authorization") == f"Bearer {gemini_key}".encode()
    assert req.header("x-goog-api-client") == b"genai-js/0.21.0 gl-node/22"


# --------------------------------------------------------------------------- rawgw init --provider

PRESET_KEYS = {
    "openrouter": ("OPENROUTER_API_KEY", "sk-or-v1-0123456789abcdef0123456789abcdef", "openrouter", "https://openrouter.ai/api/v1"),
    "openai": ("OPENAI_API_KEY", "sk-proj-0123456789abcdef0123456789", "openai", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_API_KEY", ANT_KEY, "anthropic", "https://api.anthropic.com"),
    "deepseek": ("DEEPSEEK_API_KEY", "sk-0123456789abcdef0123456789abcdef", "openai", "https://api.deepseek.com/v1"),
    "gemini": ("GEMINI_API_KEY", "AIzaSyD-0123456789abcdefghijklmnop", "openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
}


@pytest.mark.parametrize("name", list(PRESET_KEYS))
def test_init_writes_each_preset(tmp_path: Path, name: str) -> None:
    var, key, ptype, base_url = PRESET_KEYS[name]
    done = rawgw_cli("init", "--provider", name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"export {var}=" in done.stdout and "export GATEWAY_API_KEY=" in done.stdout
    text = (tmp_path / "gateway.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["providers"][name]["type"] == ptype
    assert doc["providers"][name]["base_url"] == base_url
    assert doc["providers"][name]["keys"] == [f"env:{var}"]
    assert "[[keys]]" in text  # tables, not an inline keys = [...] a later section could capture
    checked = rawgw_cli("check", "-c", "gateway.toml", cwd=tmp_path, env={var: key, "GATEWAY_API_KEY": GW_KEY})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert key not in checked.stdout


def test_init_default_is_openrouter_and_unknown_preset_is_refused(tmp_path: Path) -> None:
    assert rawgw_cli("init", cwd=tmp_path).returncode == 0
    assert "openrouter" in tomllib.loads((tmp_path / "gateway.toml").read_text())["providers"]
    bad = rawgw_cli("init", "--provider", "nope", "other.toml", cwd=tmp_path)
    assert bad.returncode == 2 and "gemini" in bad.stderr
    assert not (tmp_path / "other.toml").exists()
