"""Route extension `provider_models`: a failover provider gets its own name for the model."""

from __future__ import annotations

from conftest import GW_KEY, StartGateway, chat_request, raw_connection
from mock_upstream import Json, MockUpstream


async def test_failover_provider_gets_its_own_model_name(start_gateway: StartGateway) -> None:
    async with await MockUpstream.start() as openrouter, await MockUpstream.start() as deepseek:
        cfg = {
            "server": {"host": "127.0.0.1", "port": 0},
            "keys": [{"key": GW_KEY, "name": "t"}],
            "providers": {
                "openrouter": {"type": "openrouter", "base_url": openrouter.url("/api/v1"), "keys": ["sk-or-v1-aaaa1111"]},
                "deepseek": {"type": "openai", "base_url": deepseek.url("/v1"), "keys": ["sk-ds-bbbb2222"]},
            },
            "routes": [
                {
                    "match": "gpt-4*",
                    "model": "deepseek/deepseek-chat-v3-0324",
                    "providers": ["openrouter", "deepseek"],
                    "provider_order": ["DeepInfra"],
                    "provider_models": {"deepseek": "deepseek-chat"},
                }
            ],
        }
        gw = await start_gateway(cfg)
        openrouter.enqueue(Json(status=503, body={"error": "busy"}))
        deepseek.enqueue(Json(body={"ok": 1}))
        body = b'{"model": "gpt-4o", "messages":[{"role":"user","content":"hi"}], "temperature":0.5}'
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(body))
        assert r.status == 200 and r.header("x-rawgw-provider") == "deepseek"
        (or_req,) = openrouter.requests
        (ds_req,) = deepseek.requests
        assert or_req.body == (
            b'{"model": "deepseek/deepseek-chat-v3-0324", "messages":[{"role":"user","content":"hi"}], "temperature":0.5,'
            b'"provider":{"order":["DeepInfra"]}}'
        )
        assert ds_req.body == b'{"model": "deepseek-chat", "messages":[{"role":"user","content":"hi"}], "temperature":0.5}'


async def test_provider_models_unknown_provider_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rawgw.config import ConfigError, parse_config

    data = {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["sk-x"]}},
        "routes": [{"match": "a", "provider_models": {"q": "m"}}],
    }
    try:
        parse_config(data, env={})
    except ConfigError as exc:
        assert any(e.startswith("routes[0].provider_models.q: unknown provider 'q'") for e in exc.errors), exc.errors
    else:
        raise AssertionError("expected a ConfigError")
