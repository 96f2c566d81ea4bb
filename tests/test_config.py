"""rawgw.config: defaults, env: resolution, every kind of validation error, warnings,
mask_key, and that no secret ever appears in a message. Pure functions, no sockets."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rawgw.config import (
    CacheConfig,
    Config,
    ConfigError,
    GatewayKey,
    LoggingConfig,
    MetricsConfig,
    ModelsConfig,
    Provider,
    Route,
    ServerConfig,
    StateConfig,
    find_config_path,
    load_config,
    mask_key,
    mask_keys,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.toml.example"

OR_KEY_1 = "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"
OR_KEY_2 = "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"
ANT_KEY = "sk-ant-api03-Zq9xW8vU7tS6rR5qP4oN3mM2lL1kK0jJ-iIhHgGfFeEdDcCbBaA-9z8y7xAA"
OAI_KEY = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34"
GW_KEY = "gw-7d3c1f0e9b8a6d5c4b3a2f1e0d9c8b7a"
SECRETS = (OR_KEY_1, OR_KEY_2, ANT_KEY, OAI_KEY, GW_KEY)


def minimal(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"providers": {"openrouter": {"keys": ["env:OR1"]}}}
    doc.update(extra)
    return doc


ENV = {"OR1": OR_KEY_1, "OR2": OR_KEY_2, "ANT": ANT_KEY, "OAI": OAI_KEY, "GW": GW_KEY}


def errors_of(doc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, ENV if env is None else env)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def toml_doc(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


# --------------------------------------------------------------------------- defaults


def test_defaults_of_a_minimal_config() -> None:
    cfg = parse_config(minimal(), ENV)
    assert cfg.server == ServerConfig()
    assert cfg.server.port == 8080 and cfg.server.cors_origins == ("*",)
    assert cfg.logging == LoggingConfig() and cfg.cache == CacheConfig() and cfg.metrics == MetricsConfig()
    assert cfg.keys == () and cfg.routes == () and cfg.path is None
    p = cfg.providers["openrouter"]
    # type inferred from the provider's name, base_url defaulted per type
    assert p.type == "openrouter"
    assert p.base_url == "https://openrouter.ai/api/v1"
    assert (p.scheme, p.host, p.port, p.base_path) == ("https", "openrouter.ai", 443, "/api/v1")
    assert p.keys == (OR_KEY_1,)
    assert p.key_strategy == "round-robin" and p.cooldown_s == 14400.0 and p.priority == 1
    assert p.models == ("*",) and p.proxy == "" and p.headers == ()
    assert p.first_byte_timeout_s == p.read_timeout_s == 300.0


@pytest.mark.parametrize(
    ("ptype", "base_url", "host", "base_path"),
    [
        ("openai", "https://api.openai.com/v1", "api.openai.com", "/v1"),
        ("anthropic", "https://api.anthropic.com", "api.anthropic.com", ""),
        ("openrouter", "https://openrouter.ai/api/v1", "openrouter.ai", "/api/v1"),
    ],
)
def test_default_base_url_per_type(ptype: str, base_url: str, host: str, base_path: str) -> None:
    cfg = parse_config({"providers": {"up": {"type": ptype, "keys": ["k" * 20], "key_format": "any"}}}, {})
    p = cfg.providers["up"]
    assert (p.base_url, p.host, p.base_path, p.port) == (base_url, host, base_path, 443)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9000/v1/", ("http", "127.0.0.1", 9000, "/v1", "http://127.0.0.1:9000/v1")),
        ("http://localhost", ("http", "localhost", 80, "", "http://localhost")),
        (
            "HTTPS://Example.COM:8443/api/v1",
            ("https", "example.com", 8443, "/api/v1", "https://example.com:8443/api/v1"),
        ),
        ("http://[::1]:8081/v1", ("http", "::1", 8081, "/v1", "http://[::1]:8081/v1")),
    ],
)
def test_base_url_is_split_and_normalized(url: str, expected: tuple[Any, ...]) -> None:
    p = parse_config({"providers": {"local": {"type": "openai", "base_url": url, "keys": ["x" * 16]}}}, {}).providers[
        "local"
    ]
    assert (p.scheme, p.host, p.port, p.base_path, p.base_url) == expected


def test_every_setting_is_read() -> None:
    doc = toml_doc(
        """
        [server]
        host = "0.0.0.0"
        port = 0
        workers = 4
        max_body_bytes = 1000
        max_header_bytes = 2000
        header_timeout_s = 2.5
        keepalive_timeout_s = 5
        shutdown_grace_s = 0
        max_connections = 7
        request_timeout_s = 30.5
        cors_origins = []
        public_paths = ["/health", "/metrics"]

        [[keys]]
        key = "env:GW"
        name = "team"
        providers = ["anthropic"]
        models = ["claude-*"]
        rate_limit_rpm = 60
        rate_limit_burst = 10

        [providers.anthropic]
        type = "anthropic"
        base_url = "https://api.anthropic.com/"
        keys = ["env:ANT"]
        key_strategy = "random"
        cooldown_s = 60.5
        priority = -3
        models = ["claude-*"]
        connect_timeout_s = 1.5
        first_byte_timeout_s = 20
        read_timeout_s = 40
        pool_idle_s = 0
        max_connections = 3
        proxy = "http://user:pw@proxy.internal:3128"
        headers = { "anthropic-beta" = "tools-2024-04-04" }

        [[routes]]
        match = "claude*"
        model = "claude-sonnet-4"
        providers = ["anthropic"]
        provider_order = ["A"]
        force_provider_order = true

        [logging]
        dir = "/var/log/rawgw"
        access = false
        chat = true
        chat_file_limit = 3
        errors = false

        [cache]
        enabled = true
        ttl_s = 1.5
        max_entries = 5

        [metrics]
        enabled = false
        """
    )
    cfg = parse_config(doc, ENV)
    assert cfg.server == ServerConfig(
        host="0.0.0.0", port=0, workers=4, max_body_bytes=1000, max_header_bytes=2000, header_timeout_s=2.5,
        keepalive_timeout_s=5.0, shutdown_grace_s=0.0, max_connections=7, request_timeout_s=30.5,
        cors_origins=(), public_paths=("/health", "/metrics"),
    )  # fmt: skip
    assert cfg.keys == (GatewayKey(GW_KEY, "team", ("anthropic",), ("claude-*",), 60, 10),)
    p = cfg.providers["anthropic"]
    assert p == Provider(
        name="anthropic", type="anthropic", base_url="https://api.anthropic.com", keys=(ANT_KEY,),
        key_strategy="random", cooldown_s=60.5, priority=-3, models=("claude-*",), connect_timeout_s=1.5,
        first_byte_timeout_s=20.0, read_timeout_s=40.0, pool_idle_s=0.0, max_connections=3,
        proxy="http://user:pw@proxy.internal:3128", headers=(("anthropic-beta", "tools-2024-04-04"),),
        scheme="https", host="api.anthropic.com", port=443, base_path="",
    )  # fmt: skip
    assert cfg.routes == (Route("claude*", "claude-sonnet-4", ("anthropic",), ("A",), True),)
    assert cfg.logging == LoggingConfig("/var/log/rawgw", False, True, 3, False)
    assert cfg.cache == CacheConfig(True, 1.5, 5)
    assert cfg.metrics == MetricsConfig(False)
    assert all(isinstance(v, float) for v in (cfg.server.keepalive_timeout_s, p.first_byte_timeout_s, p.cooldown_s))


def test_first_byte_timeout_defaults_to_read_timeout() -> None:
    doc = minimal()
    doc["providers"]["openrouter"]["read_timeout_s"] = 42
    assert parse_config(doc, ENV).providers["openrouter"].first_byte_timeout_s == 42.0


def test_key_names_default() -> None:
    one = parse_config(minimal(keys=[{"key": "env:GW"}]), ENV)
    assert [k.name for k in one.keys] == ["default"]
    two = parse_config(minimal(keys=[{"key": "gw-a-0123456789"}, {"key": "gw-b-0123456789", "name": "b"}]), ENV)
    assert [k.name for k in two.keys] == ["key1", "b"]


def test_provider_order_is_file_order() -> None:
    doc = toml_doc(
        """
        [providers.zeta]
        type = "openai"
        keys = ["env:OAI"]
        [providers.alpha]
        type = "openai"
        keys = ["env:OAI"]
        """
    )
    assert list(parse_config(doc, ENV).providers) == ["zeta", "alpha"]


def test_config_is_frozen_and_repr_hides_secrets() -> None:
    cfg = parse_config(minimal(keys=[{"key": "env:GW"}]), ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]
    text = repr(cfg)
    assert OR_KEY_1 not in text and GW_KEY not in text


# --------------------------------------------------------------------------- env:


def test_env_resolved_everywhere() -> None:
    doc = toml_doc(
        """
        [server]
        host = "env:HOST"
        cors_origins = ["env:ORIGIN"]
        [providers.openrouter]
        keys = ["env:OR1", "env:OR2"]
        headers = { "X-Title" = "env:TITLE" }
        """
    )
    cfg = parse_config(doc, {**ENV, "HOST": "0.0.0.0", "ORIGIN": "https://app.example", "TITLE": "my-app"})
    assert cfg.server.host == "0.0.0.0"
    assert cfg.server.cors_origins == ("https://app.example",)
    assert cfg.providers["openrouter"].keys == (OR_KEY_1, OR_KEY_2)
    assert cfg.providers["openrouter"].headers == (("X-Title", "my-app"),)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OR1", OR_KEY_1)
    assert parse_config(minimal()).providers["openrouter"].keys == (OR_KEY_1,)


def test_missing_env_variable_is_one_error_naming_it() -> None:
    doc = {"providers": {"openrouter": {"keys": ["env:OPENROUTER_KEY_1", "env:OPENROUTER_KEY_2"]}}}
    errs = errors_of(doc, {"OPENROUTER_KEY_1": OR_KEY_1})
    assert errs == ["providers.openrouter.keys[1]: environment variable OPENROUTER_KEY_2 is not set"]


def test_missing_env_in_headers_and_scalars() -> None:
    doc = minimal(server={"port": "env:PORT"}, keys=[{"key": "env:GATEWAY_API_KEY"}])
    doc["providers"]["openrouter"]["headers"] = {"X-Title": "env:TITLE"}
    errs = errors_of(doc)
    assert sorted(errs) == sorted(
        [
            "server.port: environment variable PORT is not set",
            "keys[0].key: environment variable GATEWAY_API_KEY is not set",
            "providers.openrouter.headers.X-Title: environment variable TITLE is not set",
        ]
    )


def test_env_value_is_type_checked_after_resolution() -> None:
    assert errors_of(minimal(server={"port": "env:PORT"}), {**ENV, "PORT": "8080"}) == [
        "server.port: must be an integer between 0 and 65535"
    ]


@pytest.mark.parametrize("value", [f"{OR_KEY_1},{OR_KEY_2}", f"{OR_KEY_1} {OR_KEY_2}", f" {OR_KEY_1},\n {OR_KEY_2},"])
def test_env_list_entry_splits_on_commas_and_whitespace(value: str) -> None:
    """Issue 10.6: keys = ["env:OPENROUTER_KEYS"] with OPENROUTER_KEYS="a,b" or "a b" is two
    keys (as the key-rotating proxy read that variable), never one key "a,b"."""
    doc = {"keys": [{"key": "env:GW"}], "providers": {"openrouter": {"keys": ["env:OPENROUTER_KEYS", "env:OR1"]}}}
    cfg = parse_config(doc, {"OPENROUTER_KEYS": value, "OR1": OR_KEY_1, "GW": GW_KEY})
    assert cfg.providers["openrouter"].keys == (OR_KEY_1, OR_KEY_2, OR_KEY_1)
    # every piece came from the environment: no "literal secret" warning for any of them
    assert [w for w in cfg.warnings if "literal" in w] == []
    assert cfg.warnings == ("providers.openrouter.keys[2]: same key as keys[0]; a pool rotates over distinct keys",)


def test_env_list_split_applies_to_every_string_list_but_never_to_a_scalar() -> None:
    doc = toml_doc(
        """
        [server]
        cors_origins = ["env:ORIGINS"]
        [[keys]]
        key = "env:GWS"
        models = ["env:MODELS", "gpt-4*"]
        [providers.openrouter]
        keys = ["env:OR1"]
        """
    )
    env = {**ENV, "ORIGINS": "https://a.example, https://b.example", "MODELS": "claude-* deepseek/*", "GWS": "gw-one-0123456789,gw-two-0123456789"}
    env["GWS"] = GW_KEY
    cfg = parse_config(doc, env)
    assert cfg.server.cors_origins == ("https://a.example", "https://b.example")
    assert cfg.keys[0].models == ("claude-*", "deepseek/*", "gpt-4*")
    # a scalar holding commas or spaces is one value, checked as one
    env["GWS"] = "gw,with,commas"
    assert parse_config(doc, env).keys[0].key == "gw,with,commas"
    env["GWS"] = "gw-one-0123456789 gw-two-0123456789"
    assert errors_of(doc, env) == ["keys[0].key: must be visible ASCII without spaces or control characters"]


def test_env_list_entry_empty_is_an_error_naming_it() -> None:
    errs = errors_of({"providers": {"openrouter": {"keys": ["env:OPENROUTER_KEYS"]}}}, {"OPENROUTER_KEYS": " , "})
    assert errs == ["providers.openrouter.keys[0]: environment variable OPENROUTER_KEYS is empty"]


def test_invalid_env_reference() -> None:
    errs = errors_of({"providers": {"openrouter": {"keys": ["env:"]}}})
    assert len(errs) == 1 and errs[0].startswith("providers.openrouter.keys[0]: invalid env: reference")


# --------------------------------------------------------------------------- errors

# fmt: off
ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("port range", minimal(server={"port": 70000}), "server.port: must be an integer between 0 and 65535"),
    ("port bool", minimal(server={"port": True}), "server.port: must be an integer between 0 and 65535"),
    ("port float", minimal(server={"port": 80.0}), "server.port: must be an integer between 0 and 65535"),
    ("workers", minimal(server={"workers": 0}), "server.workers: must be a positive integer"),
    ("size", minimal(server={"max_body_bytes": -1}), "server.max_body_bytes: must be a positive integer"),
    ("size str", minimal(server={"max_header_bytes": "16k"}), "server.max_header_bytes: must be a positive integer"),
    ("timeout 0", minimal(server={"header_timeout_s": 0}), "server.header_timeout_s: must be a number of seconds > 0"),
    ("timeout bool", minimal(server={"request_timeout_s": True}), "server.request_timeout_s: must be a number of seconds > 0"),
    ("timeout nan", minimal(server={"keepalive_timeout_s": float("nan")}), "server.keepalive_timeout_s: must be a number of seconds > 0"),
    ("grace <0", minimal(server={"shutdown_grace_s": -1}), "server.shutdown_grace_s: must be a number of seconds >= 0"),
    ("host", minimal(server={"host": ""}), "server.host: must not be empty"),
    ("cors", minimal(server={"cors_origins": "*"}), "server.cors_origins: must be a list of strings"),
    ("cors item", minimal(server={"cors_origins": ["*", 1]}), "server.cors_origins[1]: must be a string"),
    ("public path", minimal(server={"public_paths": ["health"]}), "server.public_paths[0]: must start with /"),
    ("server table", minimal(server=3), "server: must be a table ([server])"),
    ("unknown section", minimal(loging={}), "loging: unknown setting (did you mean logging?)"),
    ("unknown no hint", minimal(zzz=1), "zzz: unknown setting"),
    ("unknown server", minimal(server={"max_body_byte": 1}), "server.max_body_byte: unknown setting (did you mean max_body_bytes?)"),
    ("keys table", minimal(keys={"key": "x"}), "keys: must be an array of tables ([[keys]])"),
    ("keys item", minimal(keys=["abc"]), "keys[0]: must be a table ([[keys]])"),
    ("key required", minimal(keys=[{"name": "a"}]), "keys[0].key: required"),
    ("key empty", minimal(keys=[{"key": ""}]), "keys[0].key: must not be empty"),
    ("key type", minimal(keys=[{"key": 5}]), "keys[0].key: must be a string"),
    ("key spaces", minimal(keys=[{"key": "gw secret value"}]), "keys[0].key: must be visible ASCII without spaces or control characters"),
    ("key unknown field", minimal(keys=[{"key": "gw-0123456789ab", "rate_limit": 3}]), "keys[0].rate_limit: unknown setting (did you mean rate_limit_rpm or rate_limit_tpm?)"),
    ("key provider", minimal(keys=[{"key": "gw-0123456789ab", "providers": ["foo"]}]), "keys[0].providers[0]: unknown provider 'foo'"),
    ("key provider hint", minimal(keys=[{"key": "gw-0123456789ab", "providers": ["openroutr"]}]), "keys[0].providers[0]: unknown provider 'openroutr' (did you mean openrouter?)"),
    ("key rpm", minimal(keys=[{"key": "gw-0123456789ab", "rate_limit_rpm": -1}]), "keys[0].rate_limit_rpm: must be an integer >= 0"),
    ("key models", minimal(keys=[{"key": "gw-0123456789ab", "models": "gpt-*"}]), "keys[0].models: must be a list of strings"),
    ("providers table", {"providers": []}, "providers: must be a table of providers ([providers.NAME])"),
    ("provider table", {"providers": {"x": 1}}, "providers.x: must be a table ([providers.x])"),
    ("provider type", {"providers": {"or": {"type": "openrouterx", "keys": ["k" * 16]}}}, "providers.or.type: must be one of openai, openrouter, anthropic"),
    ("provider type required", {"providers": {"deepseek": {"keys": ["k" * 16]}}}, "providers.deepseek.type: required (one of openai, openrouter, anthropic)"),
    ("pool empty", {"providers": {"openrouter": {"keys": []}}}, "providers.openrouter.keys: empty key pool; add at least one key"),
    ("pool missing", {"providers": {"openrouter": {}}}, 'providers.openrouter.keys: required: a pool of at least one key, e.g. ["env:NAME"]'),
    ("pool str", {"providers": {"openrouter": {"keys": "env:OR1"}}}, "providers.openrouter.keys: must be a list of strings"),
    # a list entry from env: splits on whitespace (a pasted newline just ends the key); a scalar never does
    ("gateway key newline", minimal(keys=[{"key": "env:NL"}]), "keys[0].key: must be visible ASCII without spaces or control characters"),
    ("pool key control", {"providers": {"openrouter": {"keys": ["env:CTL"]}}}, "providers.openrouter.keys[0]: must be visible ASCII without spaces or control characters"),
    ("strategy", minimal(providers={"openrouter": {"keys": ["env:OR1"], "key_strategy": "rr"}}), "providers.openrouter.key_strategy: must be one of round-robin, first, random"),
    ("cooldown", minimal(providers={"openrouter": {"keys": ["env:OR1"], "cooldown_s": -5}}), "providers.openrouter.cooldown_s: must be a number of seconds >= 0"),
    ("connect", minimal(providers={"openrouter": {"keys": ["env:OR1"], "connect_timeout_s": 0}}), "providers.openrouter.connect_timeout_s: must be a number of seconds > 0"),
    ("first byte", minimal(providers={"openrouter": {"keys": ["env:OR1"], "first_byte_timeout_s": -1}}), "providers.openrouter.first_byte_timeout_s: must be a number of seconds > 0"),
    ("priority", minimal(providers={"openrouter": {"keys": ["env:OR1"], "priority": 1.5}}), "providers.openrouter.priority: must be an integer"),
    ("max conns", minimal(providers={"openrouter": {"keys": ["env:OR1"], "max_connections": 0}}), "providers.openrouter.max_connections: must be a positive integer"),
    ("provider unknown", minimal(providers={"openrouter": {"keys": ["env:OR1"], "base_ur": "x"}}), "providers.openrouter.base_ur: unknown setting (did you mean base_url?)"),
    ("base_url scheme", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "ftp://h/v1"}}}, "providers.x.base_url: must be an http:// or https:// URL"),
    ("base_url host", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "http:///v1"}}}, "providers.x.base_url: must include a valid host"),
    ("base_url creds", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "https://u:p@h/v1"}}}, "providers.x.base_url: must not contain credentials (put keys in keys = [...])"),
    ("base_url query", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "https://h/v1?a=1"}}}, "providers.x.base_url: must not have a query or fragment"),
    ("base_url port", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "https://h:99999/v1"}}}, "providers.x.base_url: has an invalid port"),
    ("base_url space", {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "https://h/v 1"}}}, "providers.x.base_url: must be a URL without spaces or control characters"),
    ("proxy https", minimal(providers={"openrouter": {"keys": ["env:OR1"], "proxy": "https://p:3128"}}), "providers.openrouter.proxy: must be http://[user:pass@]host:port"),
    ("proxy no port", minimal(providers={"openrouter": {"keys": ["env:OR1"], "proxy": "http://proxy"}}), "providers.openrouter.proxy: must be http://[user:pass@]host:port"),
    ("proxy path", minimal(providers={"openrouter": {"keys": ["env:OR1"], "proxy": "http://proxy:3128/x"}}), "providers.openrouter.proxy: must be http://[user:pass@]host:port"),
    ("headers type", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": ["X-A: b"]}}), 'providers.openrouter.headers: must be a table of strings, e.g. { "X-Title" = "my-app" }'),
    ("header name", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": {"X Title": "a"}}}), "providers.openrouter.headers.X Title: not a valid HTTP header name"),
    ("header crlf", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": {"X-A": "a\r\nX-B: c"}}}), "providers.openrouter.headers.X-A: must not contain CR, LF or NUL"),
    ("header nul", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": {"X-A": "a\x00"}}}), "providers.openrouter.headers.X-A: must not contain CR, LF or NUL"),
    ("header value type", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": {"X-A": 1}}}), "providers.openrouter.headers.X-A: must be a string"),
    ("header forbidden", minimal(providers={"openrouter": {"keys": ["env:OR1"], "headers": {"Content-Length": "1"}}}), "providers.openrouter.headers.Content-Length: set by the gateway itself; cannot be configured"),
    ("provider name", {"providers": {"my provider": {"type": "openai", "keys": ["sk-" + "k" * 16]}}}, "providers.my provider: name must be letters, digits, '_', '.', '-' (it is used in URL paths)"),
    ("provider reserved", {"providers": {"v1": {"type": "openai", "keys": ["sk-" + "k" * 16]}}}, "providers.v1: name clashes with the gateway's own path /v1/; choose another"),
    ("routes table", minimal(routes={"match": "x"}), "routes: must be an array of tables ([[routes]])"),
    ("route match", minimal(routes=[{"model": "x"}]), "routes[0].match: required"),
    ("route match empty", minimal(routes=[{"match": ""}]), "routes[0].match: must not be empty"),
    ("route match type", minimal(routes=[{"match": ["gpt-4*"]}]), "routes[0].match: must be a string"),
    ("route model", minimal(routes=[{"match": "a", "model": ""}]), "routes[0].model: must not be empty"),
    ("route provider", minimal(routes=[{"match": "a"}, {"match": "b", "providers": ["foo"]}]), "routes[1].providers[0]: unknown provider 'foo'"),
    ("route order", minimal(routes=[{"match": "a", "provider_order": "DeepInfra"}]), "routes[0].provider_order: must be a list of strings"),
    ("route force", minimal(routes=[{"match": "a", "force_provider_order": "yes"}]), "routes[0].force_provider_order: must be true or false"),
    ("route unknown", minimal(routes=[{"match": "a", "provider": ["openrouter"]}]), "routes[0].provider: unknown setting (did you mean providers?)"),
    ("logging bool", minimal(logging={"chat": 1}), "logging.chat: must be true or false"),
    ("logging limit", minimal(logging={"chat_file_limit": 0}), "logging.chat_file_limit: must be a positive integer"),
    ("logging dir", minimal(logging={"dir": ""}), "logging.dir: must not be empty"),
    ("cache ttl", minimal(cache={"ttl_s": 0}), "cache.ttl_s: must be a number of seconds > 0"),
    ("cache entries", minimal(cache={"max_entries": 0}), "cache.max_entries: must be a positive integer"),
    ("cache unknown", minimal(cache={"ttl": 3}), "cache.ttl: unknown setting (did you mean ttl_s?)"),
    ("metrics", minimal(metrics={"enabled": "true"}), "metrics.enabled: must be true or false"),
]
# fmt: on


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_message(doc: dict[str, Any], expected: str) -> None:
    errs = errors_of(doc, {**ENV, "NL": OR_KEY_1 + "\n", "CTL": OR_KEY_1 + "\x01x"})
    assert expected in errs
    assert len(errs) == 1, errs


def test_all_errors_are_collected() -> None:
    doc = toml_doc(
        """
        [server]
        port = -1
        workers = "2"
        [providers.or]
        type = "openrouterx"
        keys = []
        [[keys]]
        name = "a"
        [[keys]]
        key = "gw-dup-0123456789"
        providers = ["foo"]
        [[keys]]
        key = "gw-dup-0123456789"
        [[routes]]
        model = "x"
        """
    )
    errs = errors_of(doc)
    for expected in (
        "server.port: must be an integer between 0 and 65535",
        "server.workers: must be a positive integer",
        "providers.or.type: must be one of openai, openrouter, anthropic",
        "providers.or.keys: empty key pool; add at least one key",
        "keys[0].key: required",
        "keys[1].providers[0]: unknown provider 'foo'",
        "keys[2].key: same key as keys[1]; each gateway key must be unique",
        "routes[0].match: required",
    ):
        assert expected in errs
    assert len(errs) == 8


def test_duplicate_key_names() -> None:
    doc = minimal(keys=[{"key": "gw-a-0123456789", "name": "team"}, {"key": "gw-b-0123456789", "name": "team"}])
    assert errors_of(doc) == ["keys[1].name: duplicate name 'team' (also keys[0])"]


@pytest.mark.parametrize(
    "proxy", ["", "http://proxy.internal:3128", "http://user:pa%40ss@10.0.0.1:8080", "http://[::1]:3128/"]
)
def test_valid_proxies(proxy: str) -> None:
    doc = minimal()
    doc["providers"]["openrouter"]["proxy"] = proxy
    assert parse_config(doc, ENV).providers["openrouter"].proxy == proxy


# --------------------------------------------------------------------------- warnings


def test_no_keys_warns_auth_off() -> None:
    cfg = parse_config(minimal(), ENV)
    assert "keys: no gateway keys configured; authentication is off" in cfg.warnings
    assert not any(w.startswith("keys:") for w in parse_config(minimal(keys=[{"key": "env:GW"}]), ENV).warnings)


def test_clean_config_has_no_warnings() -> None:
    doc = minimal(keys=[{"key": "env:GW"}], routes=[{"match": "gpt-4*", "provider_order": ["DeepInfra"]}])
    assert parse_config(doc, ENV).warnings == ()


@pytest.mark.parametrize(
    ("ptype", "base_url", "key", "error"),
    [
        ("openrouter", None, OAI_KEY, "providers.p.keys[0]: does not look like an OpenRouter key (they start with sk-or-)"),
        ("anthropic", None, OR_KEY_1, "providers.p.keys[0]: does not look like an Anthropic key (they start with sk-ant-)"),
        ("openai", None, "AIzaSyD-0123456789abcdefghijklmnop", "providers.p.keys[0]: does not look like an OpenAI key (they start with sk-)"),
        ("openai", "https://api.deepseek.com/v1", "ds-0123456789abcdef", "providers.p.keys[0]: does not look like a DeepSeek key (they start with sk-)"),
        # the host decides, not the type: an OpenRouter key sent to openrouter.ai by an openai-type provider
        ("openai", "https://openrouter.ai/api/v1", OAI_KEY, "providers.p.keys[0]: does not look like an OpenRouter key (they start with sk-or-)"),
        ("openai", "https://generativelanguage.googleapis.com/v1beta/openai", "AIzaSyD-0123456789abcdefghijklmnop", None),
        # not the vendor's official host: a local server or a proxy takes any key
        ("openrouter", "http://127.0.0.1:8000/api/v1", "x", None),
        ("anthropic", "https://claude-proxy.internal", "x", None),
        ("openai", "http://localhost:11434/v1", "x", None),
        ("openrouter", None, OR_KEY_1, None),
        ("anthropic", None, ANT_KEY, None),
        ("openai", None, OAI_KEY, None),
    ],
)
def test_key_format_errors(ptype: str, base_url: str | None, key: str, error: str | None) -> None:
    provider: dict[str, Any] = {"type": ptype, "keys": ["env:K"]}
    if base_url:
        provider["base_url"] = base_url
    doc = {"keys": [{"key": "env:GW"}], "providers": {"p": provider}}
    env = {"K": key, "GW": GW_KEY}
    if error is None:
        parse_config(doc, env)
        return
    errs = errors_of(doc, env)
    assert len(errs) == 1 and errs[0].startswith(error), errs
    assert 'key_format = "any"' in errs[0]
    assert key not in errs[0] and key[-4:] not in errs[0]  # neither the value nor its masked form
    # key_format = "any" turns the check off (a server that takes other keys)
    provider["key_format"] = "any"
    assert parse_config(doc, env).providers["p"].keys == (key,)


def test_key_format_names_each_bad_key_by_index() -> None:
    doc = {"providers": {"openrouter": {"keys": ["env:A", "env:B", "env:C"]}}}
    errs = errors_of(doc, {"A": OR_KEY_1, "B": ANT_KEY, "C": "plain-0123456789"})
    assert [e.split(":")[0] for e in errs] == ["providers.openrouter.keys[1]", "providers.openrouter.keys[2]"]


def test_key_format_must_be_known() -> None:
    errs = errors_of({"providers": {"p": {"type": "openai", "keys": [OAI_KEY], "key_format": "sk-"}}})
    assert errs == ["providers.p.key_format: must be one of auto, any"]


def test_literal_secret_warnings() -> None:
    doc = {"keys": [{"key": GW_KEY}], "providers": {"openrouter": {"keys": ["env:OR1", OR_KEY_2]}}}
    cfg = parse_config(doc, ENV)
    assert "providers.openrouter.keys[1]: literal secret in config file; prefer env:NAME" in cfg.warnings
    assert "keys[0].key: literal secret in config file; prefer env:NAME" in cfg.warnings
    assert not any("keys[0]: literal" in w and w.startswith("providers") for w in cfg.warnings)


def _write(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_readable_file_with_literal_secrets_warns(tmp_path: Path) -> None:
    literal = f'[providers.openrouter]\nkeys = ["{OR_KEY_1}"]\n'
    path = _write(tmp_path, literal, 0o644)
    warning = f"{path}: config file is readable by others and holds literal secrets (chmod 600 {path})"
    assert warning in load_config(str(path), {}).warnings
    os.chmod(path, 0o600)
    assert not any("readable by others" in w for w in load_config(str(path), {}).warnings)
    env_only = _write(tmp_path, '[providers.openrouter]\nkeys = ["env:OR1"]\n', 0o644)
    assert not any("readable by others" in w for w in load_config(str(env_only), ENV).warnings)


def test_duplicate_pool_key_warns() -> None:
    cfg = parse_config({"providers": {"openrouter": {"keys": ["env:OR1", "env:OR1"]}}}, ENV)
    assert "providers.openrouter.keys[1]: same key as keys[0]; a pool rotates over distinct keys" in cfg.warnings


def test_shadowed_route_warns() -> None:
    cfg = parse_config(
        minimal(routes=[{"match": "gpt-4*"}, {"match": "gpt-4o"}, {"match": "claude-*"}, {"match": "claude-*"}]), ENV
    )
    assert "routes[1].match: never reached: routes[0] (match 'gpt-4*') matches first" in cfg.warnings
    assert "routes[3].match: never reached: routes[2] (match 'claude-*') matches first" in cfg.warnings
    assert not any(w.startswith("routes[2]") for w in cfg.warnings)


def test_provider_order_without_openrouter_warns() -> None:
    doc = {
        "providers": {"deepseek": {"type": "openai", "keys": ["env:OAI"]}},
        "routes": [{"match": "x", "provider_order": ["A"]}],
    }
    cfg = parse_config(doc, ENV)
    assert (
        "routes[0].provider_order: has no effect: none of the route's providers is of type openrouter" in cfg.warnings
    )


def test_no_providers_warns() -> None:
    cfg = parse_config({}, {})
    assert "providers: none configured; routed requests will get 404" in cfg.warnings


# --------------------------------------------------------------------------- secrets never leak


def test_no_secret_in_any_error_or_warning() -> None:
    """Secrets put in every wrong place: the messages name fields, never values."""
    doc: dict[str, Any] = {
        "server": {"host": 5, "portt": OR_KEY_1},
        "keys": [
            {"key": GW_KEY, "name": "a", "providers": ["nope"]},
            {"key": GW_KEY, "name": "a"},
            {"key": OAI_KEY + " trailing"},
        ],
        "providers": {
            "openrouter": {"keys": [ANT_KEY, ANT_KEY], "proxy": f"https://u:{OR_KEY_2}@p:1"},
            "anthropic": {"keys": ["env:OR1"], "headers": {"X-Secret": OR_KEY_2 + "\n"}},
            "x": {"type": "openai", "keys": [OAI_KEY], "base_url": f"https://u:{OR_KEY_2}@h/v1"},
        },
    }
    errs = errors_of(doc)
    assert len(errs) >= 6
    text = "\n".join(errs)
    assert "does not look like" in text  # misplaced keys are errors, named by index only
    for secret in SECRETS:
        assert secret not in text
    # and the warnings of a valid config
    ok = {
        "keys": [{"key": GW_KEY}],
        "providers": {"openrouter": {"keys": [OR_KEY_1, OR_KEY_1]}, "anthropic": {"keys": ["env:ANT"]}},
    }
    warnings = "\n".join(parse_config(ok, ENV).warnings)
    assert "same key as" in warnings and "literal secret" in warnings
    for secret in SECRETS:
        assert secret not in warnings


# --------------------------------------------------------------------------- mask_key


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("sk-or-v1-abcdef0123456789a1b2", "sk-or-…a1b2"),
        (OR_KEY_1, "sk-or-…1c0d"),
        (ANT_KEY, "sk-ant-…7xAA"),
        (OAI_KEY, "sk-proj-…Wx34"),
        ("sk-0123456789abcdefwxyz", "sk-…wxyz"),
        ("gw-7d3c1f0e9b8a6d5c", "…6d5c"),
        ("0123456789ab", "…89ab"),
        ("0123456789a", "…9a"),
        ("12345678", "…78"),
        ("1234567", "…7"),
        ("abc", "…"),
        ("", "…"),
    ],
)
def test_mask_key(key: str, masked: str) -> None:
    assert mask_key(key) == masked


def test_mask_key_hides_most_of_any_key() -> None:
    for n in range(80):
        key = "".join(chr(ord("a") + i % 26) for i in range(n))
        shown = mask_key(key).replace("…", "")
        assert len(shown) <= max(n // 4, 4) if n >= 12 else len(shown) <= n // 4


# --------------------------------------------------------------------------- load / find


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nport = 9000\n[providers.openrouter]\nkeys = ["env:OR1"]\n')
    cfg = load_config(str(path), ENV)
    assert isinstance(cfg, Config)
    assert cfg.server.port == 9000 and cfg.path == str(path)


def test_load_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert info.value.errors[0].startswith(f"{missing}: cannot read config file")

    bad = tmp_path / "bad.toml"
    bad.write_text(f'[providers.openrouter]\nkeys = ["{OR_KEY_1}"\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{bad}: TOML syntax error:")
    assert OR_KEY_1 not in info.value.errors[0]

    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(binary))
    assert info.value.errors == [f"{binary}: not valid UTF-8 (byte offset 5)"]


def test_find_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAWGW_CONFIG", raising=False)
    assert find_config_path(None) is None
    assert find_config_path("other.toml") == "other.toml"  # named: returned even if missing
    (tmp_path / "gateway.toml").write_text("")
    assert find_config_path(None) == "gateway.toml"
    monkeypatch.setenv("RAWGW_CONFIG", "/etc/rawgw.toml")
    assert find_config_path(None) == "/etc/rawgw.toml"
    assert find_config_path("cli.toml") == "cli.toml"


# --------------------------------------------------------------------------- the example file

EXAMPLE_ENV = {
    "GATEWAY_API_KEY": GW_KEY,
    "TEAM_CLAUDE_KEY": "gw-team-claude-0123456789abcdef",
    "OPENROUTER_KEY_1": OR_KEY_1,
    "OPENROUTER_KEY_2": OR_KEY_2,
    "DEEPSEEK_API_KEY": "sk-0123456789abcdef0123456789abcdef",
    "ANTHROPIC_API_KEY": ANT_KEY,
}


def test_example_file_loads() -> None:
    cfg = load_config(str(EXAMPLE), EXAMPLE_ENV)
    assert cfg.warnings == ()
    assert list(cfg.providers) == ["openrouter", "deepseek", "anthropic"]
    assert cfg.providers["openrouter"].keys == (OR_KEY_1, OR_KEY_2)
    assert cfg.providers["deepseek"].type == "openai"
    assert cfg.providers["deepseek"].base_url == "https://api.deepseek.com/v1"
    assert cfg.providers["anthropic"].type == "anthropic"
    assert cfg.routes == (
        Route(
            match="gpt-4*",
            model="deepseek/deepseek-chat-v3-0324",
            providers=("openrouter", "deepseek"),
            provider_order=("DeepInfra", "Parasail"),
            provider_models=(("deepseek", "deepseek-chat"),),
        ),
    )
    pinned = [k for k in cfg.keys if k.providers]
    assert [k.providers for k in pinned] == [("anthropic",)]


def test_example_file_needs_its_env() -> None:
    env = dict(EXAMPLE_ENV)
    del env["OPENROUTER_KEY_2"]
    with pytest.raises(ConfigError) as info:
        load_config(str(EXAMPLE), env)
    assert info.value.errors == ["providers.openrouter.keys[1]: environment variable OPENROUTER_KEY_2 is not set"]


def test_example_file_shows_every_option() -> None:
    """Every field of every section appears in the example, with its default where the
    example is not demonstrating something else."""
    doc = tomllib.loads(EXAMPLE.read_text())
    settable = {
        "server": ServerConfig,
        "logging": LoggingConfig,
        "cache": CacheConfig,
        "metrics": MetricsConfig,
        "state": StateConfig,
        "models": ModelsConfig,
    }
    for section, cls in settable.items():
        assert set(doc[section]) == {f.name for f in dataclasses.fields(cls)}, section
        for f in dataclasses.fields(cls):
            value = doc[section][f.name]
            assert (tuple(value) if isinstance(value, list) else value) == f.default, (section, f.name)
    derived = {"name", "scheme", "host", "port", "base_path"}
    assert set(doc["providers"]["openrouter"]) == {f.name for f in dataclasses.fields(Provider)} - derived
    assert set(doc["keys"][0]) == {f.name for f in dataclasses.fields(GatewayKey)}
    assert set(doc["routes"][0]) == {f.name for f in dataclasses.fields(Route)}
    # one comment on every option line
    for line in EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, line


# --------------------------------------------------------------------------- issue 10.8


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        ("llm_router_config.json", '{"providers": [{"name": "or", "priority": 1}]}', "a JSON file"),
        ("mapping.toml", '[{"model": "gpt-4", "provider": ["DeepInfra"]}]', "a JSON file"),
        ("litellm.yaml", "model_list:\n  - model_name: gpt-4\n", "a YAML file"),
        ("config", "# comment\nmodel_list:\n  - model_name: gpt-4\n", "a YAML file"),
        ("proxy.env", "OPENROUTER_KEYS=sk-or-v1-aaaa,sk-or-v1-bbbb\n", "a .env file"),
    ],
)
def test_a_file_of_another_format_points_at_import(tmp_path: Path, name: str, text: str, what: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), ENV)
    assert info.value.errors == [f"{path}: {what}, not TOML; convert it with `rawgw import {path}`"]


def test_broken_toml_is_still_a_toml_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[server\nport = 8080\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), ENV)
    (line,) = info.value.errors
    assert line.startswith(f"{path}: TOML syntax error: ") and "rawgw import" not in line


def test_mask_keys_tells_same_looking_keys_apart() -> None:
    a, b, c = "sk-or-v1-first-one-key", "sk-or-v1-second-two-key", "sk-or-v1-other-a1b2"
    assert mask_key(a) == mask_key(b)
    assert mask_keys([a, b, c]) == ["keys[0] sk-or-…-key", "keys[1] sk-or-…-key", "sk-or-…a1b2"]
    assert mask_keys([c, OR_KEY_1]) == [mask_key(c), mask_key(OR_KEY_1)]
