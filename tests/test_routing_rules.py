"""Routing rules (SPEC 4, 5; issue 3): routes, model aliases, body rewriting only when
needed, OpenRouter provider-order injection, candidates by glob/priority, virtual keys.

Observed from what each MockUpstream received (exact bytes, auth) and what the client got.
"""

from __future__ import annotations

import json

import pytest
from conftest import GW_KEY, StartGateway, assert_gateway_error, assert_wire_invariants
from mock_upstream import Json, MockUpstream
from ops_helpers import recorded
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    KEY_A,
    KEY_B,
    bearer_key,
    call,
    cfg,
    chat,
    prov,
    routed_by,
    typed,
    ups_fixture,
)

# Odd whitespace, key order, escapes, a float written as 1.0, nested values.
ODD = (
    b'{ "stream" :false,\n  "model":"%s",\t"messages":[{"role":"user","content":"h\\u00e9 \xc3\xa9 \\"q\\" \\/"}],'
    b'"temperature":0.7 , "zeta":1.0,"n":1,"alpha":null,"x":{"nested":[1,2.5,null,true,"s"]},"max_tokens":5}'
)


OR_KEY = "sk-or-v1-0123456789abcdef0123456789abcdefa1b2"


def odd(model: str) -> bytes:
    return ODD % model.encode()


# --------------------------------------------------------------------------- routes


async def test_first_matching_route_wins(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1), "p2": prov(p2)},
            routes=[
                {"match": "gpt-4*", "model": "up-a", "providers": ["p1"]},
                {"match": "gpt-4o", "model": "up-b", "providers": ["p2"]},
                {"match": "*", "providers": ["p2"]},
            ],
        )
    )
    r = await call(gw, odd("gpt-4o"))
    assert r.status == 200, r.body
    assert routed_by(r) == ("p1", "1")
    assert r.json() == {"who": "up0"}
    assert_wire_invariants(r)
    (req,) = p1.requests
    assert req.json()["model"] == "up-a"
    assert p2.requests == []

    r = await call(gw, odd("gpt-3.5"))
    assert r.status == 200
    assert routed_by(r) == ("p2", "1")
    (req2,) = p2.requests
    # the catch-all route has no model: nothing to rewrite, the exact bytes go upstream
    assert req2.body == odd("gpt-3.5")
    assert len(p1.requests) == 1


@pytest.mark.parametrize(
    ("model", "expected"),
    [("m12", "p2"), ("m1x", "p2"), ("m1", "p1"), ("m123", "p1"), ("xm12", "p1")],
)
async def test_route_glob_forms(start_gateway: StartGateway, ups: list[MockUpstream], model: str, expected: str) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, priority=1), "p2": prov(p2, priority=2)},
            routes=[{"match": "m[0-9]?", "providers": ["p2"]}],
        )
    )
    r = await call(gw, chat(model))
    assert r.status == 200, r.body
    assert routed_by(r) == (expected, "1")
    answered, other = (p2, p1) if expected == "p2" else (p1, p2)
    assert len(answered.requests) == 1 and other.requests == []
    assert answered.requests[0].body == chat(model)


async def test_route_providers_override_models_globs(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, priority=1, models=["*"]), "p2": prov(p2, priority=2, models=["gpt-*"])},
            routes=[{"match": "llama*", "providers": ["p2"]}],
        )
    )
    r = await call(gw, chat("llama-3"))
    assert r.status == 200
    assert routed_by(r) == ("p2", "1")
    assert p1.requests == []


# --------------------------------------------------------------------------- rewriting


async def test_alias_rewrites_model_and_keeps_every_other_field(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}, routes=[{"match": "gpt-4", "model": "deepseek/deepseek-chat-v3-0324"}]))
    sent = odd("gpt-4")
    r = await call(gw, sent)
    assert r.status == 200, r.body
    (req,) = p1.requests
    got = json.loads(req.body)
    want = json.loads(sent)
    want["model"] = "deepseek/deepseek-chat-v3-0324"
    assert typed(got) == typed(want)  # same fields, same values, same types, same key order
    assert req.body.count(b'"model"') == 1
    assert req.header("content-length") == str(len(req.body)).encode()
    assert bearer_key(req) == KEY_A
    # the client's credential never goes upstream
    assert GW_KEY.encode() not in req.raw_head


