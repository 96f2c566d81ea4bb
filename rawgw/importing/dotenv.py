"""``.env`` files: the FastAPI OpenRouter gateway's (TARGET_SERVER_URL, TARGET_API_KEY,
GATEWAY_API_KEY, logging, provider injection), the key-rotating proxy's OPENROUTER_KEYS,
and the Node OpenAI gateway's (OPENROUTER_API_KEY, GEMINI_API_KEY, PORT, rate limit,
cache, retries)."""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from rawgw.config import RESERVED_PROVIDER_NAMES
from rawgw.importing.merge import ImportFailed, Merge, env_token
from rawgw.importing.presets import KNOWN_PROVIDERS, NODE_GEMINI_ALIASES, NODE_OPENROUTER_ALIASES

_LINE: Final = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
# A .env holding one of these is one rawgw imports; the others below are read with them.
ANCHORS: Final = (
    "TARGET_SERVER_URL", "TARGET_API_KEY", "GATEWAY_API_KEY", "OPENROUTER_KEYS", "LOG_FILE_LIMIT",
    "PROVIDER_INJECTION_ENABLED", "LOG_CHAT_ENABLED", "OPENROUTER_API_KEY", "GEMINI_API_KEY",
)  # fmt: skip
_ALSO_READ: Final = (
    "PORT", "HOST", "RATE_LIMIT_WINDOW", "RATE_LIMIT_MAX_REQUESTS", "CACHE_TTL", "MAX_RETRIES", "RETRY_DELAY",
    "OPENCODE_API_KEY",
)  # fmt: skip
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``export``, quotes, blank lines and ``#`` comments allowed.

    Errors name the line number only: a malformed line may well hold a secret.
    """
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.fullmatch(stripped)
        if m is None:
            raise ImportFailed(f"line {lineno}: not a KEY=VALUE line (and the file is not JSON or YAML)")
        name, value = m.group(1), m.group(2).strip()
        if value[:1] in ('"', "'"):
            end = value.find(value[0], 1)
            if end < 0:
                raise ImportFailed(f"line {lineno}: unterminated quote")
            value = value[1:end]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[name] = value
    return values


def _int(env: dict[str, str], name: str, lo: int = 0) -> int | None:
    if name not in env:
        return None
    try:
        value = int(env[name])
    except ValueError:
        raise ImportFailed(f"{name}: must be an integer") from None
    if value < lo:
        raise ImportFailed(f"{name}: must be an integer >= {lo}")
    return value


def _split_keys(value: str) -> list[str]:
    """A key pool in one variable: commas or whitespace between keys."""
    return [k for k in re.split(r"[,\s]+", value) if k]


def import_dotenv(text: str, merge: Merge) -> str:
    env = {k: v for k, v in parse_dotenv(text).items() if v != ""}
    if not any(k in env for k in ANCHORS):
        raise ImportFailed(
            "not a recognised format: not JSON or YAML, and no .env setting rawgw imports (" + ", ".join(ANCHORS) + ")"
        )
    ignored = sorted(set(env) - set(ANCHORS) - set(_ALSO_READ))
    if ignored:
        merge.notes.append(".env settings not imported: " + ", ".join(ignored))
    parts: list[str] = []
    providers = _target_provider(env, merge, parts) + _node_providers(env, merge, parts)
    if "GATEWAY_API_KEY" in env:
        key_name = merge.unique_key_name("default")
        merge.keys.append(
            {"key": merge.secret(env["GATEWAY_API_KEY"], "GATEWAY_API_KEY", "the gateway key clients send"), "name": key_name}
        )
        parts.append("gateway key")
    _node_settings(env, merge, providers, parts)
    if "LOG_CHAT_ENABLED" in env:
        merge.logging["chat"] = env["LOG_CHAT_ENABLED"].strip().lower() in _TRUE
    limit = _int(env, "LOG_FILE_LIMIT", lo=1)
    if limit is not None:
        merge.logging["chat_file_limit"] = limit
    if merge.logging:
        parts.append("logging")
    if env.get("PROVIDER_INJECTION_ENABLED", "true").strip().lower() not in _TRUE:
        merge.provider_injection = False
        parts.append("provider injection off")
    return "env file (" + ", ".join(parts) + ")"


def _target_provider(env: dict[str, str], merge: Merge, parts: list[str]) -> list[str]:
    """The FastAPI gateway's single upstream (TARGET_SERVER_URL + TARGET_API_KEY), or the
    key-rotating proxy's OPENROUTER_KEYS pool."""
    url = env.get("TARGET_SERVER_URL", "")
    pool = _split_keys(env.get("OPENROUTER_KEYS", ""))
    if not pool and "TARGET_API_KEY" in env:
        pool = [env["TARGET_API_KEY"]]
    if not url and not pool:
        return []
    # The tools this reads were OpenRouter proxies: no URL means OpenRouter.
    ptype = "openrouter" if not url or "openrouter.ai" in url else "openai"
    name = merge.unique_provider("openrouter" if ptype == "openrouter" else provider_name_from_url(url))
    table: dict[str, Any] = {"type": ptype}
    if url:
        table["base_url"] = url.rstrip("/")
    var = f"RAWGW_{env_token(name)}_KEY"
    if pool:
        table["keys"] = [merge.secret(key, f"{var}_{i}", f"key {i} of the .env upstream key pool") for i, key in enumerate(pool, 1)]
    else:
        table["keys"] = [merge.placeholder(f"{var}_1", f"a key for {url or 'the upstream'}")]
    merge.providers[name] = table
    if merge.target_provider is None:
        merge.target_provider = name
    parts.append(f"provider {name} ({len(table['keys'])} keys)")
    return [name]


