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
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import tomli_w

from rawgw.config import (
    DEFAULT_BASE_URLS,
    ENV_PREFIX,
    PROVIDER_TYPES,
    RESERVED_PROVIDER_NAMES,
    Config,
    ConfigError,
    find_config_path,
    mask_key,
    parse_config,
)
from rawgw.configfile import load_config

__all__ = ["cmd_check", "cmd_import", "cmd_init"]

_NOT_FOUND_HINT: Final = "create one with `rawgw init`, or try rawgw without one: `rawgw demo`"
_GENERATE_KEY: Final = "$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"


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
        lines.append(f"    keys ({len(p.keys)}): " + ", ".join(mask_key(k) for k in p.keys))
        lines.append("    models: " + _list(p.models, "none"))
        if p.proxy:
            lines.append("    proxy: configured")
        if p.headers:
            lines.append("    headers: " + ", ".join(name for name, _ in p.headers))

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
        f"(keep {log.chat_file_limit}), errors {_onoff(log.errors)}"
    )
    cache = config.cache
    lines.append(f"cache: {_onoff(cache.enabled)}" + (f" (ttl {cache.ttl_s:g} s, {cache.max_entries} entries)" if cache.enabled else ""))
    lines.append(f"metrics: {_onoff(config.metrics.enabled)}")
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


def starter_config() -> dict[str, Any]:
    """The config ``rawgw init`` writes: OpenRouter behind one gateway key."""
    return {
        "server": {"host": "127.0.0.1", "port": 8080},
        "keys": [{"key": "env:GATEWAY_API_KEY", "name": "default"}],
        "providers": {
            "openrouter": {
                "type": "openrouter",
                "base_url": DEFAULT_BASE_URLS["openrouter"],
                "keys": ["env:OPENROUTER_API_KEY"],
                "key_strategy": "round-robin",
                "cooldown_s": 14400,
                "priority": 1,
                "models": ["*"],
            }
        },
        "routes": [
            {
                "match": "gpt-4*",
                "model": "deepseek/deepseek-chat-v3-0324",
                "providers": ["openrouter"],
                "provider_order": ["DeepInfra", "Parasail"],
            }
        ],
        "logging": {"dir": "logs", "access": True, "chat": False, "chat_file_limit": 15, "errors": True},
    }


_INIT_HEADER: Final = """\
# rawgw starter config (written by `rawgw init`). Every option: gateway.toml.example.
# Secrets are "env:NAME" references, read from the environment at start.
# The route below sends any gpt-4* request to DeepSeek V3 on OpenRouter,
# asking OpenRouter to try the DeepInfra, then the Parasail endpoints.

"""


_INIT_FOOTER: Final = """
# More than one process (--workers N, or several instances behind a balancer)? Share rate
# limits, key cooldowns, breakers, the cache and usage counters on a Redis/Valkey server:
# [state]
# url = "env:RAWGW_STATE_URL"   # redis://[user:pass@]host:6379/0, rediss://..., unix:///path
"""


def cmd_init(path: str = "gateway.toml", force: bool = False) -> int:
    """Write a starter config; an existing file is only replaced with ``force``."""
    if os.path.exists(path) and not force:
        _err(f"rawgw init: {path} already exists; use --force to overwrite it")
        return 1
    text = _INIT_HEADER + tomli_w.dumps(starter_config()) + _INIT_FOOTER
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        _err(f"rawgw init: cannot write {path}: {exc.strerror or exc}")
        return 1
    print(f"wrote {path}")
    print("next, set the secrets it reads from the environment, check it and start the gateway:")
    print("  export OPENROUTER_API_KEY=sk-or-...      # your OpenRouter key")
    print(f"  export GATEWAY_API_KEY={_GENERATE_KEY}   # the key your clients will send")
    print(f"  rawgw check -c {path}")
    print(f"  rawgw serve -c {path}")
    return 0


# --------------------------------------------------------------------------- import


class ImportFailed(Exception):
    """One input could not be converted; the message is safe to print (no secrets)."""