async def test_alias_rewrite_keeps_big_integers_exact(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """SPEC 5.5: every other field keeps its value as sent, also integers beyond 64 bits
    (a JSON number is arbitrary precision; turning it into a float changes it)."""
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}, routes=[{"match": "alias", "model": "real"}]))
    sent = b'{"model":"alias","messages":[{"role":"user","content":"x"}],"metadata":{"trace":123456789012345678901234567890,"neg":-9223372036854775809}}'
    r = await call(gw, sent)
    assert r.status == 200, r.body
    (req,) = p1.requests
    assert b"123456789012345678901234567890" in req.body, req.body
    assert b"-9223372036854775809" in req.body, req.body
    assert json.loads(req.body) == {
        "model": "real",
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"trace": 123456789012345678901234567890, "neg": -9223372036854775809},
    }


def _pairs(body: bytes) -> list[tuple[str, object]]:
    """Top-level members in order, duplicates kept (a rewrite must not add a second ``model``)."""
    return json.loads(body, object_pairs_hook=lambda pairs: pairs)  # type: ignore[no-any-return]


TRICKY = [
    # nested "model" members are not the request's model: left alone
    (
        b'{"messages":[{"role":"user","content":"x","model":"alias"}],"metadata":{"model":"alias"},"model":"alias"}',
        {"messages": [{"role": "user", "content": "x", "model": "alias"}], "metadata": {"model": "alias"}, "model": "real/x"},
    ),
    # braces, quotes and backslashes inside strings; whitespace around the colon
    (
        rb'{"x":"} \\ \" {\"model\":\"alias\"}" , "model" : "alias" ,"messages":[{"role":"user","content":"]"}]}',
        {"x": '} \\ " {"model":"alias"}', "model": "real/x", "messages": [{"role": "user", "content": "]"}]},
    ),
    # an escaped key is still the key "model"
    (
        rb'{"mod\u0065l":"alias","messages":[{"role":"user","content":"x"}]}',
        {"model": "real/x", "messages": [{"role": "user", "content": "x"}]},
    ),
    # model last, followed by whitespace and a newline before the brace
    (
        b'{"messages":[{"role":"user","content":"x"}],"n":1,"model":"alias"  \n}\n',
        {"messages": [{"role": "user", "content": "x"}], "n": 1, "model": "real/x"},
    ),
]


async def test_rewrite_touches_only_the_top_level_model(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}, routes=[{"match": "alias", "model": "real/x"}]))
    for i, (sent, want) in enumerate(TRICKY):
        r = await call(gw, sent)
        assert r.status == 200, (i, r.body)
        got = p1.requests[i].body
        assert json.loads(got) == want, (i, got)
        assert [k for k, _ in _pairs(got)].count("model") == 1, got
        assert p1.requests[i].header("content-length") == str(len(got)).encode()


OR_TRICKY = [
    (b'{"model":"alias","provider":null,"messages":[{"role":"user","content":"x"}]}', {"order": ["A", "B"]}),
    (b'{"model":"alias","provider":{},"messages":[{"role":"user","content":"x"}]}', {"order": ["A", "B"]}),
    (
        b'{"model":"alias","provider" : { "sort":"price" , "only":["x"],"max_price":{"prompt":1}} ,"messages":[{"role":"user","content":"x"}]}',
        {"sort": "price", "only": ["x"], "max_price": {"prompt": 1}, "order": ["A", "B"]},
    ),
    (b'{"model":"alias","messages":[{"role":"user","content":"x","provider":{"order":["no"]}}]}', {"order": ["A", "B"]}),
]


async def test_provider_order_injection_on_varied_bodies(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY])},
            routes=[{"match": "alias", "provider_order": ["A", "B"]}],
        )
    )
    for i, (sent, want_provider) in enumerate(OR_TRICKY):
        r = await call(gw, sent)
        assert r.status == 200, (i, r.body)
        got = json.loads(p1.requests[i].body)
        assert got["provider"] == want_provider, (i, p1.requests[i].body)
        assert got["model"] == "alias"
        expected_rest = {k: v for k, v in json.loads(sent).items() if k != "provider"}
        assert {k: v for k, v in got.items() if k != "provider"} == expected_rest
        assert [k for k, _ in _pairs(p1.requests[i].body)].count("provider") == 1


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param([{"match": "gpt-4*", "model": "gpt-4o", "providers": ["p1"]}], id="route-model-equals-client-model"),
        pytest.param([{"match": "gpt-4*", "providers": ["p1"]}], id="route-without-model"),
        pytest.param([], id="no-route"),
        pytest.param(
            [{"match": "gpt-4o", "providers": ["p1"], "provider_order": ["DeepInfra"]}],
            id="provider-order-but-openai-provider",
        ),
    ],
)
async def test_body_needing_no_change_is_forwarded_as_exact_bytes(
    start_gateway: StartGateway, ups: list[MockUpstream], routes: list[dict[str, object]]
) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}, routes=routes))
    sent = odd("gpt-4o")
    r = await call(gw, sent)
    assert r.status == 200, r.body
    (req,) = p1.requests
    assert req.body == sent
    assert req.header("content-length") == str(len(sent)).encode()


