"""`rawgw import` of the YAML and .env formats, called as a function (capsys): what each
setting becomes, and the refusals (issue 13.9, issue 10.7, issue 10.8's YAML row).
The end-to-end runs of each seed's own config are in test_import_seeds.py."""

from __future__ import annotations

import builtins
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rawgw.config import mask_key, parse_config
from rawgw.config_commands import cmd_import

OR_KEYS = ["sk-or-v1-aaaa0123456789abcdef01", "sk-or-v1-bbbb0123456789abcdef02"]
ACCESS_KEY = "access-key-0123456789abcdef"
PROXY_PASSWORD = "s3cret-proxy-pw"
SECRETS = (*OR_KEYS, ACCESS_KEY, PROXY_PASSWORD)

CONFIG_YML = f"""
server:
  host: "127.0.0.1"
  port: 5555
  access_key: "{ACCESS_KEY}"
  log_level: "INFO"
openrouter:
  keys:
    - "{OR_KEYS[0]}"
    - "{OR_KEYS[1]}"
  enable_cache: false
  cache_ttl: 120
  public_endpoints: ["/api/v1/models"]
  key_selection_strategy: "first"
  key_selection_opts: ["same"]
  rate_limit_cooldown: 600
  free_only: true
  google_rate_delay: 5
requestProxy:
  enabled: true
  url: "socks5h://user:{PROXY_PASSWORD}@127.0.0.1:1080"
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def imported(tmp_path: Path, capsys: pytest.CaptureFixture[str], *contents: tuple[str, str]) -> tuple[dict[str, Any], str]:
    names = []
    for name, text in contents:
        (tmp_path / name).write_text(text)
        names.append(name)
    assert cmd_import(names, "out.toml") == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    text = (tmp_path / "out.toml").read_text()
    for secret in SECRETS:
        assert secret not in out and secret not in err and secret not in text
    return tomllib.loads(text), out


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    assert cmd_import([name], "out.toml") == 1
    out, err = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out and secret not in err
    assert not (tmp_path / "out.toml").exists()
    return err


# --------------------------------------------------------------------------- YAML


def test_config_yml_every_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml")
    doc, out = imported(tmp_path, capsys, ("config.yml", CONFIG_YML))
    assert doc["server"] == {"host": "127.0.0.1", "port": 5555, "public_paths": ["/health", "/api/v1/models"]}
    assert doc["keys"] == [{"key": "env:GATEWAY_API_KEY", "name": "default"}]
    assert doc["providers"] == {
        "openrouter": {
            "type": "openrouter",
            "keys": ["env:RAWGW_OPENROUTER_KEY_1", "env:RAWGW_OPENROUTER_KEY_2"],
            "key_strategy": "first",
            "cooldown_s": 600,
            "free_only": True,
            "proxy": "env:RAWGW_OPENROUTER_PROXY",
        }
    }
    assert doc["models"] == {"cache_ttl_s": 0}  # enable_cache: false
    assert f"export RAWGW_OPENROUTER_KEY_2={mask_key(OR_KEYS[1])}" in out
    assert "export RAWGW_OPENROUTER_PROXY=" in out
    for setting in ("key_selection_opts", "google_rate_delay", "log_level"):
        assert setting in out  # told what was not imported
    cfg = parse_config(
        doc,
        {
            "GATEWAY_API_KEY": ACCESS_KEY,
            "RAWGW_OPENROUTER_KEY_1": OR_KEYS[0],
            "RAWGW_OPENROUTER_KEY_2": OR_KEYS[1],
            "RAWGW_OPENROUTER_PROXY": f"socks5h://user:{PROXY_PASSWORD}@127.0.0.1:1080",
        },
    )
    assert cfg.providers["openrouter"].free_only and cfg.models.cache_ttl_s == 0


def test_yaml_without_extension_is_not_a_bad_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml")
    doc, _ = imported(tmp_path, capsys, ("proxy-config", CONFIG_YML))
    assert "openrouter" in doc["providers"]


def test_yaml_without_pyyaml_says_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_yaml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    err = refused(tmp_path, capsys, "config.yml", CONFIG_YML)
    assert "YAML" in err and "pip install 'rawgw[yaml]'" in err
    assert "KEY=VALUE" not in err and ".env" not in err


def test_yaml_syntax_error_names_the_line_not_its_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml")
    err = refused(tmp_path, capsys, "config.yml", f'openrouter:\n  keys: ["{OR_KEYS[0]}"\n  free_only: true\n')
    assert "YAML syntax error at line" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: 1\n", "YAML of an unknown shape"),
        ("openrouter:\n  keys: 5\n", "openrouter.keys: must be a list of keys"),
        ("openrouter:\n  key_selection_strategy: lru\n", "openrouter.key_selection_strategy: must be one of"),
        ("openrouter: {}\nrequestProxy:\n  enabled: true\n", "requestProxy.url: required"),
        ("openrouter:\n  public_endpoints: [models]\n", "public_endpoints: must be a list of paths starting with /"),
    ],
)
def test_yaml_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    pytest.importorskip("yaml")
    assert message in refused(tmp_path, capsys, "config.yml", text)


# --------------------------------------------------------------------------- .env


def test_node_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = (
        f"PORT=8787\nOPENROUTER_API_KEY={OR_KEYS[0]}\nCACHE_TTL=0\nMAX_RETRIES=2\nRETRY_DELAY=250\n"
        f"GATEWAY_API_KEY={ACCESS_KEY}\nRATE_LIMIT_WINDOW=30000\nRATE_LIMIT_MAX_REQUESTS=10\nJWT_SECRET=x\n"
    )
    doc, out = imported(tmp_path, capsys, (".env", env))
    assert doc["server"] == {"port": 8787}
    assert doc["cache"] == {"enabled": False}
    p = doc["providers"]["openrouter"]
    assert (p["max_retries"], p["retry_backoff_s"], p["priority"]) == (2, 0.25, 2)
    # 10 requests per 30 s: 20 a minute, 10 at once
    assert doc["keys"] == [{"key": "env:GATEWAY_API_KEY", "name": "default", "rate_limit_rpm": 20, "rate_limit_burst": 10}]
    routes = {r["match"]: r for r in doc["routes"]}
    assert routes["gpt-4"] == {"match": "gpt-4", "model": "deepseek/deepseek-r1-0528:free", "providers": ["openrouter"]}
    assert not any(r["match"].startswith("gemini") for r in doc["routes"])  # no GEMINI_API_KEY
    assert "JWT_SECRET" in out  # named as not imported
    parse_config(doc, {"RAWGW_OPENROUTER_KEY_1": OR_KEYS[0], "GATEWAY_API_KEY": ACCESS_KEY})


def test_env_key_pool_with_commas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = imported(tmp_path, capsys, (".env", f"OPENROUTER_API_KEY={OR_KEYS[0]}, {OR_KEYS[1]}\n"))
    assert doc["providers"]["openrouter"]["keys"] == ["env:RAWGW_OPENROUTER_KEY_1", "env:RAWGW_OPENROUTER_KEY_2"]


def test_fastapi_mapping_goes_to_the_env_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10.7: a non-OpenRouter TARGET_SERVER_URL keeps the mapping (and its injection)
    on that provider; no second openrouter provider with a new OPENROUTER_API_KEY."""
    mapping = json.dumps([{"model": "deepseek/deepseek-chat-v3-0324", "providers": ["DeepInfra"]}])
    env = f"TARGET_SERVER_URL=https://llm.example.internal/api/v1\nTARGET_API_KEY={OR_KEYS[0]}\n"
    for order in ((".env", env), ("map.json", mapping)), (("map.json", mapping), (".env", env)):
        doc, out = imported(tmp_path, capsys, *order)
        assert list(doc["providers"]) == ["llm"]
        assert doc["providers"]["llm"]["type"] == "openrouter"  # so that provider.order is injected
        assert doc["routes"] == [{"match": "deepseek/deepseek-chat-v3-0324", "providers": ["llm"], "provider_order": ["DeepInfra"]}]
        assert "OPENROUTER_API_KEY" not in out and 'type = "openai"' in out
        (tmp_path / "out.toml").unlink()


def test_fastapi_target_without_mapping_stays_openai(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = imported(tmp_path, capsys, (".env", f"TARGET_SERVER_URL=https://api.deepseek.com/v1\nTARGET_API_KEY={OR_KEYS[0]}\n"))
    assert doc["providers"]["deepseek"]["type"] == "openai"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PORT=99999\nOPENROUTER_API_KEY=x\n", "PORT: must be a port number"),
        ("MAX_RETRIES=-1\nOPENROUTER_API_KEY=x\n", "MAX_RETRIES: must be an integer >= 0"),
        ("CACHE_TTL=soon\nOPENROUTER_API_KEY=x\n", "CACHE_TTL: must be an integer"),
    ],
)
def test_env_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    assert message in refused(tmp_path, capsys, ".env", text)
