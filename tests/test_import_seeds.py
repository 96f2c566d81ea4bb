"""`rawgw import` of each seed gateway's own config, then that seed's own curl example,
end to end (issue 13.9, issue 10.7): the import runs as its user would run it (a
subprocess in a fresh directory), the generated gateway.toml is served by a real gateway
subprocess with the exported variables set, the seed's curl line (only the host changed)
goes through real curl, and the mock upstream shows what the provider would have seen.

The seeds' READMEs are in shared/seeds/ (their config files and curl lines are quoted
from there). Upstream base URLs are the one thing changed: they point at loopback mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Gateway, StartGateway, to_toml
from mock_upstream import Json, MockUpstream, RecordedRequest, Stall
from routing_helpers import ups_fixture  # noqa: F401  (the `ups` fixture: three mocks)
from test_socks import PASSWORD, PASSWORD_URL, USER, SocksServer, pproxy_auth  # noqa: F401  (fixture)

# --------------------------------------------------------------------------- helpers


def run_import(cwd: Path, *files: str) -> tuple[str, dict[str, Any], str]:
    """``rawgw import FILES -o gateway.toml`` in ``cwd``: (TOML text, parsed, stdout)."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.environ.get("RAWGW_TEST_SRC") or str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "rawgw", "import", *files, "-o", "gateway.toml"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    text = (cwd / "gateway.toml").read_text()
    return text, tomllib.loads(text), proc.stdout


def exported(stdout: str) -> set[str]:
    return set(re.findall(r"^  export (\w+)=", stdout, re.M))


def point_at(doc: dict[str, Any], urls: dict[str, str]) -> str:
    """The generated config with each named provider's base_url on a loopback mock and the
    port left to the test launcher (``--port 0``); everything else as imported."""
    for name, url in urls.items():
        doc["providers"][name]["base_url"] = url
    doc.setdefault("server", {}).pop("port", None)
    doc["server"]["host"] = "127.0.0.1"
    return to_toml(doc)


async def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Real curl: status, headers (last value wins, names lowercased) and body."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--max-time", "15", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def bearer(req: RecordedRequest) -> str | None:
    v = req.header("authorization")
    return None if v is None else v.decode().removeprefix("Bearer ")


