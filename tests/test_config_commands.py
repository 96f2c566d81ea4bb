"""rawgw check / init / import, called as functions (capsys), no subprocess, no sockets."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rawgw.config import ConfigError, load_config, mask_key, parse_config
from rawgw.config_commands import cmd_check, cmd_import, cmd_init, parse_dotenv

OR_KEY_1 = "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"
OR_KEY_2 = "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"
VK_OR_KEY = "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"
VK_ANT_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-qwertyuiopZZZZ"
OAI_KEY = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34"
DS_KEY = "sk-5b9e0c1d2a3f4e5d6c7b8a9f0e1d2c3b"
ANT_KEY = "sk-ant-api03-Zq9xW8vU7tS6rR5qP4oN3mM2lL1kK0jJ-iIhHgGfFeEdDcCbBaA-9z8y7xAA"
GW_SECRET = "gw-7d3c1f0e9b8a6d5c4b3a2f1e0d9c8b7a"
# virtual keys are credentials too: their clients send them as Bearer tokens
VK_TEAM_A = "vk_team_a_openrouter"
VK_TEAM_B = "vk_team_b_openrouter"
VK_CLAUDE = "vk_claude_team_anthropic"
VK_FROM_ENV = "vk_from_env_openai"
ALL_SECRETS = (
    OR_KEY_1, OR_KEY_2, VK_OR_KEY, VK_ANT_KEY, OAI_KEY, DS_KEY, ANT_KEY, GW_SECRET, VK_TEAM_A, VK_TEAM_B, VK_CLAUDE, VK_FROM_ENV,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAWGW_CONFIG", raising=False)


def env_refs(toml_text: str) -> set[str]:
    """The variables a TOML text reads (comment lines aside)."""
    body = "\n".join(line for line in toml_text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', body))


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text


# --------------------------------------------------------------------------- check

VALID = f"""
[server]
host = "0.0.0.0"
port = 9090

[[keys]]
key = "env:GW"
name = "ops"
rate_limit_rpm = 120
rate_limit_burst = 20

[[keys]]
key = "env:TEAM"
name = "team-claude"
providers = ["anthropic"]
models = ["claude-*"]

[providers.openrouter]
type = "openrouter"
keys = ["env:OR1", "env:OR2"]
priority = 1
models = ["*"]

[providers.anthropic]
type = "anthropic"
keys = ["{ANT_KEY}"]

