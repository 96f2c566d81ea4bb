"""The key-rotating OpenRouter proxy's ``config.yml``.

YAML needs PyYAML, an optional extra (``pip install 'rawgw[yaml]'``): the gateway
itself never reads YAML, so it is not a dependency of ``rawgw serve``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from rawgw.config import KEY_STRATEGIES
from rawgw.importing.merge import ImportFailed, Merge, env_token

INSTALL_HINT: Final = "reading YAML needs PyYAML: pip install 'rawgw[yaml]' (or: pip install pyyaml)"
# a line "name:" or "name: value" at the start: a YAML mapping, never a KEY=VALUE .env line
_YAML_KEY: Final = re.compile(r"[A-Za-z_][\w.-]*:(\s|$)")


def looks_like_yaml(text: str) -> bool:
    """The first line that says something is a YAML mapping key (``server:``)."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        return bool(_YAML_KEY.match(stripped)) and "=" not in stripped.split(":", 1)[0]
    return False


def load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ImportFailed(f"this is a YAML file; {INSTALL_HINT}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's message quotes the offending line, which may hold a key: position only
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ImportFailed(f"YAML syntax error{where}") from None


def import_yaml(text: str, merge: Merge) -> str:
    doc = load_yaml(text)
    if isinstance(doc, dict) and isinstance(doc.get("openrouter"), dict):
        return import_rotating_proxy(doc, merge)
    raise ImportFailed(
        "YAML of an unknown shape; expected the key-rotating OpenRouter proxy's config.yml "
        "(server: {access_key, port}, openrouter: {keys: [...]})"
    )


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportFailed(f"{name}: must be a mapping")
    return value


def _number(section: dict[str, Any], where: str, name: str) -> float | None:
    value = section.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ImportFailed(f"{where}.{name}: must be a number >= 0")
    return value


def import_rotating_proxy(doc: dict[str, Any], merge: Merge) -> str:
    server = _section(doc, "server")
    orr = _section(doc, "openrouter")
    proxy = _section(doc, "requestProxy")
    parts: list[str] = []
    ignored = [f"{k}" for k in doc if k not in ("server", "openrouter", "requestProxy")]

    for name in ("host", "port"):
        if name in server:
            value = server[name]
            if name == "port" and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535):
                raise ImportFailed("server.port: must be a port number (0-65535)")
            if name == "host" and (not isinstance(value, str) or not value):
                raise ImportFailed("server.host: must be a non-empty string")
            merge.set_server(name, value, f"server.{name}")
    access_key = server.get("access_key")
    if access_key is not None:
        if not isinstance(access_key, str) or not access_key:
            raise ImportFailed("server.access_key: must be a non-empty string")
        merge.keys.append(
            {
                "key": merge.secret(access_key, "GATEWAY_API_KEY", "server.access_key: the key clients send"),
                "name": merge.unique_key_name("default"),
            }
        )
        parts.append("gateway key")
    levels = [k for k in ("log_level", "http_log_level") if k in server]
    if levels:
        merge.notes.append(f"server.{'/'.join(levels)}: use `rawgw serve --log-level debug|info|warning|error`")
    ignored += [f"server.{k}" for k in server if k not in ("host", "port", "access_key", "log_level", "http_log_level")]

    name = merge.unique_provider("openrouter")
    table: dict[str, Any] = {"type": "openrouter"}
    base_url = orr.get("base_url")
    if base_url not in (None, ""):
        if not isinstance(base_url, str):
            raise ImportFailed("openrouter.base_url: must be a string")
        table["base_url"] = base_url.rstrip("/")
    keys = orr.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ImportFailed("openrouter.keys: must be a list of keys")
    if keys:
        table["keys"] = [merge.secret(k, f"RAWGW_{env_token(name)}_KEY_{i}", f"openrouter.keys[{i - 1}]") for i, k in enumerate(keys, 1)]
    else:
        # the proxy also read its pool from $OPENROUTER_KEYS
        table["keys"] = [merge.placeholder(f"RAWGW_{env_token(name)}_KEY_1", "an OpenRouter key (the proxy read OPENROUTER_KEYS)")]
    strategy = orr.get("key_selection_strategy")
    if strategy is not None:
        if strategy not in KEY_STRATEGIES:
            raise ImportFailed("openrouter.key_selection_strategy: must be one of " + ", ".join(KEY_STRATEGIES))
        table["key_strategy"] = strategy
    if orr.get("key_selection_opts"):
        merge.notes.append("openrouter.key_selection_opts not imported: rawgw picks keys by key_strategy alone")
    cooldown = _number(orr, "openrouter", "rate_limit_cooldown")
    if cooldown is not None:
        table["cooldown_s"] = cooldown
    free_only = orr.get("free_only")
    if free_only is not None:
        if not isinstance(free_only, bool):
            raise ImportFailed("openrouter.free_only: must be true or false")
        table["free_only"] = free_only
        if free_only:
            parts.append("free models only")
    if _number(orr, "openrouter", "google_rate_delay"):
        merge.notes.append("openrouter.google_rate_delay not imported: a 429 rests the key (cooldown) instead")
    if proxy.get("enabled"):
        url = proxy.get("url")
        if not isinstance(url, str) or not url:
            raise ImportFailed("requestProxy.url: required when requestProxy.enabled is true")
        # the URL may carry the proxy's password: never a literal in the written file
        table["proxy"] = merge.secret(url, "RAWGW_OPENROUTER_PROXY", "requestProxy.url") if "@" in url else url
        parts.append("SOCKS5 proxy" if url.lower().startswith("socks") else "proxy")
    merge.providers[name] = table
    parts.insert(0, f"provider {name} ({len(table['keys'])} keys)")

    enable_cache = orr.get("enable_cache", True)
    ttl = _number(orr, "openrouter", "cache_ttl")
    if enable_cache is False:
        merge.models["cache_ttl_s"] = 0
    elif ttl is not None:
        merge.models["cache_ttl_s"] = ttl
    public = orr.get("public_endpoints")
    if public:
        if not isinstance(public, list) or not all(isinstance(p, str) and p.startswith("/") for p in public):
            raise ImportFailed("openrouter.public_endpoints: must be a list of paths starting with /")
        paths = list(merge.server.get("public_paths", ["/health"]))
        paths += [p for p in public if p not in paths]
        merge.server["public_paths"] = paths
        parts.append("public " + ", ".join(public))
    ignored += [
        f"openrouter.{k}"
        for k in orr
        if k
        not in (
            "keys", "enable_cache", "cache_ttl", "base_url", "public_endpoints", "key_selection_strategy",
            "key_selection_opts", "rate_limit_cooldown", "free_only", "google_rate_delay",
        )
    ]  # fmt: skip
    ignored += [f"requestProxy.{k}" for k in proxy if k not in ("enabled", "url")]
    if ignored:
        merge.notes.append("config.yml settings not imported: " + ", ".join(ignored))
    return "key-rotating proxy config.yml (" + ", ".join(parts) + ")"
