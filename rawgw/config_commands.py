"""The config-facing commands: ``rawgw check``, ``rawgw init`` and ``rawgw import``.

Each function returns the process exit code and prints for a human; the CLI only
parses arguments and calls them. Output convention: a command's report goes to
stdout (including ``check``'s list of errors, which *is* its report); a command that
cannot do its job at all (no config, file exists, unreadable input) says so on stderr.

Secrets found anywhere are printed masked (:func:`rawgw.config.mask_key`) and never
written into a generated TOML file: that file holds ``env:NAME`` references only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Final

from rawgw.config import (
    Config,
    ConfigError,
    find_config_path,
    mask_key,
    mask_keys,
)
from rawgw.configfile import load_config
from rawgw.importing.run import GENERATE_KEY
from rawgw.presets import PRESETS

__all__ = ["cmd_check", "cmd_import", "cmd_init"]

_NOT_FOUND_HINT: Final = "create one with `rawgw init`, or try rawgw without one: `rawgw demo`"


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- check


def cmd_check(path: str | None) -> int:
    """Validate a config and print what the gateway would run with (secrets masked)."""
    found = find_config_path(path)
    if found is None:
        _err(f"rawgw: no config file (-c, $RAWGW_CONFIG or ./gateway.toml); {_NOT_FOUND_HINT}")
        return 2
    if not os.path.exists(found):
        _err(f"rawgw: config file {found} not found; {_NOT_FOUND_HINT}")
        return 2
    try:
        config = load_config(found)
    except ConfigError as exc:
        count = len(exc.errors)
        print(f"{found}: invalid ({count} error{'s' if count != 1 else ''})")
        for line in exc.errors:
            print(line)
        return 1
    print(f"{found}: valid")
    for line in summarize(config):
        print(line)
    return 0


def summarize(config: Config) -> list[str]:
    """Human summary of a valid config; every key value passes through mask_key."""
    s = config.server
    host = f"[{s.host}]" if ":" in s.host else s.host
    lines = [f"server: listening on http://{host}:{s.port} (workers {s.workers})"]

    lines.append(f"providers ({len(config.providers)}):")
    for p in config.providers.values():
        lines.append(f"  {p.name}: type {p.type}, {p.base_url}, priority {p.priority}, key_strategy {p.key_strategy}")
        lines.append(f"    keys ({len(p.keys)}): " + ", ".join(mask_keys(p.keys)))
        lines.append("    models: " + _list(p.models, "none"))
        if p.free_only:
            lines.append("    free_only: free models only")
        if p.proxy:
            lines.append("    proxy: configured")
        if p.headers:
            lines.append("    headers: " + ", ".join(name for name, _ in p.headers))

    if config.groups:
        lines.append(f"groups ({len(config.groups)}):")
        lines.extend(f"  /{name}/... -> {', '.join(members)} (by priority, with failover)" for name, members in config.groups.items())

    lines.append(f"routes ({len(config.routes)}):")
    for r in config.routes:
        line = f"  {r.match} -> {r.model or '(model unchanged)'}; providers {_list(r.providers, 'by models/priority')}"
        if r.provider_order:
            forced = " (forced)" if r.force_provider_order else ""
            line += f"; provider_order {_list(r.provider_order, '')}{forced}"
        lines.append(line)

    lines.append(f"gateway keys ({len(config.keys)}):" + ("" if config.keys else " none, authentication is off"))
    for k in config.keys:
        limits = [f"{k.rate_limit_rpm} rpm, burst {k.rate_limit_burst}"] if k.rate_limit_rpm else []
        if k.rate_limit_tpm:
            limits.append(f"{k.rate_limit_tpm} tpm")
        rate = ", ".join(limits) or "no rate limit"
        lines.append(f"  {k.name} ({mask_key(k.key)}): providers {_list(k.providers, 'all')}; models {_list(k.models, 'all')}; {rate}")

    log = config.logging
    lines.append(
        f"logging: dir {log.dir}, access {_onoff(log.access)}, chat {_onoff(log.chat)} "
        f"(keep {log.chat_file_limit}), errors {_onoff(log.errors)}, "
        + (f"rotated at {log.max_bytes} bytes (keep {log.backups})" if log.max_bytes else "never rotated (max_bytes 0)")
    )
    cache = config.cache
    lines.append(f"cache: {_onoff(cache.enabled)}" + (f" (ttl {cache.ttl_s:g} s, {cache.max_entries} entries)" if cache.enabled else ""))
    lines.append(f"metrics: {_onoff(config.metrics.enabled)}")
    lines.append(f"model lists: cached {config.models.cache_ttl_s:g} s per provider")
    st = config.state
    if st.shared:
        from rawgw.state.url import mask_url, parse_state_url

        try:
            shown = parse_state_url(st.url).masked()
        except ValueError:
            shown = mask_url(st.url)
        lines.append(f"state: shared on {shown} (prefix {st.prefix!r}, timeout {st.timeout_ms} ms)")
    else:
        lines.append("state: in this process (no [state] url)")
    if config.warnings:
        lines.append(f"warnings ({len(config.warnings)}):")
        lines.extend(f"  {w}" for w in config.warnings)
    return lines


def _list(items: tuple[str, ...], empty: str) -> str:
    return ", ".join(items) if items else empty


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


# --------------------------------------------------------------------------- init


def starter_config(provider: str = "openrouter") -> dict[str, Any]:
    """The config ``rawgw init`` writes: one preset provider behind one gateway key
    (OpenRouter, the default, with the worked example's route)."""
    preset = PRESETS[provider]
    table: dict[str, Any] = {"type": preset.type, "base_url": preset.base_url, "keys": [f"env:{preset.env}"]}
    table.update({"key_strategy": "round-robin", "cooldown_s": 14400, "priority": 1, "models": list(preset.models)})
    out: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "keys": [{"key": "env:GATEWAY_API_KEY", "name": "default"}],
        "providers": {preset.name: table},
    }
    if provider == "openrouter":
        out["routes"] = [
            {
                "match": "gpt-4*",
                "model": "deepseek/deepseek-chat-v3-0324",
                "providers": ["openrouter"],
                "provider_order": ["DeepInfra", "Parasail"],
            }
        ]
    out["logging"] = {"dir": "logs", "access": True, "chat": False, "chat_file_limit": 15, "errors": True}
    return out