def _node_providers(env: dict[str, str], merge: Merge, parts: list[str]) -> list[str]:
    """The Node gateway's OPENROUTER_API_KEY / GEMINI_API_KEY, with its built-in model table
    as routes: clients asking for gpt-4 keep getting what they got (see presets)."""
    made: list[str] = []
    gemini: str | None = None
    if "GEMINI_API_KEY" in env:
        ptype, url = KNOWN_PROVIDERS["gemini"]
        gemini = merge.unique_provider("gemini")
        keys = _split_keys(env["GEMINI_API_KEY"])
        merge.providers[gemini] = {
            "type": ptype,
            "base_url": url,
            "keys": [merge.secret(k, f"RAWGW_{env_token(gemini)}_KEY_{i}", f"GEMINI_API_KEY ({i})") for i, k in enumerate(keys, 1)],
            # Google's names only; the Node gateway sent every gemini-* model there first
            "models": ["gemini-*", "gemma-*"],
            "priority": 1,
        }
        made.append(gemini)
        parts.append(f"provider {gemini}")
    openrouter: str | None = None
    if "OPENROUTER_API_KEY" in env:
        openrouter = merge.unique_provider("openrouter")
        keys = _split_keys(env["OPENROUTER_API_KEY"])
        merge.providers[openrouter] = {
            "type": "openrouter",
            "keys": [merge.secret(k, f"RAWGW_{env_token(openrouter)}_KEY_{i}", f"OPENROUTER_API_KEY ({i})") for i, k in enumerate(keys, 1)],
            "priority": 2,
        }
        made.append(openrouter)
        parts.append(f"provider {openrouter}")
    added = 0
    for alias, model in NODE_OPENROUTER_ALIASES.items():
        if openrouter is not None and not any(r["match"] == alias for r in merge.routes):
            merge.routes.append({"match": alias, "model": model, "providers": [openrouter]})
            added += 1
    for alias, model in NODE_GEMINI_ALIASES.items():
        if gemini is not None and not any(r["match"] == alias for r in merge.routes):
            merge.routes.append({"match": alias, "model": model, "providers": [gemini]})
            added += 1
    if added:
        parts.append(f"{added} model aliases of the Node gateway (gpt-4 -> {NODE_OPENROUTER_ALIASES['gpt-4']}, ...)")
    if "OPENCODE_API_KEY" in env:
        merge.notes.append("OPENCODE_API_KEY not imported: the OpenCode server has no OpenAI-compatible API rawgw can front")
    return made


def _node_settings(env: dict[str, str], merge: Merge, providers: list[str], parts: list[str]) -> None:
    port = _int(env, "PORT", lo=0)
    if port is not None:
        if port > 65535:
            raise ImportFailed("PORT: must be a port number (0-65535)")
        merge.set_server("port", port, "PORT")
        parts.append(f"port {port}")
    if "HOST" in env:
        merge.set_server("host", env["HOST"], "HOST")
    window = _int(env, "RATE_LIMIT_WINDOW", lo=1)
    max_requests = _int(env, "RATE_LIMIT_MAX_REQUESTS", lo=1)
    if window is not None or max_requests is not None:
        # The Node gateway's defaults: 100 requests per 60000 ms.
        rpm = max(1, round((max_requests or 100) * 60000 / (window or 60000)))
        keys = [k for k in merge.keys if "rate_limit_rpm" not in k]
        if keys:
            for k in keys:
                k["rate_limit_rpm"] = rpm
                k["rate_limit_burst"] = max_requests or 100
            parts.append(f"rate limit {rpm} rpm")
        else:
            merge.notes.append(
                f"RATE_LIMIT_WINDOW/RATE_LIMIT_MAX_REQUESTS: rawgw limits each gateway key, and this config has none "
                f"(auth is off, as in the Node gateway); add [[keys]] with rate_limit_rpm = {rpm} to limit clients"
            )
    cache_ms = _int(env, "CACHE_TTL", lo=0)
    if cache_ms is not None:
        if cache_ms == 0:
            merge.cache["enabled"] = False
        else:
            merge.cache.update({"enabled": True, "ttl_s": cache_ms / 1000})
        parts.append("response cache")
    retries = _int(env, "MAX_RETRIES", lo=0)
    delay_ms = _int(env, "RETRY_DELAY", lo=0)
    for name in providers:
        if retries is not None:
            merge.providers[name]["max_retries"] = retries
        if delay_ms is not None:
            merge.providers[name]["retry_backoff_s"] = delay_ms / 1000
    if providers and (retries is not None or delay_ms is not None):
        parts.append("retries")


def provider_name_from_url(url: str) -> str:
    """``https://api.deepseek.com/v1`` → ``deepseek``: a readable provider name."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    labels = [label for label in host.split(".") if label not in ("api", "www")]
    candidate = labels[0] if labels else ""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", candidate) or candidate in RESERVED_PROVIDER_NAMES:
        return "upstream"
    return candidate