# --------------------------------------------------------------------------- provider.order


async def test_openrouter_provider_order_injected(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY])},
            routes=[
                {
                    "match": "gpt-4*",
                    "model": "deepseek/deepseek-chat-v3-0324",
                    "providers": ["or1"],
                    "provider_order": ["DeepInfra", "Parasail"],
                }
            ],
        )
    )
    sent = odd("gpt-4-turbo")
    r = await call(gw, sent)
    assert r.status == 200, r.body
    assert routed_by(r) == ("or1", "1")
    (req,) = p1.requests
    got = json.loads(req.body)
    want = json.loads(sent)
    want["model"] = "deepseek/deepseek-chat-v3-0324"
    assert got.pop("provider") == {"order": ["DeepInfra", "Parasail"]}
    assert typed(got) == typed(want)
    assert bearer_key(req) == OR_KEY


async def test_openrouter_injection_without_model_rewrite(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY])},
            routes=[{"match": "qwen/*", "provider_order": ["Groq"]}],
        )
    )
    sent = b'{"model":"qwen/qwen3","provider":{"allow_fallbacks":false},"messages":[{"role":"user","content":"x"}]}'
    r = await call(gw, sent)
    assert r.status == 200, r.body
    got = p1.requests[0].json()
    assert got == {
        "model": "qwen/qwen3",
        "provider": {"allow_fallbacks": False, "order": ["Groq"]},
        "messages": [{"role": "user", "content": "x"}],
    }


async def test_client_provider_order_is_kept(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY])},
            routes=[{"match": "gpt-4o", "providers": ["or1"], "provider_order": ["DeepInfra"]}],
        )
    )
    sent = b'{"model":"gpt-4o",  "provider": {"order":["Mine"], "allow_fallbacks":false},"messages":[{"role":"user","content":"x"}]}'
    r = await call(gw, sent)
    assert r.status == 200, r.body
    # nothing to change: the exact bytes
    assert p1.requests[0].body == sent


async def test_force_provider_order_replaces_client_order(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY])},
            routes=[
                {
                    "match": "gpt-4o",
                    "model": "openai/gpt-4o",
                    "providers": ["or1"],
                    "provider_order": ["DeepInfra", "Parasail"],
                    "force_provider_order": True,
                }
            ],
        )
    )
    sent = b'{"model":"gpt-4o","provider":{"order":["Mine"],"allow_fallbacks":false},"temperature":0.25,"messages":[{"role":"user","content":"x"}]}'
    r = await call(gw, sent)
    assert r.status == 200, r.body
    got = p1.requests[0].json()
    assert got == {
        "model": "openai/gpt-4o",
        "provider": {"order": ["DeepInfra", "Parasail"], "allow_fallbacks": False},
        "temperature": 0.25,
        "messages": [{"role": "user", "content": "x"}],
    }


async def test_no_injection_for_non_openrouter_provider_of_same_route(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY]), "oa": prov(p2, keys=[KEY_B])},
            routes=[{"match": "gpt-4o", "providers": ["or1", "oa"], "provider_order": ["DeepInfra"]}],
        )
    )
    p1.enqueue(Json(status=503, body={"error": "busy"}))
    sent = odd("gpt-4o")
    r = await call(gw, sent)
    assert r.status == 200, r.body
    assert routed_by(r) == ("oa", "2")
    assert r.json() == {"who": "up1"}
    inj = p1.requests[0].json()
    assert inj["provider"] == {"order": ["DeepInfra"]}
    (req,) = p2.requests
    assert req.body == sent  # the openai provider gets the client's bytes, no provider field
    assert bearer_key(req) == KEY_B


