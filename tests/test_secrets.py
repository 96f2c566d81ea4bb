"""No key value ever leaves the gateway (issue 4.1, SPEC 4): one session through errors,
failover, disabled keys, a proxy with credentials, chat logs, the observability endpoints,
a reload and `rawgw check`, then every byte the gateway wrote — to clients, to files under
its logs dir, to stdout/stderr — is searched for the secrets used."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, StartGateway, chat_request, free_port, raw_connection
from mock_upstream import Json, MockUpstream, Sse
from ops_helpers import chat_body, completion, jsonl_records, wait_until

OR_1 = "sk-or-v1-SECRETPROVIDERKEY0001"
OR_2 = "sk-or-v1-SECRETPROVIDERKEY0002"
OA_1 = "sk-SECRETPROVIDERKEY0003-openai"
OA_2 = "sk-proj-SECRETPROVIDERKEY0004"
ANT = "sk-ant-api03-SECRETPROVIDERKEY0005"
PX = "sk-SECRETPROVIDERKEY0006-proxy"
DEAD = "sk-SECRETPROVIDERKEY0007-dead"
GW = "gw-SECRETGATEWAYKEY-77"
GW_ANT = "gw-SECRETGATEWAYKEY-88"
GW_SLOW = "gw-SECRETGATEWAYKEY-55"
WRONG = "gw-SECRETWRONGKEY-99"
PROXY_PASS = "SECRETPROXYPASS9"

SECRETS = [OR_1, OR_2, OA_1, OA_2, ANT, PX, DEAD, GW, GW_ANT, GW_SLOW, WRONG, PROXY_PASS]
# any part of a key long enough to matter, and encodings a header would carry
FRAGMENTS = ["SECRETPROVIDERKEY", "SECRETGATEWAYKEY", "SECRETWRONGKEY", "SECRETPROXYPASS"]
ENCODED = [base64.b64encode(f"user:{PROXY_PASS}".encode()).decode()]


def find_leaks(where: str, data: bytes) -> list[str]:
    text = data.decode("latin-1")
    return [f"{where}: {s!r}" for s in SECRETS + FRAGMENTS + ENCODED if s in text]


async def test_no_secret_in_any_output(start_gateway: StartGateway, tmp_path: Path) -> None:
    ups = [await MockUpstream.start() for _ in range(4)]
    or_up, oa_up, ant_up, proxy = ups
    try:
        await _session(start_gateway, tmp_path, or_up, oa_up, ant_up, proxy)
    finally:
        for m in ups:
            await m.close()


async def _session(
    start_gateway: StartGateway, tmp_path: Path, or_up: MockUpstream, oa_up: MockUpstream, ant_up: MockUpstream, proxy: MockUpstream
) -> None:
    proxy.default = Json(status=407, body=b"", headers=[("Proxy-Authenticate", 'Basic realm="p"')])
    cfg = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "keys": [
            {"key": GW, "name": "main"},
            {"key": GW_ANT, "name": "team-claude", "providers": ["ant"], "models": ["claude-*"]},
            {"key": GW_SLOW, "name": "slow", "rate_limit_rpm": 1, "rate_limit_burst": 1},
        ],
        "providers": {
            "or": {
                "type": "openrouter",
                "base_url": or_up.url("/api/v1"),
                "keys": [OR_1, OR_2],
                "key_strategy": "first",
                "models": ["or/*"],
            },
            "oa": {
                "type": "openai",
                "base_url": oa_up.url("/v1"),
                "keys": [OA_1, OA_2],
                "key_strategy": "first",
                "models": ["oa/*"],
                "priority": 2,
            },
            "ant": {"type": "anthropic", "base_url": ant_up.url(""), "keys": [ANT], "models": ["claude-*"]},
            "px": {
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "keys": [PX],
                "models": ["px/*"],
                "proxy": f"http://user:{PROXY_PASS}@127.0.0.1:{proxy.port}",
            },
            "dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "keys": [DEAD], "models": ["dead/*"]},
        },
        "routes": [
            {"match": "gpt-4*", "model": "or/deepseek", "providers": ["or", "oa"], "provider_order": ["DeepInfra"]},
            {"match": "oa-only", "model": "oa/x", "providers": ["oa"]},
        ],
        "logging": {"dir": "logs", "chat": True},
        "metrics": {"enabled": True},
    }
    gw = await start_gateway(cfg, args=("--log-level", "debug"))
    received: list[tuple[str, bytes]] = []

    async def send(label: str, data: bytes, method: str = "POST") -> int:
        async with await raw_connection(gw.port) as c:
            await c.send(data)
            r = await c.read_response(5, request_method=method)
            received.append((label, bytes(c.received)))
            return r.status

    def req(
        body: bytes | None = None,
        *,
        key: str | None = GW,
        path: str = "/v1/chat/completions",
        method: str = "POST",
        auth: str = "bearer",
        headers: list[tuple[str, str]] | None = None,
    ) -> bytes:
        return chat_request(body, path=path, method=method, key=key, auth=auth, headers=headers or [])

    statuses = {}
    # gateway-made errors
    statuses["no key"] = await send("no key", req(chat_body("gpt-4o"), key=None))
    statuses["wrong bearer"] = await send("wrong bearer", req(chat_body("gpt-4o"), key=WRONG))
    statuses["wrong x-api-key"] = await send("wrong x-api-key", req(chat_body("gpt-4o"), key=WRONG, auth="x-api-key"))
    statuses["unknown path"] = await send("unknown path", req(b"", path="/nope", method="GET"), "GET")
    statuses["bad json"] = await send("bad json", req(b'{"model":'))
    statuses["no provider"] = await send("no provider", req(chat_body("nobody/serves-this")))
    statuses["pinned key, other model"] = await send("pinned", req(chat_body("gpt-4o"), key=GW_ANT))
    statuses["rate ok"] = await send("rate ok", req(chat_body("gpt-4o"), key=GW_SLOW))
    statuses["rate limited"] = await send("rate limited", req(chat_body("gpt-4o"), key=GW_SLOW))
    # failover: OR key 1 → 429, OR key 2 → 500, then oa key 1 answers
    or_up.enqueue(Json(status=429, body=b'{"error":"rl"}', headers=[("Retry-After", "60")]), Json(status=500, body=b'{"error":"x"}'))
    oa_up.enqueue(Json(body=completion("failover answer", prompt=3, completion_tokens=4)))
    statuses["failover"] = await send("failover", req(chat_body("gpt-4o")))
    # upstream 401 then 403: both oa keys disabled, the last answer goes back
    oa_up.enqueue(Json(status=401, body=b'{"error":"invalid key"}'), Json(status=403, body=b'{"error":"forbidden"}'))
    statuses["oa 401/403"] = await send("oa 401/403", req(chat_body("oa-only")))
    statuses["oa all disabled"] = await send("oa all disabled", req(chat_body("oa-only")))
    # a stream through the anthropic provider, pinned key via x-api-key, chat log on
    ant_up.enqueue(
        Sse(
            pieces=[
                b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}\n\n',
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n',
                b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":2}}\n\n',
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
            ]
        )
    )
    ant_body = b'{"model":"claude-x","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"x"}]}'
    statuses["anthropic stream"] = await send("ant stream", req(ant_body, key=GW_ANT, auth="x-api-key", path="/v1/messages"))
    statuses["provider path"] = await send(
        "provider path",
        req(b'{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"x"}]}', key=GW_ANT, path="/ant/v1/messages"),
    )
    statuses["proxy refused"] = await send("proxy", req(chat_body("px/m")))
    statuses["dead"] = await send("dead", req(chat_body("dead/m")))
    statuses["both headers"] = await send(
        "both headers", req(chat_body("or/m"), headers=[("x-api-key", WRONG), ("Proxy-Authorization", f"Bearer {GW}")])
    )
    for path in ("/v1/models", "/metrics", "/metrics.json", "/health/providers", "/dashboard", "/", "/health"):
        statuses[path] = await send(path, req(b"", path=path, method="GET"), "GET")

    assert statuses == {
        "no key": 401,
        "wrong bearer": 401,
        "wrong x-api-key": 401,
        "unknown path": 404,
        "bad json": 400,
        "no provider": 404,
        "pinned key, other model": 403,
        "rate ok": 200,
        "rate limited": 429,
        "failover": 200,
        "oa 401/403": 403,
        "oa all disabled": statuses["oa all disabled"],  # checked below
        "anthropic stream": 200,
        "provider path": 200,
        "proxy refused": 502,
        "dead": 502,
        "both headers": 200,
        "/v1/models": 200,
        "/metrics": 200,
        "/metrics.json": 200,
        "/health/providers": 200,
        "/dashboard": 200,
        "/": 200,
        "/health": 200,
    }, statuses
    assert statuses["oa all disabled"] in (502, 503), statuses  # every key disabled: nothing to try
    # the secrets really were in play (else this test proves nothing)
    assert any(q.header("authorization") == f"Bearer {OR_1}".encode() for q in or_up.requests)
    assert any(q.header("authorization") == f"Bearer {OA_2}".encode() for q in oa_up.requests)
    assert any(q.header("x-api-key") == ANT.encode() for q in ant_up.requests)
    assert any(q.header("proxy-authorization") == f"Basic {ENCODED[0]}".encode() for q in proxy.requests)

    # a reload, then stop; the logs and the chat logs have been written
    gw.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.3)
    await jsonl_records(gw.logs_dir / "access.jsonl", lambda rs: len(rs) >= len(statuses))
    await jsonl_records(gw.logs_dir / "errors.jsonl", lambda rs: len(rs) >= 5)
    await wait_until(lambda: len(list((gw.logs_dir / "chat").glob("*.json"))) >= 3, what="chat logs")
    assert await gw.stop() == 0

    check = subprocess.run(
        [sys.executable, "-m", "rawgw", "check", "-c", str(gw.config_path)],
        capture_output=True,
        timeout=20,
        cwd=gw.cwd,
        env={**os.environ, "PYTHONPATH": os.environ.get("RAWGW_TEST_SRC") or str(REPO_ROOT)},
    )
    assert check.returncode == 0, check.stdout + check.stderr

    leaks: list[str] = []
    for label, data in received:
        leaks += find_leaks(f"response to {label}", data)
    files = [p for p in gw.logs_dir.rglob("*") if p.is_file()]
    assert len(files) >= 5, files
    for p in files:
        leaks += find_leaks(str(p.relative_to(gw.cwd)), p.read_bytes())
    leaks += find_leaks("stdout", gw.stdout_text().encode())
    leaks += find_leaks("stderr", gw.stderr_text().encode())
    leaks += find_leaks("rawgw check stdout", check.stdout)
    leaks += find_leaks("rawgw check stderr", check.stderr)
    assert leaks == []
    # the masked forms are what is shown instead
    health = dict(received)["/health/providers"]
    assert "sk-or-…0001".encode() in health and "sk-proj-…0004".encode() in health, health
    assert "sk-or-…0001".encode() in check.stdout, check.stdout