@dataclass(slots=True)
class _Export:
    """One environment variable the generated config reads."""

    value: str | None  # the literal secret found in an input, or None when unknown
    hint: str  # what to put there when the value is unknown, or where it came from


@dataclass(slots=True)
class _Merge:
    """The gateway.toml being assembled from every input, plus what to tell the user."""

    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    logging: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, _Export] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    provider_injection: bool = True
    vk_providers: set[str] = field(default_factory=set)  # made to hold one virtual key's api_key

    # ---------------------------------------------------------------- secrets

    def secret(self, value: str, var: str, hint: str) -> str:
        """An ``env:NAME`` reference for ``value``; the literal goes to the export list.

        A value already written as ``env:X`` is kept. The same literal seen twice maps to
        one variable, so a key shared by several entries is set once.
        """
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX) :]
            self.exports.setdefault(name, _Export(None, "already an env: reference in your input"))
            return value
        for name, export in self.exports.items():
            if export.value == value:
                return ENV_PREFIX + name
        name = self._unique_var(var)
        self.exports[name] = _Export(value, hint)
        return ENV_PREFIX + name

    def placeholder(self, var: str, hint: str) -> str:
        """An ``env:NAME`` reference whose value the inputs did not contain."""
        if var not in self.exports:
            self.exports[var] = _Export(None, hint)
        return ENV_PREFIX + var

    def _unique_var(self, base: str) -> str:
        name, n = base, 1
        while name in self.exports:
            n += 1
            name = f"{base}_{n}"
        return name

    # ---------------------------------------------------------------- providers

    def unique_provider(self, base: str) -> str:
        name, n = base, 1
        while name in self.providers:
            n += 1
            name = f"{base}_{n}"
        return name

    def shared_openrouter_providers(self) -> list[str]:
        """OpenRouter providers for everyone's routes, by priority: not the ones holding
        a virtual key's api_key, which only that key's clients should spend."""
        found = [
            (t.get("priority", 1), name)
            for name, t in self.providers.items()
            if t["type"] == "openrouter" and name not in self.vk_providers
        ]
        return [name for _, name in sorted(found, key=lambda pair: pair[0])]

    def to_toml_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.providers:
            data["providers"] = self.providers
        if self.keys:
            data["keys"] = self.keys
        if self.routes:
            data["routes"] = self.routes
        if self.logging:
            data["logging"] = self.logging
        return data


