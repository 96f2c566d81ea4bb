"""Named failover paths ([groups]), free_only, the model lists (/v1/models-by-provider,
/models, [models] cache_ttl_s) and gateway-only paths (issue 13.4, 13.9, 13.10), through a
real gateway subprocess and loopback mocks; config validation as functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import GW_KEY, StartGateway, assert_gateway_error
from mock_upstream import Json, MockUpstream, RecordedRequest
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    ANT_KEY,
    KEY_A,
    KEY_B,
    bearer_key,
    call,
    cfg,
    chat,
    get_json,
    prov,
    routed_by,
    settle,
    ups_fixture,
)

from rawgw.config import ConfigError, parse_config

PINNED_KEY = "gw-pinned-key-0123456789"


def models_of(*ids: str) -> Json:
    return Json(body={"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})


# --------------------------------------------------------------------------- config


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    return info.value.errors


PROVIDERS = {"openai": {"type": "openai", "keys": ["sk-" + "k" * 16]}, "openai_2": {"type": "openai", "keys": ["sk-" + "j" * 16]}}


def test_groups_parse_and_may_share_a_provider_name() -> None:
    c = parse_config({"providers": PROVIDERS, "groups": {"openai": ["openai", "openai_2", "openai"]}}, {})
    assert c.groups == {"openai": ("openai", "openai_2")}  # a member named twice is one candidate
    assert c.models.cache_ttl_s == 300.0
    assert c.providers["openai"].free_only is False


@pytest.mark.parametrize(
    ("groups", "error"),
    [
        ({"g": ["openai", "opena_2"]}, "groups.g[1]: unknown provider 'opena_2' (did you mean openai_2?)"),
        ({"g": []}, "groups.g: must be a non-empty list of provider names"),
        ({"g": "openai"}, "groups.g: must be a non-empty list of provider names"),
        ({"v1": ["openai"]}, "groups.v1: name clashes with the gateway's own path /v1/"),
        ({"a b": ["openai"]}, "groups.a b: name must be letters, digits"),
        (["openai"], "groups: must be a table"),
    ],
)
def test_group_errors(groups: Any, error: str) -> None:
    assert any(e.startswith(error) for e in errors_of({"providers": PROVIDERS, "groups": groups})), errors_of(
        {"providers": PROVIDERS, "groups": groups}
    )


def test_free_only_and_models_ttl_errors() -> None:
    errors = errors_of({"providers": {"o": {"type": "openai", "keys": ["k" * 16], "free_only": "yes"}}, "models": {"cache_ttl_s": -1}})
    assert "providers.o.free_only: must be true or false" in errors
    assert "models.cache_ttl_s: must be a number of seconds >= 0" in errors
    assert any(e.startswith("models.ttl: unknown setting") for e in errors_of({"providers": PROVIDERS, "models": {"ttl": 5}}))


# --------------------------------------------------------------------------- groups


def group_config(ups: list[MockUpstream], **extra: Any) -> dict[str, Any]:
    p1, p2, ant = ups
    c = cfg(
        {
            "p1": prov(p1, priority=1),
            "p2": prov(p2, keys=[KEY_B], priority=2),
            "ant": prov(ant, type="anthropic", keys=[ANT_KEY]),
        },
        keys=[{"key": GW_KEY, "name": "tester"}, {"key": PINNED_KEY, "name": "pinned", "providers": ["p2"]}],
    )
    # listed out of priority order: a group tries its members by priority
    c["groups"] = {"fallback": ["p2", "p1"], "claude": ["ant"]}
    c.update(extra)
    return c


@pytest.mark.parametrize("path", ["/fallback/chat/completions", "/fallback/v1/chat/completions"])
async def test_group_path_fails_over_by_priority(start_gateway: StartGateway, ups: list[MockUpstream], path: str) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(group_config(ups))
    p1.enqueue(Json(status=503, body={"error": {"message": "overloaded"}}))
    r = await call(gw, chat("gpt-4o"), path=path)
    assert r.status == 200 and routed_by(r) == ("p2", "2")
    assert [q.target for q in p1.requests] == [b"/v1/chat/completions"]
    (req,) = p2.requests
    assert req.target == b"/v1/chat/completions" and bearer_key(req) == KEY_B
    assert req.body == chat("gpt-4o")  # sent as received: no route applies on a named path


async def test_group_other_paths_fail_over_too(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(group_config(ups))
    p1.enqueue(Json(status=500, body={"error": {"message": "boom"}}))
    r = await call(gw, b"", path="/fallback/files?purpose=batch", method="GET")
    assert r.status == 200 and routed_by(r) == ("p2", "2")
    assert p1.requests[0].target == b"/v1/files?purpose=batch" and p2.requests[0].target == b"/v1/files?purpose=batch"


async def test_group_narrowed_by_a_pinned_key(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(group_config(ups))
    r = await call(gw, chat("gpt-4o"), path="/fallback/chat/completions", key=PINNED_KEY)
    assert r.status == 200 and routed_by(r) == ("p2", "1") and p1.requests == []
    r = await call(gw, chat("claude-x"), path="/claude/chat/completions", key=PINNED_KEY)
    err = assert_gateway_error(r, 403)
    assert "pinned" in err["message"] and PINNED_KEY not in r.body.decode()


async def test_anthropic_group_and_provider_paths_join_v1(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """/NAME/chat/completions on an anthropic provider goes to {origin}/v1/chat/completions
    (Anthropic's OpenAI-compatible API), never {origin}/chat/completions; /NAME/v1/messages
    and /NAME/messages reach {origin}/v1/messages."""
    _, _, ant = ups
    gw = await start_gateway(group_config(ups))
    for path, upstream in (
        ("/claude/chat/completions", b"/v1/chat/completions"),
        ("/ant/chat/completions", b"/v1/chat/completions"),
        ("/claude/v1/messages", b"/v1/messages"),
        ("/claude/messages", b"/v1/messages"),
        ("/ant/v1/messages", b"/v1/messages"),
    ):
        r = await call(gw, chat("claude-x", max_tokens=8), path=path)
        assert r.status == 200, (path, r.body)
        req = ant.requests[-1]
        assert req.target == upstream, path
        assert req.header("x-api-key") == ANT_KEY.encode() and req.header("authorization") is None


async def test_group_routed_path_reads_the_body(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(group_config(ups))
    r = await call(gw, b"{not json", path="/fallback/chat/completions")
    assert "JSON" in assert_gateway_error(r, 400)["message"]
    r = await call(gw, b"", path="/fallback/chat/completions", method="GET")
    assert_gateway_error(r, 405)
    await settle()
    assert p1.requests == [] and p2.requests == []


# --------------------------------------------------------------------------- lists and paths


async def test_models_by_provider(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, ant = ups
    p1.default = models_of("gpt-4o", "shared")
    p2.default = models_of("shared", "deepseek-chat")
    ant.default = Json(body={"data": [{"type": "model", "id": "claude-x", "display_name": "Claude X"}], "has_more": False})
    gw = await start_gateway(group_config(ups))
    grouped = await get_json(gw, "/v1/models-by-provider")
    assert list(grouped) == ["p1", "p2", "ant"]
    assert grouped["p1"] == {"name": "p1", "type": "openai", "models": [{"id": "gpt-4o", "object": "model"}, {"id": "shared", "object": "model"}]}
    assert [m["id"] for m in grouped["p2"]["models"]] == ["shared", "deepseek-chat"]  # not deduplicated across providers
    assert [m["id"] for m in grouped["ant"]["models"]] == ["claude-x"]
    r = await call(gw, b"", path="/v1/models-by-provider", method="GET", key=PINNED_KEY)
    assert r.status == 200 and list(r.json()) == ["p2"]
    assert r.header("cache-control") is not None  # per-key answer: not for shared caches
    # /models is an alias, like /chat/completions
    r = await call(gw, b"", path="/models", method="GET")
    assert r.status == 200 and {"gpt-4o", "deepseek-chat", "claude-x"} <= {m["id"] for m in r.json()["data"]}


async def test_gateway_only_path_is_404_not_forwarded(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, ant = ups
    gw = await start_gateway(cfg({"p1": prov(p1), "p2": prov(p2, priority=2)}))
    for method in ("GET", "POST"):
        r = await call(gw, b"{}" if method == "POST" else b"", path="/v1/emulate", method=method)
        assert assert_gateway_error(r, 404)["code"] == "unknown_path"
    await settle()
    assert p1.requests == p2.requests == ant.requests == []


@pytest.mark.parametrize(("ttl", "fetches"), [(None, 1), (0, 3)])
async def test_models_cache_ttl(start_gateway: StartGateway, mock_upstream: MockUpstream, ttl: float | None, fetches: int) -> None:
    mock_upstream.default = models_of("m1")
    c = cfg({"p": prov(mock_upstream)})
    if ttl is not None:
        c["models"] = {"cache_ttl_s": ttl}
    gw = await start_gateway(c)
    for _ in range(3):
        assert [m["id"] for m in (await get_json(gw, "/v1/models"))["data"]] == ["m1"]
    assert len([q for q in mock_upstream.requests if q.target == b"/v1/models"]) == fetches


async def test_free_only_lists_and_refuses(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    def answer(req: RecordedRequest) -> Json:
        if req.method == b"GET":
            return Json(
                body={
                    "data": [
                        {"id": "a/paid", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
                        {"id": "a/free:free", "pricing": {"prompt": "0", "completion": "0"}},
                        {"id": "a/zero", "pricing": {"prompt": "0", "completion": "0"}},
                        {"id": "a/variable", "pricing": {"prompt": "-1", "completion": "-1"}},
                    ]
                }
            )
        return Json(body={"ok": True})

    mock_upstream.handler = answer
    gw = await start_gateway(cfg({"or": prov(mock_upstream, type="openrouter", free_only=True)}))
    # before any listing: only :free ids are known to be free
    r = await call(gw, chat("a/zero"))
    err = assert_gateway_error(r, 403)
    assert err["code"] == "model_not_free" and "free_only = true" in err["message"] and "'or'" in err["message"]
    listing = await get_json(gw, "/v1/models")
    assert [m["id"] for m in listing["data"]] == ["a/free:free", "a/zero"]
    for model, status in (("a/free:free", 200), ("a/zero", 200), ("a/paid", 403), ("a/variable", 403)):
        r = await call(gw, chat(model))
        assert r.status == status, (model, r.body)
    assert [json.loads(q.body)["model"] for q in mock_upstream.requests if q.method == b"POST"] == ["a/free:free", "a/zero"]


def test_check_summary_shows_groups_free_only_and_ttl() -> None:
    from rawgw.config_commands import summarize

    doc = {"providers": {**PROVIDERS, "free": {"type": "openrouter", "keys": ["sk-or-" + "x" * 16], "free_only": True}}}
    c = parse_config({**doc, "groups": {"openai": ["openai", "openai_2"]}, "models": {"cache_ttl_s": 60}}, {})
    text = "\n".join(summarize(c))
    assert "/openai/... -> openai, openai_2 (by priority, with failover)" in text
    assert "free_only: free models only" in text and "model lists: cached 60 s per provider" in text