async def test_no_injection_but_rewrite_for_openai_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"or1": prov(p1, type="openrouter", keys=[OR_KEY]), "oa": prov(p2)},
            routes=[{"match": "fast", "model": "x/y", "providers": ["oa", "or1"], "provider_order": ["A", "B"]}],
        )
    )
    p2.enqueue(Json(status=500, body={"error": "x"}))
    r = await call(gw, chat("fast", temperature=0))
    assert r.status == 200, r.body
    assert routed_by(r) == ("or1", "2")
    assert p2.requests[0].json() == {"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert p1.requests[0].json() == {
        "model": "x/y",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "provider": {"order": ["A", "B"]},
    }


# --------------------------------------------------------------------------- candidates


async def test_candidates_by_models_globs_and_priority(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, p3 = ups
    gw = await start_gateway(
        cfg(
            {
                "wide": prov(p1, priority=5, models=["*"]),
                "gpt": prov(p2, priority=1, models=["gpt-*", "o1*"]),
                "claude": prov(p3, priority=3, models=["claude-*"]),
            }
        )
    )
    for model, name, mock in [("gpt-4", "gpt", p2), ("o1-mini", "gpt", p2), ("claude-3", "claude", p3), ("llama-3", "wide", p1)]:
        before = len(mock.requests)
        r = await call(gw, chat(model))
        assert r.status == 200, (model, r.body)
        assert routed_by(r) == (name, "1"), model
        assert len(mock.requests) == before + 1
        assert mock.requests[-1].body == chat(model)
    assert len(p1.requests) + len(p2.requests) + len(p3.requests) == 4


async def test_priority_gives_failover_order(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, p3 = ups
    gw = await start_gateway(
        cfg(
            {
                "low": prov(p1, priority=9, models=["*"]),
                "claude": prov(p3, priority=2, models=["claude-*"]),
                "high": prov(p2, priority=1, models=["gpt-*"]),
            }
        )
    )
    p2.enqueue(Json(status=503, body={"e": 1}))
    r = await call(gw, chat("gpt-4"))
    assert r.status == 200
    assert routed_by(r) == ("low", "2")
    assert len(p2.requests) == 1 and len(p1.requests) == 1
    assert p3.requests == []  # does not serve gpt-*


async def test_route_without_providers_uses_globs_on_upstream_model(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"claude": prov(p1, priority=1, models=["claude-*"]), "gpt": prov(p2, priority=2, models=["gpt-*"])},
            routes=[{"match": "fast", "model": "gpt-4o-mini"}],
        )
    )
    r = await call(gw, chat("fast"))
    assert r.status == 200, r.body
    assert routed_by(r) == ("gpt", "1")
    assert p2.requests[0].json()["model"] == "gpt-4o-mini"
    assert p1.requests == []


async def test_no_provider_for_model_is_404(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"a": prov(p1, models=["gpt-*"]), "b": prov(p2, models=["claude-*"])}))
    r = await call(gw, chat("llama-3-70b"))
    err = assert_gateway_error(r, 404)
    assert "llama-3-70b" in err["message"]
    assert_wire_invariants(r)
    await recorded(gw, r)
    assert p1.requests == [] and p2.requests == []


BAD_BODIES = [
    (b'{"model": "m",', "JSON"),
    (b"not json at all", "JSON"),
    (b"", "JSON"),
    (b'{"model":"m"} trailing', "JSON"),
    (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":42,"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"","messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":null}', "model"),
    (b'{"model":["m"]}', "model"),
]