def _env_token(text: str) -> str:
    """``team-a.prod`` → ``TEAM_A_PROD``: a fragment usable in a variable name."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_") or "X"


class _CheckEnv(Mapping[str, str]):
    """The environment the converted config is validated against before writing.

    Known literals are used as-is (so real duplicates are caught); every other
    variable gets a distinct stand-in, since the user sets them only later.
    """

    def __init__(self, known: Mapping[str, str]) -> None:
        self._known = known

    def __getitem__(self, name: str) -> str:
        return self._known.get(name, f"rawgw-import-check-{name}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def cmd_import(files: list[str], out: str | None) -> int:
    """Convert the configs of the tools users come from into one gateway.toml (SPEC §2)."""
    out_path = out or "gateway.toml"
    if not files:
        _err("rawgw import: no input files given")
        return 1
    if os.path.exists(out_path):
        _err(f"rawgw import: {out_path} already exists; choose another path with -o or move it away")
        return 1
    merge = _Merge()
    summaries: list[str] = []
    for path in files:
        try:
            summaries.append(f"  {path}: " + _import_file(path, merge))
        except ImportFailed as exc:
            _err(f"rawgw import: {path}: {exc}")
            return 1
    _finish(merge)

    data = merge.to_toml_data()
    known = {name: e.value for name, e in merge.exports.items() if e.value is not None}
    try:
        parse_config(data, env=_CheckEnv(known))
    except ConfigError as exc:
        _err("rawgw import: the converted config would not load:")
        for line in exc.errors:
            _err(f"  {line}")
        return 1

    header = "# generated by `rawgw import` from: " + ", ".join(files) + "\n"
    header += "# secrets are env:NAME references; see the export list printed by the import.\n\n"
    try:
        # "x": never replace a file that appeared since the check above.
        with open(out_path, "x", encoding="utf-8") as fh:
            fh.write(header + tomli_w.dumps(data))
    except OSError as exc:
        _err(f"rawgw import: cannot write {out_path}: {exc.strerror or exc}")
        return 1

    print(f"wrote {out_path}: {len(merge.providers)} providers, {len(merge.routes)} routes, {len(merge.keys)} gateway keys")
    for line in summaries:
        print(line)
    if merge.exports:
        print("set these environment variables before `rawgw serve` (values masked here; take the real ones from")
        print("your old config, or generate the new ones as shown):")
        for name, export in merge.exports.items():
            if export.value is not None:
                print(f"  export {name}={mask_key(export.value)}   # {export.hint}")
            elif name.startswith("RAWGW_GATEWAY_KEY_"):
                print(f"  export {name}={_GENERATE_KEY}   # {export.hint}")
            else:
                print(f"  export {name}=...   # {export.hint}")
    for note in merge.notes:
        print(f"note: {note}")
    print(f"then: rawgw check -c {out_path}")
    return 0


def _import_file(path: str, merge: _Merge) -> str:
    """Detect the format of one input, merge it, and return a one-line summary."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ImportFailed(f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ImportFailed("not JSON and not a UTF-8 .env file") from None
        return _import_dotenv(text, merge)
    if isinstance(doc, list):
        return _import_provider_mapping(doc, merge)
    if isinstance(doc, dict) and "virtual_keys" in doc:
        return _import_virtual_keys(doc["virtual_keys"], merge)
    if isinstance(doc, dict) and doc and all(_is_router_list(v) for v in doc.values()):
        return _import_priority_router(doc, merge)
    raise ImportFailed(
        "JSON of an unknown shape; expected an OpenRouter provider mapping "
        '([{"model", "providers"}]), virtual keys ({"virtual_keys": {...}}) or a priority '
        'router ({"openai": [{"api_key", ...}]})'
    )


def _is_router_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(e, dict) and "api_key" in e for e in value)


def _import_provider_mapping(entries: list[Any], merge: _Merge) -> str:
    """``[{"model": M, "providers": [P...]}]`` → one route per model, served by OpenRouter."""
    added = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ImportFailed(f"entry {i}: must be an object with model and providers")
        model, order = entry.get("model"), entry.get("providers", [])
        if not isinstance(model, str) or not model:
            raise ImportFailed(f"entry {i}: model must be a non-empty string")
        if not isinstance(order, list) or not all(isinstance(p, str) for p in order):
            raise ImportFailed(f"entry {i}: providers must be a list of strings")
        if any(r["match"] == model for r in merge.routes):
            merge.notes.append(f"model {model} is mapped twice; the first mapping is kept")
            continue
        # provider_order and providers are filled in by _finish, once every input is known.
        merge.routes.append({"match": model, "provider_order": list(order)})
        added += 1
    return f"OpenRouter provider mapping ({added} routes)"