def no_secret_in(gw: Gateway, *secrets: str) -> None:
    texts = [gw.stderr_text(), gw.stdout_text()]
    if gw.logs_dir.exists():
        texts += [p.read_text(errors="replace") for p in gw.logs_dir.rglob("*") if p.is_file()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


MODELS_LIST = {
    "object": "list",
    "data": [
        {"id": "deepseek/deepseek-chat-v3-0324:free", "object": "model", "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "deepseek/deepseek-chat-v3-0324", "object": "model", "pricing": {"prompt": "0.0000003", "completion": "0.00000088"}},
        {"id": "openrouter/promo-model", "object": "model", "pricing": {"prompt": "0", "completion": "0", "request": "0"}},
    ],
}


def answer_models(req: RecordedRequest) -> Json:
    if req.method == b"GET" and req.path.endswith("/models"):
        return Json(body=MODELS_LIST)
    return Json(body={"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "seen": req.path})


# --------------------------------------------------------------------------- 000: the FastAPI OpenRouter gateway

FASTAPI_GW_KEY = "fastapi-gw-key-0123456789abcd"
FASTAPI_TARGET_KEY = "sk-or-v1-target-0123456789abcdef"
PROVIDER_MAPPING = [
    {"model": "deepseek/deepseek-chat-v3-0324", "providers": ["DeepInfra", "Parasail", "Hyperbolic"]},
    {"model": "deepseek/deepseek-chat-v3-0324:free", "providers": ["Chutes", "Targon"]},
]


async def test_fastapi_gateway_env_and_mapping(start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """The .env (TARGET_SERVER_URL on another host than openrouter.ai: issue 10.7) and the
    mapping JSON: the mapped models go to the .env's target with provider.order injected,
    not to a second OpenRouter provider."""
    (tmp_path / ".env").write_text(
        "# Target OpenAI-compatible server URL\n"
        f"TARGET_SERVER_URL={mock_upstream.url('/api/v1')}\n"
        f"TARGET_API_KEY={FASTAPI_TARGET_KEY}\n"
        f"GATEWAY_API_KEY={FASTAPI_GW_KEY}\n"
        "LOG_FILE_LIMIT=10\nPROVIDER_INJECTION_ENABLED=true\nLOG_CHAT_ENABLED=false\n"
    )
    (tmp_path / "openrouter_provider_mapping.json").write_text(json.dumps(PROVIDER_MAPPING, indent=4))
    text, doc, stdout = run_import(tmp_path, ".env", "openrouter_provider_mapping.json")
    assert list(doc["providers"]) == ["upstream"]  # one provider: the .env's target
    assert {tuple(r["providers"]) for r in doc["routes"]} == {("upstream",)}
    assert exported(stdout) == {"RAWGW_UPSTREAM_KEY_1", "GATEWAY_API_KEY"}
    gw = await start_gateway(text, env={"RAWGW_UPSTREAM_KEY_1": FASTAPI_TARGET_KEY, "GATEWAY_API_KEY": FASTAPI_GW_KEY})
    mock_upstream.handler = answer_models

    body = '{"model": "deepseek/deepseek-chat-v3-0324", "messages": [{"role": "user", "content": "Hi"}]}'
    status, headers, _ = await curl(
        "-X", "POST", f"{gw.url}/v1/chat/completions",
        "-H", f"Authorization: Bearer {FASTAPI_GW_KEY}", "-H", "Content-Type: application/json", "-d", body,
    )  # fmt: skip
    assert status == 200 and headers["x-rawgw-provider"] == "upstream"
    req = mock_upstream.requests[-1]
    assert req.path == "/api/v1/chat/completions"
    assert bearer(req) == FASTAPI_TARGET_KEY
    assert req.json()["provider"] == {"order": ["DeepInfra", "Parasail", "Hyperbolic"]}
    # a model the mapping does not name still reaches the target, unchanged
    other = '{"model":"qwen/qwen3-coder","messages":[{"role":"user","content":"Hi"}]}'
    status, _, _ = await curl(
        "-X", "POST", f"{gw.url}/v1/chat/completions", "-H", f"Authorization: Bearer {FASTAPI_GW_KEY}",
        "-H", "Content-Type: application/json", "-d", other,
    )  # fmt: skip
    assert status == 200 and mock_upstream.requests[-1].body == other.encode()
    status, _, listing = await curl(f"{gw.url}/v1/models", "-H", f"Authorization: Bearer {FASTAPI_GW_KEY}")
    assert status == 200 and "deepseek/deepseek-chat-v3-0324" in {m["id"] for m in json.loads(listing)["data"]}
    no_secret_in(gw, FASTAPI_TARGET_KEY, FASTAPI_GW_KEY)


# --------------------------------------------------------------------------- 001: the Go virtual-key router

GO_KEYS = {
    "virtual_keys": {
        "vk_user1_openai": {"provider": "openai", "api_key": "sk-real-openai-key-123"},
        "vk_user2_anthropic": {"provider": "anthropic", "api_key": "sk-ant-real-anthropic-key-456"},
        "vk_user3_deepseek": {"provider": "deepseek", "api_key": "sk-deepseek-key-abc123"},
    }
}
GO_ENV = {
    "RAWGW_OPENAI_KEY": "sk-real-openai-key-123",
    "RAWGW_ANTHROPIC_KEY": "sk-ant-real-anthropic-key-456",
    "RAWGW_DEEPSEEK_KEY": "sk-deepseek-key-abc123",
    "RAWGW_GATEWAY_KEY_OPENAI_1": "vk_user1_openai",
    "RAWGW_GATEWAY_KEY_ANTHROPIC_1": "vk_user2_anthropic",
    "RAWGW_GATEWAY_KEY_DEEPSEEK_1": "vk_user3_deepseek",
}


async def go_router_gateway(start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: Path) -> tuple[Gateway, str]:
    (tmp_path / "keys.json").write_text(json.dumps(GO_KEYS, indent=2))
    text, doc, stdout = run_import(tmp_path, "keys.json")
    assert exported(stdout) == set(GO_ENV)
    # virtual keys are credentials: never a name, never in the file
    for vk in GO_KEYS["virtual_keys"]:
        assert vk not in text and vk not in stdout
    assert [k["name"] for k in doc["keys"]] == ["openai_1", "anthropic_1", "deepseek_1"]
    assert "gateway key anthropic_1 = virtual key" in stdout
    openai, anthropic, deepseek = ups
    config = point_at(doc, {"openai": openai.url("/v1"), "anthropic": anthropic.origin, "deepseek": deepseek.url("/v1")})
    return await start_gateway(config, env=GO_ENV), config


async def test_go_router_keys_json_openai_and_deepseek(start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: Path) -> None:
    gw, _ = await go_router_gateway(start_gateway, ups, tmp_path)
    openai, anthropic, deepseek = ups
    # the README's "OpenAI Request" and "DeepSeek Request", host changed
    for vk, model, mock, key in (
        ("vk_user1_openai", "gpt-4", openai, "sk-real-openai-key-123"),
        ("vk_user3_deepseek", "deepseek-chat", deepseek, "sk-deepseek-key-abc123"),
    ):
        status, _, _ = await curl(
            "-X", "POST", f"{gw.url}/chat/completions",
            "-H", f"Authorization: Bearer {vk}", "-H", "Content-Type: application/json",
            "-d", f'{{\n    "model": "{model}",\n    "messages": [{{"role": "user", "content": "Hello!"}}]\n  }}',
        )  # fmt: skip
        assert status == 200, vk
        req = mock.requests[-1]
        assert req.path == "/v1/chat/completions" and bearer(req) == key and req.json()["model"] == model
    assert anthropic.requests == []
    # a pinned key cannot reach another provider, and the 403 names the key, not its value
    status, _, body = await curl(
        "-X", "POST", f"{gw.url}/deepseek/chat/completions", "-H", "Authorization: Bearer vk_user1_openai",
        "-d", '{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}]}',
    )  # fmt: skip
    assert status == 403 and b"openai_1" in body and b"vk_user1_openai" not in body
    no_secret_in(gw, *GO_ENV.values())


async def test_go_router_keys_json_anthropic_on_chat_completions(
    start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: Path
) -> None:
    gw, _ = await go_router_gateway(start_gateway, ups, tmp_path)
    _, anthropic, _ = ups
    status, _, _ = await curl(
        "-X", "POST", f"{gw.url}/chat/completions",
        "-H", "Authorization: Bearer vk_user2_anthropic", "-H", "Content-Type: application/json",
        "-d", '{\n    "model": "claude-3-5-sonnet-20241022",\n    "messages": [{"role": "user", "content": "Hello!"}],\n'
        '    "max_tokens": 1024\n  }',
    )  # fmt: skip
    assert status == 200
    req = anthropic.requests[-1]
    assert req.path == "/v1/chat/completions" and req.header("x-api-key") == b"sk-ant-real-anthropic-key-456"


# --------------------------------------------------------------------------- 002: the Node OpenAI gateway

NODE_OR_KEY = "sk-or-v1-node-0123456789abcdef0123"
NODE_GEMINI_KEY = "AIzaSyNode-0123456789abcdefghijkl"


async def test_node_gateway_env(start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: Path) -> None:
    """The README's .env (keys filled in) and its curl lines: gpt-4 reaches OpenRouter as
    the model the Node gateway mapped it to; /v1/models-by-provider groups the lists; a
    path of that gateway alone (/v1/emulate) is a 404, not forwarded."""
    (tmp_path / ".env").write_text(
        "# Server\nPORT=8787                              # Gateway port\nDEBUG=false\n\n"
        f"OPENROUTER_API_KEY={NODE_OR_KEY}      # For OpenRouter models\n"
        f"GEMINI_API_KEY={NODE_GEMINI_KEY}          # For Google Gemini models\n\n"
        "# Performance\nCACHE_TTL=300000                       # Cache TTL in ms (5 min default)\n"
        "MAX_RETRIES=3                          # Retry failed requests\n"
        "RETRY_DELAY=1000                       # Delay between retries (ms)\n\n"
        "# Rate Limiting\nRATE_LIMIT_WINDOW=60000                # 1 minute window\n"
        "RATE_LIMIT_MAX_REQUESTS=100            # Requests per window\n"
    )
    _, doc, stdout = run_import(tmp_path, ".env")
    assert doc["server"] == {"port": 8787}
    assert doc["cache"] == {"enabled": True, "ttl_s": 300.0}
    assert doc["providers"]["openrouter"]["max_retries"] == 3 and doc["providers"]["openrouter"]["retry_backoff_s"] == 1.0
    assert "rate_limit_rpm = 100" in stdout  # told how, since the Node gateway had no gateway keys
    openrouter, gemini, _ = ups
    openrouter.handler = answer_models
    gemini.default = Json(body={"object": "list", "data": [{"id": "gemini-2.0-flash-exp", "object": "model"}]})
    config = point_at(doc, {"openrouter": openrouter.url("/api/v1"), "gemini": gemini.url("/v1beta/openai")})
    gw = await start_gateway(config, env={"RAWGW_OPENROUTER_KEY_1": NODE_OR_KEY, "RAWGW_GEMINI_KEY_1": NODE_GEMINI_KEY})

    status, headers, _ = await curl(
        "-X", "POST", f"{gw.url}/v1/chat/completions", "-H", "Content-Type: application/json",
        "-d", '{\n    "model": "gpt-4",\n    "messages": [{"role": "user", "content": "Hello!"}]\n  }',
    )  # fmt: skip
    assert status == 200 and headers["x-rawgw-provider"] == "openrouter"
    req = openrouter.requests[-1]
    assert req.path == "/api/v1/chat/completions" and bearer(req) == NODE_OR_KEY
    assert req.json()["model"] == "deepseek/deepseek-r1-0528:free"
    status, _, _ = await curl(
        "-X", "POST", f"{gw.url}/v1/chat/completions", "-H", "Content-Type: application/json",
        "-d", '{"model": "gpt-4-code", "messages": [{"role": "system", "content": "You are a Python expert"},'
        ' {"role": "user", "content": "Write a quicksort function"}], "temperature": 0.7, "max_tokens": 500}',
    )  # fmt: skip
    assert status == 200 and openrouter.requests[-1].json()["model"] == "qwen/qwen3-coder:free"
    status, _, body = await curl(f"{gw.url}/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = await curl(f"{gw.url}/v1/models")
    ids = {m["id"] for m in json.loads(body)["data"]}
    assert {"gpt-4", "gpt-4o", "deepseek/deepseek-chat-v3-0324:free", "gemini-2.0-flash-exp"} <= ids
    status, _, body = await curl(f"{gw.url}/v1/models-by-provider")
    grouped = json.loads(body)
    assert status == 200 and list(grouped) == ["gemini", "openrouter"]
    assert [m["id"] for m in grouped["gemini"]["models"]] == ["gemini-2.0-flash-exp"]
    assert "deepseek/deepseek-chat-v3-0324" in {m["id"] for m in grouped["openrouter"]["models"]}
    seen = len(openrouter.requests) + len(gemini.requests)
    status, _, body = await curl(f"{gw.url}/v1/emulate")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_path"
    assert len(openrouter.requests) + len(gemini.requests) == seen  # not forwarded
    no_secret_in(gw, NODE_OR_KEY, NODE_GEMINI_KEY)


# --------------------------------------------------------------------------- 003: the key-rotating OpenRouter proxy

PROXY_ACCESS_KEY = "your_local_access_key_here"
PROXY_KEYS = ["sk-or-v1-first-0123456789abcdef", "sk-or-v1-second-0123456789abcdef", "sk-or-v1-third-0123456789abcdef"]


def rotating_proxy_yaml(base_url: str, *, free_only: bool = False, proxy_url: str = "", cooldown: int = 14400) -> str:
    keys = "\n".join(f'    - "{k}"' for k in PROXY_KEYS)
    return f"""# Server settings
server:
  host: "0.0.0.0" # Interface to bind to
  port: 5555 # Port to listen on
  access_key: "{PROXY_ACCESS_KEY}" # Authentication key
  log_level: "INFO" # Logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)
  http_log_level: "INFO" # HTTP access logs level (DEBUG, INFO, WARNING, ERROR, CRITICAL)

# OpenRouter API settings
openrouter:
  keys:
{keys}

  # Cache settings for free models endpoint
  enable_cache: true # Enable response caching
  cache_ttl: 300 # Cache lifetime in seconds (5 minutes)

  base_url: "{base_url}" # OpenRouter API endpoint
  public_endpoints: ["/api/v1/models"] # No auth required

  # Key selection strategy: "round-robin" (default), "first" or "random".
  key_selection_strategy: "round-robin"
  # Options: ["same"] to prefer last used key
  key_selection_opts: []

  # When keys get rate limited
  rate_limit_cooldown: {cooldown} # 4 hours
  free_only: {"true" if free_only else "false"} # Only show free models
  google_rate_delay: 0 # Delay for Google API issues

# Outgoing proxy configuration
requestProxy:
  enabled: {"true" if proxy_url else "false"} # Enable to use proxy
  url: "{proxy_url or "socks5://user:pass@proxy.com:1080"}" # Proxy URL with credentials
"""


def proxy_env(stdout: str) -> dict[str, str]:
    env = {"GATEWAY_API_KEY": PROXY_ACCESS_KEY}
    env.update({f"RAWGW_OPENROUTER_KEY_{i}": k for i, k in enumerate(PROXY_KEYS, 1)})
    return env


async def test_rotating_proxy_config_yml(start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "config.yml").write_text(rotating_proxy_yaml(mock_upstream.url("/api/v1")))
    _, doc, stdout = run_import(tmp_path, "config.yml")
    assert doc["server"] == {"host": "0.0.0.0", "port": 5555, "public_paths": ["/health", "/api/v1/models"]}
    assert doc["models"] == {"cache_ttl_s": 300}
    p = doc["providers"]["openrouter"]
    assert (p["key_strategy"], p["cooldown_s"], p["free_only"]) == ("round-robin", 14400, False)
    assert "proxy" not in p  # requestProxy.enabled: false
    env = proxy_env(stdout)
    assert exported(stdout) == set(env)
    gw = await start_gateway(point_at(doc, {}), env=env)
    mock_upstream.handler = answer_models
    seen_keys = []
    for _ in range(3):
        status, _, _ = await curl(
            "-X", "POST", f"{gw.url}/api/v1/chat/completions", "-H", f"Authorization: Bearer {PROXY_ACCESS_KEY}",
            "-H", "Content-Type: application/json", "-d", '{"model":"deepseek/deepseek-chat-v3-0324:free","messages":[{"role":"user","content":"hi"}]}',
        )  # fmt: skip
        assert status == 200
        req = mock_upstream.requests[-1]
        assert req.path == "/api/v1/chat/completions"
        seen_keys.append(bearer(req))
    assert seen_keys == PROXY_KEYS  # round-robin over the pool
    status, _, body = await curl(f"{gw.url}/api/v1/models")  # public: no key
    assert status == 200 and len(json.loads(body)["data"]) == 3
    status, _, _ = await curl("-X", "POST", f"{gw.url}/api/v1/chat/completions", "-d", "{}")
    assert status == 401  # everything else needs the access key
    no_secret_in(gw, PROXY_ACCESS_KEY, *PROXY_KEYS)


async def test_rotating_proxy_free_only(start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """free_only: true lists only free models (:free ids or zero pricing) and refuses the
    others with a 403 naming the setting, before any upstream request."""
    pytest.importorskip("yaml")
    (tmp_path / "config.yml").write_text(rotating_proxy_yaml(mock_upstream.url("/api/v1"), free_only=True))
    _, doc, stdout = run_import(tmp_path, "config.yml")
    assert doc["providers"]["openrouter"]["free_only"] is True
    gw = await start_gateway(point_at(doc, {}), env=proxy_env(stdout))
    mock_upstream.handler = answer_models
    status, _, body = await curl(f"{gw.url}/api/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["deepseek/deepseek-chat-v3-0324:free", "openrouter/promo-model"]
    auth = ["-H", f"Authorization: Bearer {PROXY_ACCESS_KEY}", "-H", "Content-Type: application/json"]
    before = len(mock_upstream.requests)
    status, _, body = await curl(
        "-X", "POST", f"{gw.url}/api/v1/chat/completions", *auth,
        "-d", '{"model":"deepseek/deepseek-chat-v3-0324","messages":[{"role":"user","content":"hi"}]}',
    )  # fmt: skip
    err = json.loads(body)["error"]
    assert status == 403 and err["code"] == "model_not_free" and "free_only" in err["message"]
    assert len(mock_upstream.requests) == before
    for model in ("deepseek/deepseek-chat-v3-0324:free", "openrouter/promo-model"):  # :free, and zero-priced
        status, _, _ = await curl(
            "-X", "POST", f"{gw.url}/api/v1/chat/completions", *auth,
            "-d", json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )  # fmt: skip
        assert status == 200, model
        assert mock_upstream.requests[-1].json()["model"] == model
    # the provider's own path is checked too
    status, _, body = await curl(
        "-X", "POST", f"{gw.url}/openrouter/chat/completions", *auth,
        "-d", '{"model":"deepseek/deepseek-chat-v3-0324","messages":[{"role":"user","content":"hi"}]}',
    )  # fmt: skip
    assert status == 403 and json.loads(body)["error"]["code"] == "model_not_free"


async def test_rotating_proxy_request_proxy_socks5(
    start_gateway: StartGateway,
    mock_upstream: MockUpstream,
    pproxy_auth: SocksServer,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """requestProxy (enabled, with credentials): every upstream request goes through the
    SOCKS5 server; its password stays out of the file and the output."""
    pytest.importorskip("yaml")
    proxy_url = f"socks5h://{USER}:{PASSWORD_URL}@127.0.0.1:{pproxy_auth.port}"
    base = f"http://localhost:{mock_upstream.port}/api/v1"
    (tmp_path / "config.yml").write_text(rotating_proxy_yaml(base, proxy_url=proxy_url))
    text, doc, stdout = run_import(tmp_path, "config.yml")
    assert doc["providers"]["openrouter"]["proxy"] == "env:RAWGW_OPENROUTER_PROXY"
    assert PASSWORD_URL not in text and PASSWORD_URL not in stdout
    env = proxy_env(stdout) | {"RAWGW_OPENROUTER_PROXY": proxy_url}
    gw = await start_gateway(point_at(doc, {}), env=env)
    status, _, _ = await curl(
        "-X", "POST", f"{gw.url}/api/v1/chat/completions", "-H", f"Authorization: Bearer {PROXY_ACCESS_KEY}",
        "-H", "Content-Type: application/json",
        "-d", '{"model":"deepseek/deepseek-chat-v3-0324:free","messages":[{"role":"user","content":"hi"}]}',
    )  # fmt: skip
    assert status == 200
    assert mock_upstream.requests[-1].path == "/api/v1/chat/completions"
    await pproxy_auth.wait_line(f"-> localhost:{mock_upstream.port}")
    no_secret_in(gw, PASSWORD, PASSWORD_URL, *PROXY_KEYS)


# --------------------------------------------------------------------------- 004: the priority-fallback router

ROUTER_KEYS = {
    "RAWGW_OPENAI_KEY_1": "sk-your-primary-openai-api-key-here",
    "RAWGW_OPENAI_2_KEY_1": "sk-your-backup-openai-api-key-here",
    "RAWGW_ANTHROPIC_KEY_1": "sk-ant-your-primary-anthropic-api-key-here",
    "RAWGW_ANTHROPIC_2_KEY_1": "sk-ant-your-backup-anthropic-api-key-here",
}


def router_config(primary: str, backup: str, primary_ant: str, backup_ant: str) -> dict[str, Any]:
    """The README's llm_router_config.json; base URLs on loopback, the anthropic entries
    with a short timeout and no retries so that the timeout failover is quick to see."""
    return {
        "openai": [
            {"api_key": ROUTER_KEYS["RAWGW_OPENAI_KEY_1"], "priority": 1, "base_url": primary, "timeout": 30, "max_retries": 3},
            {"api_key": ROUTER_KEYS["RAWGW_OPENAI_2_KEY_1"], "priority": 2, "base_url": backup, "timeout": 30, "max_retries": 3},
        ],
        "anthropic": [
            {"api_key": ROUTER_KEYS["RAWGW_ANTHROPIC_KEY_1"], "priority": 1, "base_url": primary_ant, "timeout": 1, "max_retries": 0},
            {"api_key": ROUTER_KEYS["RAWGW_ANTHROPIC_2_KEY_1"], "priority": 2, "base_url": backup_ant, "timeout": 30, "max_retries": 0},
        ],
    }


async def test_priority_router_named_paths_keep_failover(start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: Path) -> None:
    primary, backup, anthropic = ups
    async with await MockUpstream.start() as anthropic_backup:
        cfg = router_config(primary.url("/v1"), backup.url("/v1"), anthropic.origin, anthropic_backup.origin)
        (tmp_path / "llm_router_config.json").write_text(json.dumps(cfg, indent=2))
        text, doc, stdout = run_import(tmp_path, "llm_router_config.json")
        assert doc["groups"] == {"openai": ["openai", "openai_2"], "anthropic": ["anthropic", "anthropic_2"]}
        assert exported(stdout) == set(ROUTER_KEYS)
        gw = await start_gateway(text, env=ROUTER_KEYS)

        # /openai/chat/completions: the priority-1 entry answers 500 -> the backup answers
        primary.handler = lambda req: Json(status=500, body={"error": {"message": "boom"}})
        backup.default = Json(body={"id": "chatcmpl-backup", "object": "chat.completion", "choices": []})
        status, headers, body = await curl(
            "-X", "POST", f"{gw.url}/openai/chat/completions", "-H", "Content-Type: application/json",
            "-d", '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        )  # fmt: skip
        assert status == 200 and json.loads(body)["id"] == "chatcmpl-backup"
        assert headers["x-rawgw-provider"] == "openai_2"
        assert primary.requests and int(headers["x-rawgw-attempts"]) == len(primary.requests) + 1
        (req,) = backup.requests
        assert req.path == "/v1/chat/completions" and bearer(req) == ROUTER_KEYS["RAWGW_OPENAI_2_KEY_1"]

        # /anthropic/chat/completions: never {origin}/chat/completions; the primary times
        # out (timeout: 1) -> the backup answers, at Anthropic's OpenAI-compatible path
        anthropic.handler = lambda req: Stall(5)
        status, headers, _ = await curl(
            "-X", "POST", f"{gw.url}/anthropic/chat/completions", "-H", "Content-Type: application/json",
            "-d", '{"model":"claude-3-5-haiku-latest","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}',
        )  # fmt: skip
        assert status == 200 and headers["x-rawgw-provider"] == "anthropic_2"
        assert [r.path for r in anthropic.requests] == ["/v1/chat/completions"]
        (req,) = anthropic_backup.requests
        assert req.path == "/v1/chat/completions"
        assert req.header("x-api-key") == ROUTER_KEYS["RAWGW_ANTHROPIC_2_KEY_1"].encode()
        assert req.header("authorization") is None
        no_secret_in(gw, *ROUTER_KEYS.values())