async def test_bad_body_is_400_naming_the_problem(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    for body, needle in BAD_BODIES:
        r = await call(gw, body)
        err = assert_gateway_error(r, 400)
        assert needle in err["message"], (body, err)
        await recorded(gw, r)
    assert p1.requests == []


# --------------------------------------------------------------------------- virtual keys

PINNED = "gw-pinned-key-7777"
LIMITED = "gw-limited-key-8888"
VKEYS = [
    {"key": GW_KEY, "name": "tester"},
    {"key": PINNED, "name": "pinned", "providers": ["p2"]},
    {"key": LIMITED, "name": "limited", "models": ["gpt-*", "o?-mini"]},
]


def vk_cfg(p1: MockUpstream, p2: MockUpstream) -> dict[str, object]:
    return cfg(
        {"p1": prov(p1, priority=1, keys=[KEY_A]), "p2": prov(p2, priority=2, keys=[KEY_B])},
        routes=[
            {"match": "gpt-4*", "providers": ["p1", "p2"]},
            {"match": "only-p1", "providers": ["p1"]},
        ],
        keys=VKEYS,
    )


async def test_pinned_key_reaches_only_its_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(vk_cfg(p1, p2))
    r = await call(gw, chat("gpt-4o"), key=PINNED)
    assert r.status == 200, r.body
    assert routed_by(r) == ("p2", "1")
    assert p1.requests == []
    # no route: candidates by priority (p1 first), narrowed to p2
    r = await call(gw, chat("llama"), key=PINNED)
    assert routed_by(r) == ("p2", "1")
    assert p1.requests == [] and len(p2.requests) == 2
    # the unpinned key goes to p1 first
    r = await call(gw, chat("gpt-4o"))
    assert routed_by(r) == ("p1", "1")


async def test_pinned_key_never_fails_over_to_another_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(vk_cfg(p1, p2))
    p2.enqueue(Json(status=503, body=b"p2 is down"))
    r = await call(gw, chat("gpt-4o"), key=PINNED)
    # exhausted: the last upstream response as it was
    assert r.status == 503
    assert r.body == b"p2 is down"
    assert routed_by(r) == ("p2", "1")
    await recorded(gw, r)
    assert p1.requests == []


async def test_pinned_key_403_when_route_has_only_other_providers(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(vk_cfg(p1, p2))
    r = await call(gw, chat("only-p1"), key=PINNED)
    err = assert_gateway_error(r, 403)
    assert "pinned" in err["message"]
    assert PINNED.encode() not in r.raw_head + r.body
    await recorded(gw, r)
    assert p1.requests == [] and p2.requests == []


async def test_pinned_key_on_named_provider_path_is_403(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(vk_cfg(p1, p2))
    r = await call(gw, chat("gpt-4o"), path="/p1/chat/completions", key=PINNED)
    err = assert_gateway_error(r, 403)
    assert "pinned" in err["message"]
    assert PINNED.encode() not in r.raw_head + r.body
    r = await call(gw, chat("gpt-4o"), path="/p2/chat/completions", key=PINNED)
    assert r.status == 200
    assert routed_by(r)[0] == "p2"
    await recorded(gw, r)
    assert p1.requests == []


async def test_key_model_allow_list(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(vk_cfg(p1, p2))
    r = await call(gw, chat("claude-3-opus"), key=LIMITED, auth="x-api-key")
    err = assert_gateway_error(r, 403)
    assert "claude-3-opus" in err["message"]
    assert "limited" in err["message"]
    assert LIMITED.encode() not in r.raw_head + r.body
    await recorded(gw, r)
    assert p1.requests == [] and p2.requests == []
    for model in ("gpt-4o", "o1-mini"):
        r = await call(gw, chat(model), key=LIMITED, auth="x-api-key")
        assert r.status == 200, (model, r.body)
    assert [q.json()["model"] for q in p1.requests] == ["gpt-4o", "o1-mini"]
    for q in p1.requests:  # the client's x-api-key is a gateway credential: not forwarded
        assert q.header("x-api-key") is None
        assert bearer_key(q) == KEY_A
    # the allow-list is on the client-visible name: a near miss is refused
    r = await call(gw, chat("o1-preview"), key=LIMITED)
    assert_gateway_error(r, 403)


@pytest.mark.parametrize("order", [("openrouter", "real"), ("real", "openrouter")])
async def test_failover_body_of_a_provider_named_openrouter_is_not_the_openrouter_type_body(
    start_gateway: StartGateway, ups: list[MockUpstream], order: tuple[str, str]
) -> None:
    """Issue 10.14: the rewritten body is made per provider, not per name-or-type: a provider
    *named* openrouter (type openai) and a real openrouter provider, same upstream model, in one
    failover chain each get their own body, whichever is tried first."""
    p1, p2, _ = ups
    mocks = {"openrouter": p1, "real": p2}
    gw = await start_gateway(
        cfg(
            {"openrouter": prov(p1, keys=[KEY_A]), "real": prov(p2, type="openrouter", keys=[OR_KEY])},
            routes=[
                {
                    "match": "m",
                    "model": "up",
                    "providers": list(order),
                    "provider_order": ["Fast"],
                }
            ],
        )
    )
    mocks[order[0]].enqueue(Json(status=500, body={"error": "first fails"}))
    r = await call(gw, b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    assert r.status == 200, r.body
    assert routed_by(r) == (order[1], "2")
    named = p1.requests[0].json()
    typed_or = p2.requests[0].json()
    assert named["model"] == "up" and "provider" not in named, named
    assert typed_or["model"] == "up" and typed_or["provider"] == {"order": ["Fast"]}, typed_or