def _init_header(provider: str) -> str:
    preset = PRESETS[provider]
    lines = [
        f"# rawgw starter config (written by `rawgw init --provider {provider}`). Every option: gateway.toml.example.",
        '# Secrets are "env:NAME" references, read from the environment at start.',
        f"# {preset.comment}",
    ]
    if provider == "openrouter":
        lines.append("# The route below sends any gpt-4* request to DeepSeek V3 on OpenRouter,")
        lines.append("# asking OpenRouter to try the DeepInfra, then the Parasail endpoints.")
    return "\n".join(lines) + "\n\n"


_INIT_FOOTER: Final = """
# More than one process (--workers N, or several instances behind a balancer)? Share rate
# limits, key cooldowns, breakers, the cache and usage counters on a Redis/Valkey server:
# [state]
# url = "env:RAWGW_STATE_URL"   # redis://[user:pass@]host:6379/0, rediss://..., unix:///path
"""


def cmd_init(path: str = "gateway.toml", force: bool = False, provider: str = "openrouter") -> int:
    """Write a starter config for one preset provider; an existing file is only replaced with ``force``."""
    preset = PRESETS.get(provider)
    if preset is None:
        _err(f"rawgw init: unknown provider '{provider}'; one of " + ", ".join(PRESETS))
        return 2
    if os.path.exists(path) and not force:
        _err(f"rawgw init: {path} already exists; use --force to overwrite it")
        return 1
    from rawgw.importing.merge import dump_toml  # [[keys]] tables, as the import writes them

    text = _init_header(provider) + dump_toml(starter_config(provider)) + _INIT_FOOTER
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        _err(f"rawgw init: cannot write {path}: {exc.strerror or exc}")
        return 1
    print(f"wrote {path}")
    print("next, set the secrets it reads from the environment, check it and start the gateway:")
    print(f"  export {preset.env}={preset.key_hint}".ljust(42) + f"# your {provider} key")
    print(f"  export GATEWAY_API_KEY={GENERATE_KEY}   # the key your clients will send")
    print(f"  rawgw check -c {path}")
    print(f"  rawgw serve -c {path}")
    print("then:")
    body = '{"model": "' + preset.example_model + '", "messages": [{"role": "user", "content": "hi"}]}'
    print('  curl http://127.0.0.1:8080/v1/chat/completions -H "Authorization: Bearer $GATEWAY_API_KEY" \\')
    print(f"       -H 'content-type: application/json' -d '{body}'")
    return 0


# --------------------------------------------------------------------------- import


def cmd_import(files: list[str], out: str | None) -> int:
    """Convert the configs of the tools users come from into one gateway.toml (rawgw.importing)."""
    from rawgw.importing.run import cmd_import as run_import

    return run_import(files, out)


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as :mod:`rawgw.importing.dotenv` reads them."""
    from rawgw.importing.dotenv import parse_dotenv as parse

    return parse(text)
