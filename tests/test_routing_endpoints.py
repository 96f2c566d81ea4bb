"""Endpoints (SPEC 4, 5.4; issue 3): routed paths and aliases, the Anthropic Messages API,
other /v1/{rest}, /{provider}/{rest} with path safety, the merged /v1/models and GET /.
The official SDKs through the routing layer: test_routing_sdk.py."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import GW_KEY, StartGateway, assert_gateway_error, assert_wire_invariants
from mock_upstream import Json, MockUpstream, RecordedRequest
from ops_helpers import recorded
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    ANT_KEY,
    KEY_A,
    KEY_B,
    KEY_C,
    MESSAGE,
    bearer_key,
    call,
    cfg,
    chat,
    dead_url,
    get_json,
    prov,
    routed_by,
    ups_fixture,
)

import rawgw

MSG_BODY = b'{"model":"claude-sonnet-4", "max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'


# --------------------------------------------------------------------------- routed paths


ROUTED_PATHS = [
    ("/v1/chat/completions", "chat/completions"),
    ("/v1/completions", "completions"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/responses", "responses"),
    ("/chat/completions", "chat/completions"),
    ("/api/v1/chat/completions", "chat/completions"),
    ("/api/v1/embeddings", "embeddings"),
]


async def test_routed_endpoints_and_aliases(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, priority=1), "p2": prov(p2, base_path="/openai/v1", keys=[KEY_B], priority=2)},
            routes=[{"match": "alias", "model": "real-model", "providers": ["p2"]}],
        )
    )
    for i, (path, rest) in enumerate(ROUTED_PATHS):
        r = await call(gw, b'{"model":"alias","messages":[{"role":"user","content":"x"}],"input":"x"}', path=path)
        assert r.status == 200, (path, r.body)
        assert routed_by(r) == ("p2", "1"), path
        req = p2.requests[i]
        assert req.method == b"POST"
        assert req.target == f"/openai/v1/{rest}".encode(), path
        assert req.json() == {"model": "real-model", "messages": [{"role": "user", "content": "x"}], "input": "x"}
        assert bearer_key(req) == KEY_B
        assert req.header("host") == f"127.0.0.1:{p2.port}".encode()
    assert len(p2.requests) == len(ROUTED_PATHS)
    assert p1.requests == []


async def test_end_to_end_headers_forwarded_and_provider_headers_added(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, headers={"X-Title": "my-app", "X-Extra": "1"})}))
    r = await call(
        gw,
        chat("m"),
        headers=[("HTTP-Referer", "https://example.test/app"), ("User-Agent", "tester/1.0"), ("X-Custom", "keep me")],
    )
    assert r.status == 200
    (req,) = p1.requests
    assert req.header("http-referer") == b"https://example.test/app"
    assert req.header("user-agent") == b"tester/1.0"
    assert req.header("x-custom") == b"keep me"
    assert req.header("x-title") == b"my-app"
    assert req.header("x-extra") == b"1"
    assert req.header_values("authorization") == [f"Bearer {KEY_A}".encode()]
    assert GW_KEY.encode() not in req.raw_head


# --------------------------------------------------------------------------- /v1/messages


def ant_cfg(oa: MockUpstream, ant: MockUpstream, routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return cfg(
        {"oa": prov(oa, priority=1, models=["*"]), "ant": prov(ant, type="anthropic", keys=[ANT_KEY], priority=2)},
        routes=routes or [],
    )


@pytest.mark.parametrize("client_version", [None, "2023-06-01"])
async def test_messages_routed_only_among_anthropic_providers(
    start_gateway: StartGateway, ups: list[MockUpstream], client_version: str | None
) -> None:
    oa, ant, _ = ups
    ant.enqueue(Json(body=MESSAGE))
    gw = await start_gateway(ant_cfg(oa, ant))
    headers = [("anthropic-beta", "tools-2024-04-04")]
    if client_version:
        headers.append(("anthropic-version", client_version))
    r = await call(gw, MSG_BODY, path="/v1/messages", headers=headers, auth="x-api-key")
    assert r.status == 200, r.body
    assert r.json() == MESSAGE
    assert routed_by(r) == ("ant", "1")
    assert oa.requests == []
    (req,) = ant.requests
    assert req.target == b"/v1/messages"
    assert req.body == MSG_BODY
    assert req.header_values("x-api-key") == [ANT_KEY.encode()]
    assert req.header("authorization") is None
    assert req.header_values("anthropic-version") == [b"2023-06-01"]
    assert req.header("anthropic-beta") == b"tools-2024-04-04"
    assert GW_KEY.encode() not in req.raw_head


async def test_messages_keeps_client_anthropic_version(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, ant, _ = ups
    gw = await start_gateway(ant_cfg(oa, ant))
    r = await call(gw, MSG_BODY, path="/v1/messages", headers=[("anthropic-version", "2099-01-01")])
    assert r.status == 200
    assert ant.requests[0].header_values("anthropic-version") == [b"2099-01-01"]
    assert ant.requests[0].header("authorization") is None  # the client's Bearer gateway key
    assert ant.requests[0].header_values("x-api-key") == [ANT_KEY.encode()]


async def test_messages_count_tokens_and_route_filtered_to_anthropic(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, ant, _ = ups
    gw = await start_gateway(
        ant_cfg(oa, ant, routes=[{"match": "sonnet", "model": "claude-sonnet-4-20250514", "providers": ["oa", "ant"]}])
    )
    ant.enqueue(Json(body={"input_tokens": 12}))
    r = await call(gw, b'{"model":"sonnet","messages":[{"role":"user","content":"x"}]}', path="/v1/messages/count_tokens")
    assert r.status == 200, r.body
    assert r.json() == {"input_tokens": 12}
    assert routed_by(r) == ("ant", "1")
    (req,) = ant.requests
    assert req.target == b"/v1/messages/count_tokens"
    assert req.json() == {"model": "claude-sonnet-4-20250514", "messages": [{"role": "user", "content": "x"}]}
    await recorded(gw, r)
    assert oa.requests == []


async def test_messages_without_anthropic_provider_is_404(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, _, _ = ups
    gw = await start_gateway(cfg({"oa": prov(oa)}))
    r = await call(gw, MSG_BODY, path="/v1/messages")
    err = assert_gateway_error(r, 404)
    assert "claude-sonnet-4" in err["message"]
    await recorded(gw, r)
    assert oa.requests == []


async def test_chat_completions_of_non_claude_models_not_sent_to_anthropic_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """Issue 13: an anthropic provider serves /v1/chat/completions (Anthropic's
    OpenAI-compatible API) — with its default models, only claude-* there."""
    oa, ant, _ = ups
    gw = await start_gateway(cfg({"ant": prov(ant, type="anthropic", keys=[ANT_KEY], priority=1), "oa": prov(oa, priority=2)}))
    r = await call(gw, chat("gpt-4o"))
    assert r.status == 200
    assert routed_by(r) == ("oa", "1")
    assert ant.requests == []
    r = await call(gw, chat("claude-sonnet-4"))
    assert routed_by(r) == ("ant", "1")
    assert ant.requests[0].path == "/v1/chat/completions"


# --------------------------------------------------------------------------- other /v1/{rest}


async def test_other_v1_path_goes_to_highest_priority_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    pinned = "gw-pinned-to-p1-4444"
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, priority=3), "p2": prov(p2, base_path="/api/v1", keys=[KEY_B], priority=1)},
            keys=[{"key": GW_KEY, "name": "tester"}, {"key": pinned, "name": "pin", "providers": ["p1"]}],
        )
    )
    p2.enqueue(Json(body={"object": "list", "data": []}))
    r = await call(gw, b"", path="/v1/files?purpose=batch&limit=2", method="GET")
    assert r.status == 200, r.body
    assert r.json() == {"object": "list", "data": []}
    assert routed_by(r) == ("p2", "1")
    (req,) = p2.requests
    assert req.method == b"GET"
    assert req.target == b"/api/v1/files?purpose=batch&limit=2"
    assert bearer_key(req) == KEY_B
    assert p1.requests == []

    # a POST with a body, forwarded unchanged, to the highest-priority provider *allowed*
    sent = b'{"input":"x",  "voice":"alloy"}'
    r = await call(gw, sent, path="/v1/audio/speech", key=pinned)
    assert r.status == 200
    assert routed_by(r)[0] == "p1"
    (req,) = p1.requests
    assert req.target == b"/v1/audio/speech"
    assert req.body == sent
    assert bearer_key(req) == KEY_A


# --------------------------------------------------------------------------- /{provider}/{rest}


async def test_named_provider_path(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, base_path="/custom/v1", keys=[KEY_B], priority=2)}))
    sent = b'{"model":"whatever",   "messages":[{"role":"user","content":"x"}]}'
    r = await call(gw, sent, path="/p2/chat/completions")
    assert r.status == 200, r.body
    assert routed_by(r) == ("p2", "1")
    (req,) = p2.requests
    assert req.target == b"/custom/v1/chat/completions"
    assert req.body == sent
    assert bearer_key(req) == KEY_B

    r = await call(gw, b"", path="/p2/models?x=1", method="GET")
    assert r.status == 200
    assert p2.requests[1].target == b"/custom/v1/models?x=1"
    assert p2.requests[1].method == b"GET"
    await recorded(gw, r)
    assert p1.requests == []


async def test_named_provider_does_not_fail_over(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1), "p2": prov(p2, keys=[KEY_B])}))
    p2.enqueue(Json(status=503, body=b"p2 down"))
    r = await call(gw, chat("m"), path="/p2/chat/completions")
    assert r.status == 503
    assert r.body == b"p2 down"
    await recorded(gw, r)
    assert p1.requests == []


ESCAPES = [
    "/p2/../admin",
    "/p2/a/../../admin",
    "/p2/%2e%2e/admin",
    "/p2/%2E%2E/admin",
    "/p2/.%2e/admin",
    "/p2/a/%2e%2e/%2e%2e/admin",
    "/p2/..",
    "/p2/a\\..\\admin",
    "/p2/..\\admin",
    "/p2//admin",
    "/p2//127.0.0.1/x",
    "/p2/%2e%2e%2fadmin",
    "/p2/..%2fadmin",
    "/v1/../admin",
    "/v1/%2e%2e/admin",
]


async def test_path_escapes_are_400_and_not_forwarded(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, keys=[KEY_B], priority=2)}))
    wrong = []
    for path in ESCAPES:
        for method in ("GET", "POST"):
            r = await call(gw, b"" if method == "GET" else chat("m"), path=path, method=method)
            if r.status != 400:
                wrong.append((method, path, r.status, r.header("x-rawgw-provider")))
            else:
                assert_gateway_error(r, 400)
                await recorded(gw, r)
    assert wrong == []
    assert p1.requests == [] and p2.requests == []
    assert p1.connections == [] and p2.connections == []
    # a clean path through the same provider works
    r = await call(gw, b"", path="/p2/models", method="GET")
    assert r.status == 200 and p2.requests[0].target == b"/v1/models"


async def test_unknown_first_segment_is_404(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    r = await call(gw, chat("m"), path="/nosuchprovider/chat/completions")
    assert_gateway_error(r, 404)
    await recorded(gw, r)
    assert p1.requests == []


# --------------------------------------------------------------------------- /v1/models


def models_answer(items: list[dict[str, Any]], status: int = 200):  # type: ignore[no-untyped-def]
    def handler(req: RecordedRequest) -> Json:
        if req.method == b"GET" and req.path.endswith("/models"):
            return Json(status=status, body={"object": "list", "data": items} if status == 200 else b"broken")
        return Json(body={"unexpected": True})

    return handler


GPT4O = {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system", "context_length": 128000}
DS = {"id": "deepseek/deepseek-chat", "object": "model", "created": 1700000000, "owned_by": "deepseek", "pricing": {"prompt": "0.1"}}


async def test_models_union_aliases_cache_and_failing_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, p3 = ups
    p1.handler = models_answer([GPT4O])
    p2.handler = models_answer([DS, dict(GPT4O, owned_by="dup")])
    p3.handler = models_answer([], status=500)
    gw = await start_gateway(
        cfg(
            {
                "p1": prov(p1, priority=1),
                "p2": prov(p2, type="openrouter", base_path="/api/v1", keys=["sk-or-v1-" + "1" * 40], priority=2),
                "p3": prov(p3, keys=[KEY_C], priority=3),
                "p4": prov(dead_url(), keys=[KEY_B], priority=4, connect_timeout_s=1),
            },
            routes=[
                {"match": "my-alias", "model": "gpt-4o"},
                {"match": "deepseek/deepseek-chat", "providers": ["p2"]},  # also a provider's id: listed once
                {"match": "gpt-*", "providers": ["p1"]},
                {"match": "fast?", "model": "gpt-4o"},
                {"match": "claude-[0-9]", "model": "gpt-4o"},
            ],
        )
    )
    r = await call(gw, b"", path="/v1/models", method="GET")
    assert r.status == 200, r.body
    assert_wire_invariants(r)
    doc = r.json()
    assert doc["object"] == "list"
    ids = [m["id"] for m in doc["data"]]
    assert sorted(ids) == sorted(["gpt-4o", "deepseek/deepseek-chat", "my-alias"]), ids
    by_id = {m["id"]: m for m in doc["data"]}
    assert by_id["deepseek/deepseek-chat"] == DS  # passed through with all its fields
    assert by_id["gpt-4o"]["context_length"] == 128000
    alias = by_id["my-alias"]
    assert alias["object"] == "model" and isinstance(alias["created"], int) and isinstance(alias["owned_by"], str)

    (q1,) = p1.requests
    assert q1.method == b"GET" and q1.path == "/v1/models"
    assert bearer_key(q1) == KEY_A
    (q2,) = p2.requests
    assert q2.path == "/api/v1/models"
    assert len(p3.requests) == 1

    # cached: the second listing does not hit the upstreams
    r2 = await call(gw, b"", path="/v1/models", method="GET")
    assert r2.status == 200
    assert sorted(m["id"] for m in r2.json()["data"]) == sorted(ids)
    assert len(p1.requests) == 1 and len(p2.requests) == 1


async def test_models_also_at_api_v1(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    p1.handler = models_answer([GPT4O])
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    doc = await get_json(gw, "/api/v1/models")
    assert [m["id"] for m in doc["data"]] == ["gpt-4o"]


ANT_MODELS = {
    "data": [
        {"type": "model", "id": "claude-sonnet-4-20250514", "display_name": "Claude Sonnet 4", "created_at": "2025-05-14T00:00:00Z"},
        {"type": "model", "id": "claude-3-5-haiku-latest", "display_name": "Claude Haiku 3.5", "created_at": "2024-10-22T00:00:00Z"},
    ],
    "has_more": False,
    "first_id": "claude-sonnet-4-20250514",
    "last_id": "claude-3-5-haiku-latest",
}


async def test_models_anthropic_shape(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    oa, ant, _ = ups
    oa.handler = models_answer([GPT4O])

    def ant_handler(req: RecordedRequest) -> Json:
        assert req.path == "/v1/models"
        return Json(body=ANT_MODELS)

    ant.handler = ant_handler
    gw = await start_gateway(
        cfg(
            {"oa": prov(oa, priority=1), "ant": prov(ant, type="anthropic", keys=[ANT_KEY], priority=2)},
            routes=[{"match": "sonnet", "model": "claude-sonnet-4-20250514"}],
        )
    )
    doc = await get_json(gw, "/v1/models?limit=1000", headers=[("anthropic-version", "2023-06-01")])
    assert set(doc) >= {"data", "has_more", "first_id", "last_id"}, doc
    assert doc["has_more"] is False
    ids = [m["id"] for m in doc["data"]]
    assert sorted(ids) == sorted(["claude-sonnet-4-20250514", "claude-3-5-haiku-latest", "sonnet"]), ids
    assert "gpt-4o" not in ids
    for m in doc["data"]:
        assert m["type"] == "model"
        assert isinstance(m["display_name"], str) and m["display_name"]
        assert isinstance(m["created_at"], str)
    by_id = {m["id"]: m for m in doc["data"]}
    assert by_id["claude-sonnet-4-20250514"]["display_name"] == "Claude Sonnet 4"
    assert by_id["claude-sonnet-4-20250514"]["created_at"] == "2025-05-14T00:00:00Z"
    assert doc["first_id"] == ids[0] and doc["last_id"] == ids[-1]
    (q,) = ant.requests
    assert q.header_values("x-api-key") == [ANT_KEY.encode()]
    assert q.header("anthropic-version") is not None
    assert q.header("authorization") is None

    # the OpenAI shape lists every provider's models, the Anthropic ones included
    doc = await get_json(gw, "/v1/models")
    assert doc["object"] == "list"
    ids = sorted(m["id"] for m in doc["data"])
    assert ids == sorted(["gpt-4o", "claude-sonnet-4-20250514", "claude-3-5-haiku-latest", "sonnet"])
    for m in doc["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and isinstance(m["owned_by"], str), m


async def test_models_lists_only_what_routing_serves(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """Issue 10.4: each provider's ``models`` globs apply to its own upstream list, so
    every listed id is routable (no 404 "no provider serves") and nothing routable to
    nobody is listed."""
    p1, p2, _ = ups
    llama1 = {"id": "llama-3", "object": "model", "created": 1, "owned_by": "p1-llama"}
    llama2 = {"id": "llama-3", "object": "model", "created": 2, "owned_by": "p2-llama"}
    p1.handler = models_answer([GPT4O, llama1, {"id": "mistral-7b", "object": "model"}, {"id": "special-2"}])
    p2.handler = models_answer([llama2, dict(GPT4O, owned_by="p2"), {"id": "special-1", "object": "model"}])
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, priority=1, models=["gpt-*"]), "p2": prov(p2, keys=[KEY_B], priority=2, models=["llama-*"])},
            routes=[{"match": "special-*", "providers": ["p2"]}],
        )
    )
    doc = await get_json(gw, "/v1/models")
    by_id = {m["id"]: m for m in doc["data"]}
    assert sorted(by_id) == ["gpt-4o", "llama-3", "special-1"], by_id
    assert by_id["gpt-4o"]["owned_by"] == "system"  # p1's entry
    assert by_id["llama-3"] == llama2  # p1 lists it too, but routing sends llama-3 to p2
    for mid in by_id:
        r = await call(gw, chat(mid))
        assert r.status == 200, (mid, r.status, r.body)
    assert routed_by(await call(gw, chat("llama-3"))) == ("p2", "1")
    # listed by p1 upstream but not served by p1 here: not offered
    assert "mistral-7b" not in by_id
    assert_gateway_error(await call(gw, chat("mistral-7b")), 404)
    assert "special-2" not in by_id  # its route sends it to p2, which does not list it


async def test_models_anthropic_shape_lists_only_aliases_messages_can_serve(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    """Issue 10.16c: a route alias appears in the Anthropic list only when its route has an
    anthropic-type provider; every id listed there is served by /v1/messages."""
    oa, ant, _ = ups
    oa.handler = models_answer([GPT4O])

    def ant_handler(req: RecordedRequest) -> Json:
        return Json(body=ANT_MODELS) if req.method == b"GET" else Json(body=MESSAGE)

    ant.handler = ant_handler
    gw = await start_gateway(
        cfg(
            {"oa": prov(oa, priority=1), "ant": prov(ant, type="anthropic", keys=[ANT_KEY], priority=2, models=["claude-*"])},
            routes=[
                {"match": "sonnet", "model": "claude-sonnet-4-20250514"},  # by glob: ant serves it
                {"match": "house-claude", "providers": ["ant", "oa"]},  # a route naming ant
                {"match": "gpt-alias", "providers": ["oa"]},  # no anthropic provider
                {"match": "cheap", "model": "gpt-4o-mini"},  # ant's globs do not fit gpt-4o-mini
            ],
        )
    )
    doc = await get_json(gw, "/v1/models", headers=[("anthropic-version", "2023-06-01")])
    ids = [m["id"] for m in doc["data"]]
    assert sorted(ids) == sorted(["claude-sonnet-4-20250514", "claude-3-5-haiku-latest", "sonnet", "house-claude"]), ids
    assert doc["first_id"] == ids[0] and doc["last_id"] == ids[-1]
    for mid in ids:
        body = MSG_BODY.replace(b"claude-sonnet-4", mid.encode())
        r = await call(gw, body, path="/v1/messages", headers=[("anthropic-version", "2023-06-01")])
        assert r.status == 200, (mid, r.status, r.body)
    for mid in ("gpt-alias", "cheap"):
        body = MSG_BODY.replace(b"claude-sonnet-4", mid.encode())
        r = await call(gw, body, path="/v1/messages", headers=[("anthropic-version", "2023-06-01")])
        assert_gateway_error(r, 404)
    # the OpenAI shape still offers every alias some provider serves
    doc = await get_json(gw, "/v1/models")
    assert {"sonnet", "house-claude", "gpt-alias", "cheap"} <= {m["id"] for m in doc["data"]}


async def test_root_names_the_gateway(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    r = await call(gw, b"", path="/", method="GET")
    assert r.status == 200
    assert_wire_invariants(r)
    doc = r.json()
    assert doc["name"] == "rawgw"
    assert doc["version"] == rawgw.__version__
    assert doc.get("endpoints"), doc
    assert p1.requests == []