[[routes]]
match = "gpt-4*"
model = "deepseek/deepseek-chat-v3-0324"
providers = ["openrouter"]
provider_order = ["DeepInfra", "Parasail"]
"""


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_check_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_check(None) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "rawgw init" in err and "rawgw demo" in err


def test_check_named_file_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_check("missing.toml") == 2
    err = capsys.readouterr().err
    assert "missing.toml" in err and "rawgw init" in err and "rawgw demo" in err


def test_check_valid_prints_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(VALID)
    path.chmod(0o644)
    set_env(monkeypatch, GW=GW_SECRET, TEAM="gw-team-0123456789abcdef", OR1=OR_KEY_1, OR2=OR_KEY_2)
    assert cmd_check(str(path)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{path}: valid" in out
    assert "server: listening on http://0.0.0.0:9090" in out
    assert "openrouter: type openrouter, https://openrouter.ai/api/v1, priority 1" in out
    assert "keys (2): sk-or-…1c0d, sk-or-…8899" in out
    assert "anthropic: type anthropic, https://api.anthropic.com" in out
    assert "gpt-4* -> deepseek/deepseek-chat-v3-0324; providers openrouter; provider_order DeepInfra, Parasail" in out
    assert f"ops ({mask_key(GW_SECRET)}): providers all; models all; 120 rpm, burst 20" in out
    assert "team-claude (…cdef): providers anthropic; models claude-*; no rate limit" in out
    assert "warnings (2):" in out
    assert "providers.anthropic.keys[0]: literal secret in config file; prefer env:NAME" in out
    assert "config file is readable by others and holds literal secrets" in out
    assert_no_secrets(out)


def test_check_uses_rawgw_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[providers.openrouter]\nkeys = ["env:OR1"]\n')
    set_env(monkeypatch, RAWGW_CONFIG=str(path), OR1=OR_KEY_1)
    assert cmd_check(None) == 0
    out = capsys.readouterr().out
    assert "keys: no gateway keys configured; authentication is off" in out
    assert "gateway keys (0): none, authentication is off" in out


def test_check_invalid_lists_every_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gateway.toml").write_text(
        f"""
        [server]
        max_body_byte = 1
        port = 99999
        [[keys]]
        key = "{GW_SECRET}"
        providers = ["openroutr"]
        [providers.openrouter]
        keys = ["env:OR1", "env:OPENROUTER_KEY_2"]
        """
    )
    set_env(monkeypatch, OR1=OR_KEY_1)
    assert cmd_check(None) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "gateway.toml: invalid (4 errors)"
    assert set(lines[1:]) == {
        "server.max_body_byte: unknown setting (did you mean max_body_bytes?)",
        "server.port: must be an integer between 0 and 65535",
        "keys[0].providers[0]: unknown provider 'openroutr' (did you mean openrouter?)",
        "providers.openrouter.keys[1]: environment variable OPENROUTER_KEY_2 is not set",
    }
    assert_no_secrets(out)


def test_check_toml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gateway.toml").write_text("[server\nport = 1\n")
    assert cmd_check(None) == 1
    assert "gateway.toml: TOML syntax error" in capsys.readouterr().out


# --------------------------------------------------------------------------- init

INIT_ENV = {"OPENROUTER_API_KEY": OR_KEY_1, "GATEWAY_API_KEY": GW_SECRET}


def test_init_writes_a_loadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_init() == 0
    out = capsys.readouterr().out
    text = (tmp_path / "gateway.toml").read_text()
    assert env_refs(text) == {"OPENROUTER_API_KEY", "GATEWAY_API_KEY"}
    assert "export OPENROUTER_API_KEY=" in out and "export GATEWAY_API_KEY=" in out
    cfg = load_config("gateway.toml", INIT_ENV)
    assert cfg.warnings == ()
    assert cfg.providers["openrouter"].type == "openrouter"
    assert cfg.providers["openrouter"].keys == (OR_KEY_1,)
    assert [(k.name, k.key) for k in cfg.keys] == [("default", GW_SECRET)]
    (route,) = cfg.routes
    assert route.match == "gpt-4*" and route.providers == ("openrouter",)
    assert route.model and route.provider_order
    assert cfg.logging.chat_file_limit == 15
    with pytest.raises(ConfigError) as info:
        load_config("gateway.toml", {})
    assert "environment variable OPENROUTER_API_KEY is not set" in "\n".join(info.value.errors)


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("# my config\n")
    assert cmd_init(str(path)) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert path.read_text() == "# my config\n"
    assert cmd_init(str(path), force=True) == 0
    assert load_config(str(path), INIT_ENV).providers


def test_init_unwritable_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_init(str(tmp_path / "no" / "such" / "dir.toml")) == 1
    assert "cannot write" in capsys.readouterr().err


# --------------------------------------------------------------------------- import: inputs

PROVIDER_MAPPING = [
    {"model": "deepseek/deepseek-chat-v3-0324", "providers": ["DeepInfra", "Parasail"]},
    {"model": "qwen/qwen3-coder", "providers": ["Cerebras", "Groq"]},
    {"model": "moonshotai/kimi-k2", "providers": []},
]
VIRTUAL_KEYS = {
    "virtual_keys": {
        VK_TEAM_A: {"provider": "openrouter", "api_key": VK_OR_KEY},
        VK_TEAM_B: {"provider": "openrouter", "api_key": VK_OR_KEY},
        VK_CLAUDE: {"provider": "anthropic", "api_key": VK_ANT_KEY},
        VK_FROM_ENV: {"provider": "openai", "api_key": "env:TEAM_OPENAI_KEY"},
    }
}
PRIORITY_ROUTER = {
    "openai": [
        {"api_key": OAI_KEY, "priority": 1, "base_url": "https://api.openai.com/v1", "timeout": 60, "max_retries": 3},
        {
            "api_key": DS_KEY,
            "priority": 2,
            "base_url": "https://api.deepseek.com/v1",
            "timeout": 120.5,
            "max_retries": 2,
        },
    ],
    "anthropic": [
        {"api_key": ANT_KEY, "priority": 3, "base_url": "https://api.anthropic.com", "timeout": 90, "max_retries": 1}
    ],
}
DOTENV = f"""\
# settings of the old proxy
TARGET_SERVER_URL=https://openrouter.ai/api/v1
OPENROUTER_KEYS="{OR_KEY_1}, {OR_KEY_2}"
TARGET_API_KEY={OR_KEY_1}
export GATEWAY_API_KEY='{GW_SECRET}'
LOG_CHAT_ENABLED=yes   # keep full transcripts
LOG_FILE_LIMIT=50
PROVIDER_INJECTION_ENABLED=true
PORT=9000
"""


def write_inputs(tmp_path: Path) -> dict[str, str]:
    files = {
        "mapping": tmp_path / "provider_mapping.json",
        "vk": tmp_path / "virtual_keys.json",
        "router": tmp_path / "router_config.json",
        "env": tmp_path / ".env",
    }
    files["mapping"].write_text(json.dumps(PROVIDER_MAPPING, indent=2))
    files["vk"].write_text(json.dumps(VIRTUAL_KEYS, indent=2))
    files["router"].write_text(json.dumps(PRIORITY_ROUTER, indent=2))
    files["env"].write_text(DOTENV)
    return {k: str(v) for k, v in files.items()}


def run_import(
    files: list[str], capsys: pytest.CaptureFixture[str], out: str | None = "gw.toml"
) -> tuple[str, str, dict[str, Any]]:
    """Import, then assert the invariants every import must keep; returns stdout, the
    TOML text and the parsed document."""
    assert cmd_import(files, out) == 0, capsys.readouterr().err
    stdout, stderr = capsys.readouterr()
    text = Path(out or "gateway.toml").read_text()
    assert_no_secrets(stdout, stderr, text)
    doc = tomllib.loads(text)
    return stdout, text, doc


def load_with_dummy_env(text: str) -> Any:
    env = {name: f"value-of-{name.lower()}-0123456789" for name in env_refs(text)}
    return parse_config(tomllib.loads(text), env, key_formats=False)  # dummy values have no vendor prefix


# --------------------------------------------------------------------------- import: each format


def test_import_provider_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    stdout, text, doc = run_import([files["mapping"]], capsys)
    assert doc["providers"] == {"openrouter": {"type": "openrouter", "keys": ["env:OPENROUTER_API_KEY"]}}
    assert doc["routes"] == [
        {
            "match": "deepseek/deepseek-chat-v3-0324",
            "providers": ["openrouter"],
            "provider_order": ["DeepInfra", "Parasail"],
        },
        {"match": "qwen/qwen3-coder", "providers": ["openrouter"], "provider_order": ["Cerebras", "Groq"]},
        {"match": "moonshotai/kimi-k2", "providers": ["openrouter"]},
    ]
    assert "export OPENROUTER_API_KEY=" in stdout
    cfg = load_with_dummy_env(text)
    assert cfg.routes[0].provider_order == ("DeepInfra", "Parasail")


def test_import_virtual_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    stdout, text, doc = run_import([files["vk"]], capsys)
    # named by provider, never by the virtual key (a credential); the two openrouter virtual
    # keys share an api_key, so they share a provider
    assert doc["providers"] == {
        "openrouter": {"type": "openrouter", "keys": ["env:RAWGW_OPENROUTER_KEY"]},
        "anthropic": {"type": "anthropic", "keys": ["env:RAWGW_ANTHROPIC_KEY"]},
        "openai": {"type": "openai", "keys": ["env:TEAM_OPENAI_KEY"]},
    }
    assert [(k["name"], k["key"], k["providers"]) for k in doc["keys"]] == [
        ("openrouter_1", "env:RAWGW_GATEWAY_KEY_OPENROUTER_1", ["openrouter"]),
        ("openrouter_2", "env:RAWGW_GATEWAY_KEY_OPENROUTER_2", ["openrouter"]),
        ("anthropic_1", "env:RAWGW_GATEWAY_KEY_ANTHROPIC_1", ["anthropic"]),
        ("openai_1", "env:RAWGW_GATEWAY_KEY_OPENAI_1", ["openai"]),
    ]
    assert f"export RAWGW_OPENROUTER_KEY={mask_key(VK_OR_KEY)}" in stdout
    assert f"export RAWGW_ANTHROPIC_KEY={mask_key(VK_ANT_KEY)}" in stdout
    assert "export TEAM_OPENAI_KEY=" in stdout  # an env: value is kept, and listed
    # which name stands for which virtual key, masked
    assert f"gateway key anthropic_1 = virtual key {mask_key(VK_CLAUDE)} (env:RAWGW_GATEWAY_KEY_ANTHROPIC_1)" in stdout
    assert f"export RAWGW_GATEWAY_KEY_OPENAI_1={mask_key(VK_FROM_ENV)}" in stdout
    # [[keys]] tables, never a top-level inline `keys = [...]` that a [server] table added
    # above would swallow (as server.keys)
    assert text.count("[[keys]]") == 4 and not re.search(r"^keys = \[\s*\{", text, re.M)
    assert tomllib.loads("[server]\nport = 1\n" + text)["keys"] == doc["keys"]
    cfg = parse_config(
        doc,
        {
            "RAWGW_OPENROUTER_KEY": VK_OR_KEY,
            "RAWGW_ANTHROPIC_KEY": VK_ANT_KEY,
            "TEAM_OPENAI_KEY": OAI_KEY,
            "RAWGW_GATEWAY_KEY_OPENROUTER_1": VK_TEAM_A,
            "RAWGW_GATEWAY_KEY_OPENROUTER_2": VK_TEAM_B,
            "RAWGW_GATEWAY_KEY_ANTHROPIC_1": VK_CLAUDE,
            "RAWGW_GATEWAY_KEY_OPENAI_1": VK_FROM_ENV,
        },
    )
    assert cfg.providers["anthropic"].keys == (VK_ANT_KEY,)
    assert cfg.keys[2].key == VK_CLAUDE
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("provider", "ptype", "base_url"),
    [
        ("deepseek", "openai", "https://api.deepseek.com/v1"),
        ("gemini", "openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
        ("groq", "openai", "https://api.groq.com/openai/v1"),
        ("mistral", "openai", "https://api.mistral.ai/v1"),
        ("together", "openai", "https://api.together.xyz/v1"),
        ("OpenRouter", "openrouter", None),
    ],
)
def test_import_virtual_keys_known_provider_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: str, ptype: str, base_url: str | None
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"virtual_keys": {VK_TEAM_A: {"provider": provider, "api_key": DS_KEY}}}))
    _, _, doc = run_import([str(path)], capsys)
    name = provider.lower()
    expected: dict[str, Any] = {"type": ptype, "keys": [f"env:RAWGW_{name.upper()}_KEY"]}
    if base_url:
        expected["base_url"] = base_url
    assert doc["providers"] == {name: expected}
    assert doc["keys"][0]["name"] == f"{name}_1"


def test_import_priority_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    stdout, _, doc = run_import([files["router"]], capsys)
    assert doc["providers"] == {
        "openai": {
            "type": "openai", "base_url": "https://api.openai.com/v1", "keys": ["env:RAWGW_OPENAI_KEY_1"],
            "priority": 1, "read_timeout_s": 60, "max_retries": 3,
        },
        "openai_2": {
            "type": "openai", "base_url": "https://api.deepseek.com/v1", "keys": ["env:RAWGW_OPENAI_2_KEY_1"],
            "priority": 2, "read_timeout_s": 120.5, "max_retries": 2,
        },
        "anthropic": {
            "type": "anthropic", "base_url": "https://api.anthropic.com", "keys": ["env:RAWGW_ANTHROPIC_KEY_1"],
            "priority": 3, "read_timeout_s": 90, "max_retries": 1,
        },
    }  # fmt: skip
    # /openai/... and /anthropic/... keep their failover, as the router's users had it
    assert doc["groups"] == {"openai": ["openai", "openai_2"], "anthropic": ["anthropic"]}
    assert f"export RAWGW_OPENAI_KEY_1={mask_key(OAI_KEY)}" in stdout
    assert f"export RAWGW_OPENAI_2_KEY_1={mask_key(DS_KEY)}" in stdout
    assert f"export RAWGW_ANTHROPIC_KEY_1={mask_key(ANT_KEY)}" in stdout
    cfg = parse_config(
        doc, {"RAWGW_OPENAI_KEY_1": OAI_KEY, "RAWGW_OPENAI_2_KEY_1": DS_KEY, "RAWGW_ANTHROPIC_KEY_1": ANT_KEY}
    )
    assert [p.priority for p in cfg.providers.values()] == [1, 2, 3]
    assert cfg.providers["openai_2"].first_byte_timeout_s == 120.5
    assert cfg.providers["openai"].max_retries == 3
    assert cfg.groups == {"openai": ("openai", "openai_2"), "anthropic": ("anthropic",)}


def test_import_priority_router_known_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    router = tmp_path / "router.json"
    router.write_text(json.dumps({"deepseek": [{"api_key": DS_KEY, "priority": 1}]}))
    _, _, doc = run_import([str(router)], capsys)
    assert doc["providers"]["deepseek"]["base_url"] == "https://api.deepseek.com/v1"
    assert doc["providers"]["deepseek"]["type"] == "openai"
    assert doc["groups"] == {"deepseek": ["deepseek"]}


def test_import_dotenv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    stdout, _, doc = run_import([files["env"]], capsys)
    assert doc["providers"] == {
        "openrouter": {
            "type": "openrouter",
            "base_url": "https://openrouter.ai/api/v1",
            "keys": ["env:RAWGW_OPENROUTER_KEY_1", "env:RAWGW_OPENROUTER_KEY_2"],
        }
    }
    assert doc["keys"] == [{"key": "env:GATEWAY_API_KEY", "name": "default"}]
    assert doc["logging"] == {"chat": True, "chat_file_limit": 50}
    assert f"export RAWGW_OPENROUTER_KEY_1={mask_key(OR_KEY_1)}" in stdout
    assert f"export RAWGW_OPENROUTER_KEY_2={mask_key(OR_KEY_2)}" in stdout
    assert f"export GATEWAY_API_KEY={mask_key(GW_SECRET)}" in stdout
    assert doc["server"] == {"port": 9000}
    cfg = parse_config(
        doc, {"RAWGW_OPENROUTER_KEY_1": OR_KEY_1, "RAWGW_OPENROUTER_KEY_2": OR_KEY_2, "GATEWAY_API_KEY": GW_SECRET}
    )
    assert cfg.providers["openrouter"].keys == (OR_KEY_1, OR_KEY_2)
    assert cfg.keys[0].key == GW_SECRET
    assert cfg.logging.chat is True and cfg.logging.chat_file_limit == 50


def test_import_dotenv_target_api_key_other_upstream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "deepseek.env"
    env_file.write_text(
        f"TARGET_SERVER_URL=https://api.deepseek.com/v1/\nTARGET_API_KEY={DS_KEY}\nLOG_CHAT_ENABLED=false\n"
    )
    stdout, text, doc = run_import([str(env_file)], capsys)
    assert doc["providers"] == {
        "deepseek": {"type": "openai", "base_url": "https://api.deepseek.com/v1", "keys": ["env:RAWGW_DEEPSEEK_KEY_1"]}
    }
    assert doc["logging"] == {"chat": False}
    assert "keys" not in doc
    assert f"export RAWGW_DEEPSEEK_KEY_1={mask_key(DS_KEY)}" in stdout
    load_with_dummy_env(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\n", {"A": "1"}),
        ("export A = 'x y' \n", {"A": "x y"}),
        ('A="a # not a comment"  # comment\n', {"A": "a # not a comment"}),
        ("A=b # comment\nB=\n\n# only a comment\n", {"A": "b", "B": ""}),
        ("A=b#c\n", {"A": "b#c"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ],
)
def test_parse_dotenv(text: str, expected: dict[str, str]) -> None:
    assert parse_dotenv(text) == expected


# --------------------------------------------------------------------------- import: merge


def test_import_all_four_merged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    stdout, text, doc = run_import([files["mapping"], files["vk"], files["router"], files["env"]], capsys)
    assert list(doc["providers"]) == [
        "openrouter", "anthropic", "openai",  # virtual keys
        "openai_2", "openai_3", "anthropic_2",  # priority router
        "openrouter_2",  # .env
    ]  # fmt: skip
    assert doc["groups"] == {"openai": ["openai_2", "openai_3"], "anthropic": ["anthropic_2"]}
    # the mapping's routes are served by the .env's upstream, never by a virtual key's key
    assert {tuple(r["providers"]) for r in doc["routes"]} == {("openrouter_2",)}
    assert doc["routes"][0]["provider_order"] == ["DeepInfra", "Parasail"]
    assert [k["name"] for k in doc["keys"]] == ["openrouter_1", "openrouter_2", "anthropic_1", "openai_1", "default"]
    assert "OPENROUTER_API_KEY" not in env_refs(text)  # an OpenRouter provider came from the .env
    # every literal secret appears masked once in the export list, under one variable
    exports = dict(re.findall(r"export (\w+)=(\S+)", stdout))
    assert exports["RAWGW_OPENROUTER_2_KEY_1"] == mask_key(OR_KEY_1)
    assert exports["RAWGW_OPENROUTER_KEY"] == mask_key(VK_OR_KEY)
    assert set(exports) == env_refs(text)
    cfg = load_with_dummy_env(text)
    assert len(cfg.providers) == 7 and len(cfg.routes) == 3 and len(cfg.keys) == 5


def test_import_injection_disabled_drops_provider_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    env_file = tmp_path / "noinject.env"
    env_file.write_text(f"OPENROUTER_KEYS={OR_KEY_1}\nPROVIDER_INJECTION_ENABLED=false\n")
    _, text, doc = run_import([str(env_file), files["mapping"]], capsys)
    assert all("provider_order" not in r for r in doc["routes"])
    assert doc["providers"]["openrouter"]["keys"] == ["env:RAWGW_OPENROUTER_KEY_1"]
    assert "base_url" not in doc["providers"]["openrouter"]  # no URL: OpenRouter's default
    load_with_dummy_env(text)


def test_import_same_secret_twice_is_one_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    router = tmp_path / "router.json"
    router.write_text(
        json.dumps({"openrouter": [{"api_key": OR_KEY_1, "priority": 1}, {"api_key": OR_KEY_1, "priority": 2}]})
    )
    stdout, _, doc = run_import([str(router)], capsys)
    assert doc["providers"]["openrouter"]["keys"] == doc["providers"]["openrouter_2"]["keys"]
    assert stdout.count("export ") == 1


def test_import_default_output_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    run_import([files["mapping"]], capsys, out=None)
    assert (tmp_path / "gateway.toml").exists()


# --------------------------------------------------------------------------- import: refusals


def test_import_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path)
    (tmp_path / "gateway.toml").write_text("# keep me\n")
    assert cmd_import([files["mapping"]], None) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "gateway.toml").read_text() == "# keep me\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"something": "else"}', "JSON of an unknown shape"),
        ("[1, 2]", "entry 0: must be an object with model and providers"),
        ('[{"model": "", "providers": []}]', "entry 0: model must be a non-empty string"),
        (
            json.dumps({"virtual_keys": {VK_TEAM_A: {"provider": "acme-llm", "api_key": VK_OR_KEY}}}),
            "virtual_keys entry 1.provider: unknown provider 'acme-llm'; known names: openai, openrouter",
        ),
        (
            json.dumps({"virtual_keys": {VK_TEAM_A: {"provider": "openai"}}}),
            "virtual_keys entry 1.api_key: must be a non-empty string",
        ),
        (json.dumps({"acme": [{"api_key": DS_KEY}]}), "acme: unknown provider name; known names: openai, openrouter"),
        (
            json.dumps({"openai": [{"api_key": OAI_KEY, "timeout": -1}]}),
            "openai[0].timeout: must be a number of seconds > 0",
        ),
        ("PORT=1\nDEBUG=true\n", "not a recognised format"),
        (f"GATEWAY_API_KEY={GW_SECRET}\nthis line leaks {OR_KEY_1}\n", "line 2: not a KEY=VALUE line"),
        (f"OPENROUTER_KEYS='{OR_KEY_1}\n", "line 1: unterminated quote"),
        ("LOG_FILE_LIMIT=lots\n", "LOG_FILE_LIMIT: must be an integer"),
    ],
)
def test_import_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    path = tmp_path / "input"
    path.write_text(content)
    assert cmd_import([str(path)], "out.toml") == 1
    out, err = capsys.readouterr()
    assert message in err and str(path) in err
    assert_no_secrets(out, err)
    assert not (tmp_path / "out.toml").exists()


def test_import_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_import([str(tmp_path / "nope.json")], "out.toml") == 1
    assert "cannot read" in capsys.readouterr().err


def test_import_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert cmd_import([str(path)], "out.toml") == 1
    assert "not JSON" in capsys.readouterr().err


def test_import_no_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_import([], None) == 1
    assert "no input files" in capsys.readouterr().err


def test_import_invalid_result_is_not_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The converted config is validated before it is written: a .env whose
    TARGET_SERVER_URL is not http(s) gives an error and no file."""
    a, b = tmp_path / "a.env", tmp_path / "b.env"
    a.write_text("TARGET_SERVER_URL=http://localhost:11434/v1\nTARGET_API_KEY=env:OLLAMA_KEY\n")
    b.write_text("TARGET_SERVER_URL=ftp://example.com\nTARGET_API_KEY=env:OTHER_KEY\n")
    assert cmd_import([str(a), str(b)], "out.toml") == 1
    err = capsys.readouterr().err
    assert "would not load" in err and "base_url: must be an http:// or https:// URL" in err
    assert not (tmp_path / "out.toml").exists()