def _import_virtual_keys(vkeys: Any, merge: _Merge) -> str:
    """``{"virtual_keys": {NAME: {"provider", "api_key"}}}`` → a gateway key NAME pinned to a
    provider of that type holding that api_key.

    The provider is named ``<type>_<NAME>`` and shared only by virtual keys with the same
    type and api_key, so a pinned key only ever spends its own upstream key, and routes
    imported from a provider mapping do not spend it either (see :func:`_finish`).
    """
    if not isinstance(vkeys, dict):
        raise ImportFailed("virtual_keys must be an object of NAME: {provider, api_key}")
    for name, entry in vkeys.items():
        if not isinstance(entry, dict):
            raise ImportFailed(f"virtual_keys.{name}: must be an object with provider and api_key")
        ptype, api_key = entry.get("provider"), entry.get("api_key")
        if ptype not in PROVIDER_TYPES:
            raise ImportFailed(f"virtual_keys.{name}.provider: must be one of " + ", ".join(PROVIDER_TYPES))
        if not isinstance(api_key, str) or not api_key:
            raise ImportFailed(f"virtual_keys.{name}.api_key: must be a non-empty string")
        ignored = sorted(set(entry) - {"provider", "api_key"})
        if ignored:
            merge.notes.append(f"virtual_keys.{name}: ignored {', '.join(ignored)} (no rawgw equivalent)")
        ref = merge.secret(api_key, f"RAWGW_VK_{_env_token(name)}", f"api_key of virtual key {name}")
        provider = next(
            (p for p, t in merge.providers.items() if p in merge.vk_providers and t["type"] == ptype and t["keys"] == [ref]),
            None,
        )
        if provider is None:
            provider = merge.unique_provider(f"{ptype}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
            merge.providers[provider] = {"type": ptype, "keys": [ref]}
            merge.vk_providers.add(provider)
        gateway_ref = merge.placeholder(
            f"RAWGW_GATEWAY_KEY_{_env_token(name)}",
            f"the key clients of virtual key {name} send to rawgw (new, or the one they already use)",
        )
        merge.keys.append({"key": gateway_ref, "name": name, "providers": [provider]})
    return f"virtual keys ({len(vkeys)})"


def _import_priority_router(doc: dict[str, Any], merge: _Merge) -> str:
    """``{TYPE: [{"api_key", "priority", "base_url", "timeout", "max_retries"}]}`` → one
    provider per entry, in file order, priorities copied (lower is tried first)."""
    count = 0
    for ptype, entries in doc.items():
        if ptype not in PROVIDER_TYPES:
            raise ImportFailed(f"{ptype}: unknown provider type (expected " + ", ".join(PROVIDER_TYPES) + ")")
        for i, entry in enumerate(entries):
            where = f"{ptype}[{i}]"
            name = merge.unique_provider(ptype)
            table: dict[str, Any] = {"type": ptype}
            base_url = entry.get("base_url")
            if base_url not in (None, ""):
                if not isinstance(base_url, str):
                    raise ImportFailed(f"{where}.base_url: must be a string")
                table["base_url"] = base_url
                if ptype == "anthropic" and base_url.rstrip("/").endswith("/v1"):
                    merge.notes.append(
                        f"providers.{name}.base_url ends with /v1; rawgw appends /v1/messages to an "
                        "anthropic base_url, so you probably want the bare origin"
                    )
            api_key = entry.get("api_key")
            if not isinstance(api_key, str) or not api_key:
                raise ImportFailed(f"{where}.api_key: must be a non-empty string")
            table["keys"] = [merge.secret(api_key, f"RAWGW_{_env_token(name)}_KEY_1", f"{where}.api_key")]
            priority = entry.get("priority", i + 1)
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise ImportFailed(f"{where}.priority: must be an integer")
            table["priority"] = priority
            timeout = entry.get("timeout")
            if timeout is not None:
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                    raise ImportFailed(f"{where}.timeout: must be a number of seconds > 0")
                table["read_timeout_s"] = timeout
            if "max_retries" in entry and not any("max_retries" in n for n in merge.notes):
                merge.notes.append(
                    "max_retries is not imported: rawgw tries each key of each candidate provider once, before any byte reaches the client"
                )
            merge.providers[name] = table
            count += 1
    return f"priority router ({count} providers)"


_DOTENV_LINE: Final = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
_DOTENV_KNOWN: Final = (
    "TARGET_SERVER_URL", "TARGET_API_KEY", "GATEWAY_API_KEY", "OPENROUTER_KEYS", "LOG_FILE_LIMIT",
    "PROVIDER_INJECTION_ENABLED", "LOG_CHAT_ENABLED",
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
        m = _DOTENV_LINE.fullmatch(stripped)
        if m is None:
            raise ImportFailed(f"line {lineno}: not a KEY=VALUE line (and the file is not JSON)")
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


def _import_dotenv(text: str, merge: _Merge) -> str:
    """A ``.env`` of the single-upstream proxies rawgw replaces (SPEC §2)."""
    env = {k: v for k, v in parse_dotenv(text).items() if v != ""}
    known = [k for k in _DOTENV_KNOWN if k in env]
    if not known:
        raise ImportFailed("not a recognised format: not JSON, and no .env setting rawgw imports (" + ", ".join(_DOTENV_KNOWN) + ")")
    ignored = sorted(set(env) - set(_DOTENV_KNOWN))
    if ignored:
        merge.notes.append(".env settings not imported: " + ", ".join(ignored))

    url = env.get("TARGET_SERVER_URL", "")
    pool = [k.strip() for k in env.get("OPENROUTER_KEYS", "").split(",") if k.strip()]
    if not pool and "TARGET_API_KEY" in env:
        pool = [env["TARGET_API_KEY"]]
    parts: list[str] = []
    if url or pool:
        # The tools this reads were OpenRouter proxies: no URL means OpenRouter.
        ptype = "openrouter" if not url or "openrouter.ai" in url else "openai"
        name = merge.unique_provider("openrouter" if ptype == "openrouter" else _provider_name_from_url(url))
        table: dict[str, Any] = {"type": ptype}
        if url:
            table["base_url"] = url.rstrip("/")
        var = f"RAWGW_{_env_token(name)}_KEY"
        if pool:
            table["keys"] = [merge.secret(key, f"{var}_{i}", f"key {i} of the .env upstream key pool") for i, key in enumerate(pool, 1)]
        else:
            table["keys"] = [merge.placeholder(f"{var}_1", f"a key for {url or 'the upstream'}")]
        merge.providers[name] = table
        parts.append(f"provider {name} ({len(table['keys'])} keys)")
    if "GATEWAY_API_KEY" in env:
        names = {k["name"] for k in merge.keys}
        key_name = "default" if "default" not in names else f"default_{len(merge.keys) + 1}"
        merge.keys.append(
            {
                "key": merge.secret(env["GATEWAY_API_KEY"], "GATEWAY_API_KEY", "the gateway key clients send"),
                "name": key_name,
            }
        )
        parts.append("gateway key")
    if "LOG_CHAT_ENABLED" in env:
        merge.logging["chat"] = env["LOG_CHAT_ENABLED"].strip().lower() in _TRUE
    if "LOG_FILE_LIMIT" in env:
        try:
            merge.logging["chat_file_limit"] = int(env["LOG_FILE_LIMIT"])
        except ValueError:
            raise ImportFailed("LOG_FILE_LIMIT: must be an integer") from None
    if merge.logging:
        parts.append("logging")
    if env.get("PROVIDER_INJECTION_ENABLED", "true").strip().lower() not in _TRUE:
        merge.provider_injection = False
        parts.append("provider injection off")
    return "env file (" + ", ".join(parts) + ")"


def _provider_name_from_url(url: str) -> str:
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


def _finish(merge: _Merge) -> None:
    """Cross-file steps: routes from a provider mapping are served by the OpenRouter
    providers the other inputs defined (not those holding a virtual key's api_key), or by
    a new one reading OPENROUTER_API_KEY; a .env may have switched provider-order
    injection off."""
    if not merge.routes:
        return
    openrouters = merge.shared_openrouter_providers()
    if not openrouters:
        name = merge.unique_provider("openrouter")
        merge.providers[name] = {
            "type": "openrouter",
            "keys": [merge.placeholder("OPENROUTER_API_KEY", "your OpenRouter key")],
        }
        openrouters = [name]
    for route in merge.routes:
        route["providers"] = list(openrouters)
        if not merge.provider_injection or not route.get("provider_order"):
            route.pop("provider_order", None)
        else:
            # keep TOML keys in the documented order: match, providers, provider_order
            route["provider_order"] = route.pop("provider_order")
