"""Typed, frozen gateway configuration: read TOML, resolve ``env:`` secrets, validate.

Every other component imports these dataclasses and trusts them, so all checking
happens here, once, at load time: the hot path never re-validates a setting. A bad
config is reported in full (every problem, each as ``path.to.field: message``) rather
than one error per run, because fixing a config one line per restart is miserable.

Secrets are resolved here and never leave this module in a message: errors and
warnings name the field and, at most, the masked key (:func:`mask_key`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final
from urllib.parse import urlsplit

from rawgw.presets import OFFICIAL_KEY_PREFIXES
from rawgw.upstream.socks import parse_proxy_url

__all__ = [
    "DEFAULT_BASE_URLS",
    "ENV_PREFIX",
    "KEY_FORMATS",
    "KEY_STRATEGIES",
    "ON_DISCONNECT",
    "PROVIDER_TYPES",
    "RESERVED_PROVIDER_NAMES",
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "GatewayKey",
    "GithubAuth",
    "KeyDefaults",
    "LoggingConfig",
    "MetricsConfig",
    "ModelsConfig",
    "Provider",
    "Route",
    "ServerConfig",
    "find_config_path",
    "load_config",
    "mask_key",
    "mask_keys",
    "parse_config",
    "read_toml",
]

PROVIDER_TYPES: Final = ("openai", "openrouter", "anthropic")
KEY_STRATEGIES: Final = ("round-robin", "first", "random")
# openai/openrouter base URLs end at the API version; anthropic's is the bare origin
# (SPEC §5.4), because its paths already carry /v1.
DEFAULT_BASE_URLS: Final[Mapping[str, str]] = {
    "openrouter": "https://openrouter.ai/api/v1",
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
ENV_PREFIX: Final = "env:"
DEFAULT_CONFIG_NAME: Final = "gateway.toml"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 10485760
    max_header_bytes: int = 16384
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    shutdown_grace_s: float = 30.0
    max_connections: int = 10000
    request_timeout_s: float = 600.0
    cors_origins: tuple[str, ...] = ("*",)
    public_paths: tuple[str, ...] = ("/health",)
    # X-Session-ID tracking (rawgw.control.sessions): idle lifetime and LRU bound
    session_ttl_s: float = 3600.0
    max_sessions: int = 10000


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """A credential clients present to the gateway; ``name`` is what logs show."""

    key: str = field(repr=False)  # never in a repr: reprs end up in logs and tracebacks
    name: str
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    rate_limit_rpm: int = 0
    rate_limit_burst: int = 0
    # tokens per minute (prompt estimate + max_tokens reserved, refunded from real usage);
    # one exact cluster-wide bucket with [state] url, per process (divided by workers) without
    rate_limit_tpm: int = 0
    admin: bool = False  # may use /admin/... (rawgw.control.admin_api)


@dataclass(frozen=True, slots=True)
class Provider:
    """One upstream API and its key pool.

    ``scheme``/``host``/``port``/``base_path`` are derived from ``base_url`` once here so
    the upstream leg never parses URLs per request. ``host`` is the bare host name as
    used to connect (an IPv6 literal has no brackets).
    """

    name: str
    type: str
    base_url: str
    keys: tuple[str, ...] = field(repr=False)  # never in a repr: reprs end up in logs
    key_format: str = "auto"  # "auto": prefix checked on the vendor's official host; "any": never
    key_strategy: str = "round-robin"
    cooldown_s: float = 14400.0
    priority: int = 1
    models: tuple[str, ...] = ("*",)
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 300.0
    read_timeout_s: float = 300.0
    timeout_s: float = 0.0  # one whole attempt, connect to response head; 0: unset
    max_retries: int = 0  # extra attempts on this provider after each usable key had one
    retry_backoff_s: float = 0.5  # first retry's wait; doubles per retry, with jitter
    pool_idle_s: float = 30.0
    max_connections: int = 256
    proxy: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # list and serve only free models (OpenRouter ":free" ids or zero pricing)
    free_only: bool = False
    scheme: str = "https"
    host: str = ""
    port: int = 443
    base_path: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    match: str
    model: str | None = None
    providers: tuple[str, ...] = ()
    provider_order: tuple[str, ...] = ()
    force_provider_order: bool = False
    # rawgw extension: the model to send to a particular provider of this route, e.g. a
    # failover provider that names the same model differently ({deepseek = "deepseek-chat"}).
    provider_models: tuple[tuple[str, str], ...] = ()
    # A client hang-up after the request went upstream: "close" it at once (no more
    # tokens billed, usage unknown) or "drain" it (read and discard the rest, record usage).
    on_disconnect: str = "close"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    dir: str = "logs"
    access: bool = True
    chat: bool = False
    chat_file_limit: int = 15
    errors: bool = True
    # access.jsonl / errors.jsonl (and admin.jsonl) are rotated before a write would take
    # them past max_bytes (0: never; external logrotate + SIGHUP instead), keeping
    # `backups` older files NAME.1 (newest) … NAME.<backups>.
    max_bytes: int = 104_857_600
    backups: int = 5


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    ttl_s: float = 300.0
    max_entries: int = 1000


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``[state]``: where shared state lives. Empty ``url``: in this process (the default)."""

    url: str = field(default="", repr=False)  # may hold a password: never in a repr
    prefix: str = "rawgw:"
    timeout_ms: int = 50

    @property
    def shared(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """``[models]``: the /v1/models listing. ``cache_ttl_s = 0`` fetches on every request."""

    cache_ttl_s: float = 300.0


@dataclass(frozen=True, slots=True)
class KeyDefaults:
    """Limits of the personal key a GitHub device-flow sign-in creates."""

    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    rate_limit_rpm: int = 0
    rate_limit_burst: int = 0


@dataclass(frozen=True, slots=True)
class GithubAuth:
    """``[auth.github]``: sign-in with GitHub (rawgw.control.github)."""

    client_id: str
    client_secret: str = field(repr=False)
    allowed_users: tuple[str, ...] = ()
    allowed_orgs: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    # overridable so tests talk to a mock on loopback
    oauth_base: str = "https://github.com"
    api_base: str = "https://api.github.com"
    # where GitHub sends the browser back; empty: derived from the request's Host
    redirect_url: str = ""
    key_defaults: KeyDefaults = KeyDefaults()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    github: GithubAuth | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    keys: tuple[GatewayKey, ...]
    providers: dict[str, Provider]  # insertion order = file order; treat as read-only
    routes: tuple[Route, ...]
    logging: LoggingConfig
    cache: CacheConfig
    metrics: MetricsConfig
    path: str | None = None
    warnings: tuple[str, ...] = ()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    # [groups] NAME = [provider, ...]: /NAME/{rest} tried over those providers by priority
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    models: ModelsConfig = ModelsConfig()


class ConfigError(Exception):
    """Raised with every problem found, each formatted ``path.to.field: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- public helpers

# Most specific first: "sk-" would otherwise swallow the others.
_KEY_PREFIXES: Final = ("sk-or-", "sk-ant-", "sk-proj-", "sk-")


def mask_key(key: str) -> str:
    """Show enough of a key to tell keys apart in output, never enough to use it.

    A known vendor prefix (public knowledge) and the last 4 characters survive; keys
    shorter than 12 characters show at most their last 2 (and never more than a
    quarter of their length).
    """
    if len(key) < 12:
        shown = min(2, len(key) // 4)
        return "…" + (key[-shown:] if shown else "")
    prefix = next((p for p in _KEY_PREFIXES if key.startswith(p)), "")
    return f"{prefix}…{key[-4:]}"


def mask_keys(keys: Iterable[str]) -> list[str]:
    """:func:`mask_key` of each key of a pool, told apart by their index where two masks
    would look the same (``keys[0] sk-or-…-key``, ``keys[1] sk-or-…-key``)."""
    masks = [mask_key(k) for k in keys]
    seen: dict[str, int] = {}
    for m in masks:
        seen[m] = seen.get(m, 0) + 1
    return [f"keys[{i}] {m}" if seen[m] > 1 else m for i, m in enumerate(masks)]


def find_config_path(cli_path: str | None) -> str | None:
    """``-c`` wins, then ``$RAWGW_CONFIG``, then ``./gateway.toml`` if it exists.

    An explicitly named path is returned even when missing, so the caller can say
    which file it could not find instead of silently falling back to another one.
    """
    if cli_path:
        return cli_path
    from_env = os.environ.get("RAWGW_CONFIG", "")
    if from_env:
        return from_env
    if os.path.isfile(DEFAULT_CONFIG_NAME):
        return DEFAULT_CONFIG_NAME
    return None


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config; unreadable files and TOML syntax errors are
    :class:`ConfigError` too, so callers handle one exception type.

    This is the main file alone; :func:`rawgw.configfile.load_config` (what the
    gateway and the CLI use) merges the admin overlay in after it.
    """
    return parse_config(read_toml(path), env, path)


def read_toml(path: str) -> dict[str, Any]:
    """One TOML file as a dict; every failure is a :class:`ConfigError` naming ``path``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not valid UTF-8 (byte offset {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        other = _other_format(path, text)
        if other:
            raise ConfigError([f"{path}: {other}, not TOML; convert it with `rawgw import {path}`"]) from None
        # tomllib's messages carry a position, never the offending value.
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    return data


_YAML_LINE: Final = re.compile(r"(---|[A-Za-z_][\w.-]*:(\s|$)|- )")
_ENV_LINE: Final = re.compile(r"(export\s+)?[A-Z_][A-Z0-9_]*=")  # .env names are upper case; ours are not


def _other_format(path: str, text: str) -> str:
    """What a file that is not TOML looks like, when it is one `rawgw import` reads
    (the other gateways' JSON, YAML and .env files); "" when it looks like broken TOML."""
    try:
        json.loads(text)
        return "a JSON file"
    except ValueError:
        pass
    name = os.path.basename(path).lower()
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    if name.endswith((".yaml", ".yml")) or _YAML_LINE.match(first):
        return "a YAML file"
    if name.endswith(".env") or name.startswith(".env") or _ENV_LINE.match(first):
        return "a .env file"
    return ""


def parse_config(
    data: dict[str, Any], env: Mapping[str, str] | None = None, path: str | None = None, *, key_formats: bool = True
) -> Config:
    """Validate an already-parsed TOML document and build the frozen :class:`Config`.

    ``path`` names the file the data came from; when given, its permissions are
    checked if it holds literal secrets. ``key_formats=False`` skips the key prefix
    checks (a structural check against stand-in values, as ``rawgw import`` makes).
    """
    return _Parser(os.environ if env is None else env, key_formats).build(data, path)


# --------------------------------------------------------------------------- validation

_SECTIONS: Final = ("server", "keys", "providers", "routes", "logging", "cache", "metrics", "auth", "state", "groups", "models")
_SERVER_FIELDS: Final = (
    "host", "port", "workers", "max_body_bytes", "max_header_bytes", "header_timeout_s",
    "keepalive_timeout_s", "shutdown_grace_s", "max_connections", "request_timeout_s",
    "cors_origins", "public_paths", "session_ttl_s", "max_sessions",
)  # fmt: skip
_KEY_FIELDS: Final = ("key", "name", "providers", "models", "rate_limit_rpm", "rate_limit_burst", "rate_limit_tpm", "admin")
_PROVIDER_FIELDS: Final = (
    "type", "base_url", "keys", "key_format", "key_strategy", "cooldown_s", "priority", "models",
    "connect_timeout_s", "first_byte_timeout_s", "read_timeout_s", "timeout_s", "max_retries",
    "retry_backoff_s", "pool_idle_s", "max_connections", "proxy", "headers", "free_only",
)  # fmt: skip
_ROUTE_FIELDS: Final = ("match", "model", "providers", "provider_order", "force_provider_order", "provider_models", "on_disconnect")
KEY_FORMATS: Final = ("auto", "any")
ON_DISCONNECT: Final = ("close", "drain")
_LOGGING_FIELDS: Final = ("dir", "access", "chat", "chat_file_limit", "errors", "max_bytes", "backups")
_CACHE_FIELDS: Final = ("enabled", "ttl_s", "max_entries")
_STATE_FIELDS: Final = ("url", "prefix", "timeout_ms")
_METRICS_FIELDS: Final = ("enabled",)
_MODELS_FIELDS: Final = ("cache_ttl_s",)
_GITHUB_FIELDS: Final = (
    "client_id", "client_secret", "allowed_users", "allowed_orgs", "admins", "oauth_base", "api_base",
    "redirect_url", "key_defaults",
)  # fmt: skip
_KEY_DEFAULT_FIELDS: Final = ("providers", "models", "rate_limit_rpm", "rate_limit_burst")

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIST_SEPARATORS: Final = re.compile(r"[,\s]+")
_PROVIDER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# RFC 9110 §5.6.2: a field name is a token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A credential travels in a header (RFC 9110 §11.6.2 token68-ish): visible ASCII only.
_CREDENTIAL: Final = re.compile(r"[\x21-\x7e]+")
_HOST: Final = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")
# The gateway serves these first path segments itself (SPEC §4), so a provider of that
# name could never be reached through /{provider}/{rest}.
RESERVED_PROVIDER_NAMES: Final = frozenset({"v1", "api", "chat", "health", "metrics", "dashboard", "admin", "auth", "session"})
# Framing, hop-by-hop and credential headers belong to the gateway, never to config.
_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
        "trailer", "upgrade", "proxy-connection", "proxy-authorization", "authorization",
        "x-api-key",
    }
)  # fmt: skip


class _Unresolved:
    """Stands in for an ``env:`` reference that could not be resolved.

    Its error is already recorded; validators skip it so one missing variable does not
    also produce "required" or "must be a string" noise.
    """

    __slots__ = ()


_UNRESOLVED: Final = _Unresolved()
_ABSENT: Final = object()


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# Names users bring from the gateways rawgw replaces, too far from ours for difflib.
_ALIASES: Final = {
    "rpm": "rate_limit_rpm",
    "tpm": "rate_limit_tpm",
    "burst": "rate_limit_burst",
    "rate_limit_cooldown": "cooldown_s",
    "cooldown": "cooldown_s",
    "cooldown_seconds": "cooldown_s",
    "api_key": "keys",
    "api_keys": "keys",
    "key": "keys",
    "url": "base_url",
    "api_base": "base_url",
    "timeout": "timeout_s",
    "ttl": "ttl_s",
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    options = list(choices)
    alias = _ALIASES.get(word.lower())
    if alias in options:
        return f" (did you mean {alias}?)"
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not close:
        return ""
    # equally close names are all shown (rate_limit -> rate_limit_rpm or rate_limit_tpm)
    best = difflib.SequenceMatcher(None, word, close[0]).ratio()
    tied = sorted(c for c in close if difflib.SequenceMatcher(None, word, c).ratio() == best)
    return f" (did you mean {' or '.join(tied)}?)"


class _Parser:
    """One validation run: collects errors and warnings instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str], key_formats: bool = True) -> None:
        self.env = env
        self.key_formats = key_formats
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.from_env: set[str] = set()  # paths whose value came from env:NAME
        self.literal_secrets: list[str] = []
        # Every [providers.NAME] written, valid or not: a reference to a provider that has
        # its own error is not a second error.
        self.declared_providers: list[str] = []

    # ---------------------------------------------------------------- plumbing

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def resolve(self, value: Any, path: str) -> Any:
        """Replace every ``"env:NAME"`` string, at any depth, by the variable's value."""
        if isinstance(value, str):
            if not value.startswith(ENV_PREFIX):
                return value
            resolved = self.env_value(value, path)
            if resolved is not _UNRESOLVED:
                self.from_env.add(path)
            return resolved
        if isinstance(value, dict):
            return {k: self.resolve(v, _join(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return self.resolve_list(value, path)
        return value

    def env_value(self, ref: str, path: str) -> str | _Unresolved:
        name = ref[len(ENV_PREFIX) :]
        if not _ENV_NAME.fullmatch(name):
            self.error(path, "invalid env: reference (expected env:NAME, NAME of letters, digits, _)")
            return _UNRESOLVED
        resolved = self.env.get(name)
        if resolved is None:
            self.error(path, f"environment variable {name} is not set")
            return _UNRESOLVED
        return resolved

    def resolve_list(self, items: list[Any], path: str) -> list[Any]:
        """An ``env:NAME`` entry of a list becomes as many entries as NAME holds, split on
        commas and whitespace (``OPENROUTER_KEYS=k1,k2`` as the key-rotating proxy took
        it): one variable never turns silently into one wrong value ``k1,k2``. Scalars
        never split. Errors name the entry as written; later checks, the expanded list."""
        out: list[Any] = []
        for i, item in enumerate(items):
            if not (isinstance(item, str) and item.startswith(ENV_PREFIX)):
                out.append(self.resolve(item, f"{path}[{i}]"))
                continue
            resolved = self.env_value(item, f"{path}[{i}]")
            if isinstance(resolved, _Unresolved):
                out.append(resolved)
                continue
            parts = [p for p in _LIST_SEPARATORS.split(resolved) if p]
            if not parts:
                self.error(f"{path}[{i}]", f"environment variable {item[len(ENV_PREFIX) :]} is empty")
                out.append(_UNRESOLVED)
                continue
            for part in parts:
                self.from_env.add(f"{path}[{len(out)}]")
                out.append(part)
        return out

    def table(self, parent: Mapping[str, Any], name: str, path: str, known: tuple[str, ...]) -> _Table:
        raw = parent.get(name, _ABSENT)
        if raw is _ABSENT or raw is _UNRESOLVED:
            return _Table(self, path, {}, known)
        if not isinstance(raw, dict):
            self.error(path, f"must be a table ([{path}])")
            return _Table(self, path, {}, known)
        return _Table(self, path, raw, known)

    def array_of_tables(self, data: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
        raw = data.get(name, _ABSENT)
        if raw is _ABSENT:
            return []
        if not isinstance(raw, list):
            self.error(name, f"must be an array of tables ([[{name}]])")
            return []
        out: list[tuple[str, dict[str, Any]]] = []
        for i, item in enumerate(raw):
            if isinstance(item, dict):
                out.append((f"{name}[{i}]", item))
            else:
                self.error(f"{name}[{i}]", f"must be a table ([[{name}]])")
        return out

    def credential(self, value: Any, path: str) -> str | None:
        """Validate one secret (gateway key or pool key); remember literal ones."""
        if value is _UNRESOLVED:
            return None
        if not isinstance(value, str):
            self.error(path, "must be a string")
            return None
        if not value:
            self.error(path, "must not be empty")
            return None
        if not _CREDENTIAL.fullmatch(value):
            # Usually a trailing newline pasted into the variable; never echo the value.
            self.error(path, "must be visible ASCII without spaces or control characters")
            return None
        if path not in self.from_env:
            self.literal_secrets.append(path)
            self.warn(path, f"literal secret in config file; prefer {ENV_PREFIX}NAME")
        return value

    # ---------------------------------------------------------------- sections

    def build(self, raw_data: dict[str, Any], path: str | None) -> Config:
        if not isinstance(raw_data, dict):
            raise ConfigError(["(root): must be a table"])
        data: dict[str, Any] = self.resolve(raw_data, "")
        for name in data:
            if name not in _SECTIONS:
                self.error(name, "unknown setting" + _did_you_mean(name, _SECTIONS))

        server = self.server(self.table(data, "server", "server", _SERVER_FIELDS))
        providers = self.providers(data)
        keys = self.keys(data, providers)
        routes = self.routes(data, providers)
        logging = self.logging(self.table(data, "logging", "logging", _LOGGING_FIELDS))
        cache = self.cache(self.table(data, "cache", "cache", _CACHE_FIELDS))
        metrics = MetricsConfig(enabled=self.table(data, "metrics", "metrics", _METRICS_FIELDS).get_bool("enabled", True))
        auth = self.auth(self.table(data, "auth", "auth", ("github",)))
        state = self.state(self.table(data, "state", "state", _STATE_FIELDS))
        groups = self.groups(data)
        models = ModelsConfig(
            cache_ttl_s=self.table(data, "models", "models", _MODELS_FIELDS).get_seconds("cache_ttl_s", 300.0, positive=False)
        )
        if self.errors:
            raise ConfigError(self.errors)
        if path is not None and self.literal_secrets and _readable_by_others(path):
            self.warn(path, f"config file is readable by others and holds literal secrets (chmod 600 {path})")
        return Config(
            server=server,
            keys=keys,
            providers=providers,
            routes=routes,
            logging=logging,
            cache=cache,
            metrics=metrics,
            path=path,
            warnings=tuple(self.warnings),
            auth=auth,
            state=state,
            groups=groups,
            models=models,
        )

    def groups(self, data: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """``[groups] NAME = ["p1", "p2"]``: a named path ``/NAME/...`` with failover.

        A group may share its name with a provider (the priority-router import makes
        ``openai = ["openai", "openai_2"]``): the group then owns ``/NAME/...``.
        """
        raw = data.get("groups", _ABSENT)
        if raw is _ABSENT:
            return {}
        if not isinstance(raw, dict):
            self.error("groups", 'must be a table of NAME = ["provider", ...] ([groups])')
            return {}
        out: dict[str, tuple[str, ...]] = {}
        for name, members in raw.items():
            path = f"groups.{name}"
            if not _PROVIDER_NAME.fullmatch(name):
                self.error(path, "name must be letters, digits, '_', '.', '-' (it is used in URL paths)")
                continue
            if name in RESERVED_PROVIDER_NAMES:
                self.error(path, f"name clashes with the gateway's own path /{name}/; choose another")
                continue
            if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
                self.error(path, 'must be a non-empty list of provider names, e.g. ["openai", "openai_2"]')
                continue
            ok = True
            for i, member in enumerate(members):
                if member not in self.declared_providers:
                    self.error(f"{path}[{i}]", f"unknown provider '{member}'" + _did_you_mean(member, self.declared_providers))
                    ok = False
            if ok:
                out[name] = tuple(dict.fromkeys(members))
        return out

    def server(self, t: _Table) -> ServerConfig:
        d = ServerConfig()
        host = t.get_str("host", d.host, nonempty=True)
        public_paths = t.get_str_list("public_paths", d.public_paths)
        for i, p in enumerate(public_paths):
            if not p.startswith("/"):
                self.error(f"{t.path}.public_paths[{i}]", "must start with /")
        return ServerConfig(
            host=host,
            port=t.get_int("port", d.port, lo=0, hi=65535),
            workers=t.get_int("workers", d.workers, lo=1),
            max_body_bytes=t.get_int("max_body_bytes", d.max_body_bytes, lo=1),
            max_header_bytes=t.get_int("max_header_bytes", d.max_header_bytes, lo=1),
            header_timeout_s=t.get_seconds("header_timeout_s", d.header_timeout_s, positive=True),
            keepalive_timeout_s=t.get_seconds("keepalive_timeout_s", d.keepalive_timeout_s, positive=True),
            shutdown_grace_s=t.get_seconds("shutdown_grace_s", d.shutdown_grace_s, positive=False),
            max_connections=t.get_int("max_connections", d.max_connections, lo=1),
            request_timeout_s=t.get_seconds("request_timeout_s", d.request_timeout_s, positive=True),
            cors_origins=t.get_str_list("cors_origins", d.cors_origins),
            public_paths=public_paths,
            session_ttl_s=t.get_seconds("session_ttl_s", d.session_ttl_s, positive=True),
            max_sessions=t.get_int("max_sessions", d.max_sessions, lo=1),
        )

    def providers(self, data: Mapping[str, Any]) -> dict[str, Provider]:
        raw = data.get("providers", _ABSENT)
        if raw is _ABSENT:
            self.warn("providers", "none configured; routed requests will get 404")
            return {}
        if not isinstance(raw, dict):
            self.error("providers", "must be a table of providers ([providers.NAME])")
            return {}
        out: dict[str, Provider] = {}
        self.declared_providers = list(raw)
        for name, body in raw.items():
            path = f"providers.{name}"
            if not _PROVIDER_NAME.fullmatch(name):
                self.error(path, "name must be letters, digits, '_', '.', '-' (it is used in URL paths)")
            elif name in RESERVED_PROVIDER_NAMES:
                self.error(path, f"name clashes with the gateway's own path /{name}/; choose another")
            if not isinstance(body, dict):
                self.error(path, f"must be a table ([{path}])")
                continue
            provider = self.provider(name, _Table(self, path, body, _PROVIDER_FIELDS))
            if provider is not None:
                out[name] = provider
        if not raw:
            self.warn("providers", "none configured; routed requests will get 404")
        return out

    def provider(self, name: str, t: _Table) -> Provider | None:
        d = Provider(name=name, type="openai", base_url="", keys=())
        ptype = self.provider_type(name, t)
        parts = self.base_url(t, ptype)
        key_format = t.get_choice("key_format", d.key_format, KEY_FORMATS)
        keys = self.key_pool(t, parts[1] if parts else "", key_format)
        proxy = t.get_str("proxy", d.proxy, nonempty=False)
        if proxy and proxy.lower().startswith("socks"):
            reason = _socks_proxy_error(proxy)
            if reason:
                self.error(f"{t.path}.proxy", f"{reason}: must be socks5://[user:pass@]host:port or socks5h://[user:pass@]host:port")
        elif proxy and not _valid_proxy(proxy):
            self.error(f"{t.path}.proxy", "must be http://[user:pass@]host:port")
        read_timeout = t.get_seconds("read_timeout_s", d.read_timeout_s, positive=True)
        # SPEC §3: unset, the wait for the response head is the read timeout.
        first_byte = t.get_seconds("first_byte_timeout_s", read_timeout, positive=True)
        key_strategy = t.get_choice("key_strategy", d.key_strategy, KEY_STRATEGIES)
        cooldown = t.get_seconds("cooldown_s", d.cooldown_s, positive=False)
        priority = t.get_int("priority", d.priority)
        models = t.get_str_list("models", d.models)
        connect_timeout = t.get_seconds("connect_timeout_s", d.connect_timeout_s, positive=True)
        timeout = t.get_seconds("timeout_s", d.timeout_s, positive=False)
        max_retries = t.get_int("max_retries", d.max_retries, lo=0, hi=100)
        retry_backoff = t.get_seconds("retry_backoff_s", d.retry_backoff_s, positive=False)
        pool_idle = t.get_seconds("pool_idle_s", d.pool_idle_s, positive=False)
        max_connections = t.get_int("max_connections", d.max_connections, lo=1)
        headers = self.headers(t)
        free_only = t.get_bool("free_only", d.free_only)
        if ptype is None or parts is None or keys is None:
            return None
        scheme, host, port, base_path, base_url = parts
        return Provider(
            name=name,
            type=ptype,
            base_url=base_url,
            keys=keys,
            key_format=key_format,
            key_strategy=key_strategy,
            cooldown_s=cooldown,
            priority=priority,
            models=models,
            connect_timeout_s=connect_timeout,
            first_byte_timeout_s=first_byte,
            read_timeout_s=read_timeout,
            timeout_s=timeout,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff,
            pool_idle_s=pool_idle,
            max_connections=max_connections,
            proxy=proxy,
            headers=headers,
            free_only=free_only,
            scheme=scheme,
            host=host,
            port=port,
            base_path=base_path,
        )

    def provider_type(self, name: str, t: _Table) -> str | None:
        raw = t.raw("type")
        if raw is _UNRESOLVED:
            return None
        if raw is _ABSENT:
            # [providers.openai] without type= means what it says.
            if name in PROVIDER_TYPES:
                return name
            self.error(f"{t.path}.type", "required (one of " + ", ".join(PROVIDER_TYPES) + ")")
            return None
        if raw not in PROVIDER_TYPES:
            self.error(f"{t.path}.type", "must be one of " + ", ".join(PROVIDER_TYPES))
            return None
        return str(raw)

    def base_url(self, t: _Table, ptype: str | None) -> tuple[str, str, int, str, str] | None:
        raw = t.raw("base_url")
        if raw is _UNRESOLVED:
            return None
        if raw is _ABSENT:
            if ptype is None:
                return None
            raw = DEFAULT_BASE_URLS[ptype]
        path = f"{t.path}.base_url"
        if not isinstance(raw, str):
            self.error(path, "must be a string")
            return None
        parts = _split_base_url(raw)
        if isinstance(parts, str):
            self.error(path, parts)
            return None
        return parts

    def key_pool(self, t: _Table, host: str, key_format: str) -> tuple[str, ...] | None:
        path = f"{t.path}.keys"
        raw = t.raw("keys")
        if raw is _ABSENT:
            self.error(path, 'required: a pool of at least one key, e.g. ["env:NAME"]')
            return None
        if raw is _UNRESOLVED:
            return None
        if not isinstance(raw, list):
            self.error(path, "must be a list of strings")
            return None
        if not raw:
            self.error(path, "empty key pool; add at least one key")
            return None
        keys: list[str] = []
        seen: dict[str, int] = {}
        failed = False
        for i, item in enumerate(raw):
            kpath = f"{path}[{i}]"
            key = self.credential(item, kpath)
            if key is None:
                failed = True
                continue
            if key in seen:
                self.warn(kpath, f"same key as keys[{seen[key]}]; a pool rotates over distinct keys")
            seen.setdefault(key, i)
            if key_format == "auto" and self.key_formats:
                self.check_key_shape(key, kpath, host)
            keys.append(key)
        return None if failed else tuple(keys)

    def check_key_shape(self, key: str, path: str, host: str) -> None:
        """A key that cannot belong to the vendor whose official host it is sent to.

        An error, since that vendor would only answer 401 and disable it at the first
        request. Checked on official hosts only: type openai also fronts local servers,
        proxies and other vendors, whose keys look like anything. Never echoes the key.
        """
        shape = OFFICIAL_KEY_PREFIXES.get(host.lower())
        if shape is None:
            return
        prefix, what = shape
        if not key.startswith(prefix):
            self.error(
                path,
                f"does not look like {what} (they start with {prefix}); check the key, "
                'or set key_format = "any" if this server takes other keys',
            )

    def headers(self, t: _Table) -> tuple[tuple[str, str], ...]:
        raw = t.raw("headers")
        path = f"{t.path}.headers"
        if raw is _ABSENT or raw is _UNRESOLVED:
            return ()
        if not isinstance(raw, dict):
            self.error(path, 'must be a table of strings, e.g. { "X-Title" = "my-app" }')
            return ()
        out: list[tuple[str, str]] = []
        for name, value in raw.items():
            hpath = f"{path}.{name}"
            if not _TOKEN.fullmatch(name):
                self.error(hpath, "not a valid HTTP header name")
                continue
            if name.lower() in _FORBIDDEN_HEADERS:
                self.error(hpath, "set by the gateway itself; cannot be configured")
                continue
            if value is _UNRESOLVED:
                continue
            if not isinstance(value, str):
                self.error(hpath, "must be a string")
                continue
            # RFC 9110 §5.5: CR, LF and NUL are never valid in a field value.
            if any(c in value for c in "\r\n\x00"):
                self.error(hpath, "must not contain CR, LF or NUL")
                continue
            out.append((name, value))
        return tuple(out)

    def keys(self, data: Mapping[str, Any], providers: Mapping[str, Provider]) -> tuple[GatewayKey, ...]:
        entries = self.array_of_tables(data, "keys")
        if not entries:
            self.warn("keys", "no gateway keys configured; authentication is off")
        names: dict[str, str] = {}
        values: dict[str, str] = {}
        out: list[GatewayKey] = []
        for index, (path, body) in enumerate(entries):
            t = _Table(self, path, body, _KEY_FIELDS)
            raw_key = t.raw("key")
            key: str | None = None
            if raw_key is _ABSENT:
                self.error(f"{path}.key", "required")
            else:
                key = self.credential(raw_key, f"{path}.key")
            default_name = "default" if len(entries) == 1 else f"key{index + 1}"
            name = t.get_str("name", default_name, nonempty=True)
            if name in names:
                self.error(f"{path}.name", f"duplicate name '{name}' (also {names[name]})")
            names.setdefault(name, path)
            if key is not None:
                if key in values:
                    self.error(f"{path}.key", f"same key as {values[key]}; each gateway key must be unique")
                values.setdefault(key, path)
            pinned = self.provider_refs(t, "providers")
            gk = GatewayKey(
                key=key or "",
                name=name,
                providers=pinned,
                models=t.get_str_list("models", ()),
                rate_limit_rpm=t.get_int("rate_limit_rpm", 0, lo=0),
                rate_limit_burst=t.get_int("rate_limit_burst", 0, lo=0),
                rate_limit_tpm=t.get_int("rate_limit_tpm", 0, lo=0),
                admin=t.get_bool("admin", False),
            )
            out.append(gk)
        return tuple(out)

    def provider_refs(self, t: _Table, field: str) -> tuple[str, ...]:
        names = t.get_str_list(field, ())
        for i, name in enumerate(names):
            if name not in self.declared_providers:
                self.error(
                    f"{t.path}.{field}[{i}]",
                    f"unknown provider '{name}'" + _did_you_mean(name, self.declared_providers),
                )
        return names

    def routes(self, data: Mapping[str, Any], providers: Mapping[str, Provider]) -> tuple[Route, ...]:
        out: list[Route] = []
        for index, (path, body) in enumerate(self.array_of_tables(data, "routes")):
            t = _Table(self, path, body, _ROUTE_FIELDS)
            match = t.get_str("match", "", nonempty=True, required=True)
            model_raw = t.raw("model")
            model = None if model_raw is _ABSENT else t.get_str("model", "", nonempty=True)
            route = Route(
                match=match,
                model=model or None,
                providers=self.provider_refs(t, "providers"),
                provider_order=t.get_str_list("provider_order", ()),
                force_provider_order=t.get_bool("force_provider_order", False),
                provider_models=self.provider_models(t),
                on_disconnect=t.get_choice("on_disconnect", "close", ON_DISCONNECT),
            )
            self.check_route(route, index, out, providers)
            out.append(route)
        return tuple(out)

    def provider_models(self, t: _Table) -> tuple[tuple[str, str], ...]:
        raw = t.raw("provider_models")
        path = f"{t.path}.provider_models"
        if raw is _ABSENT or raw is _UNRESOLVED:
            return ()
        if not isinstance(raw, dict):
            self.error(path, 'must be a table of provider name to model, e.g. { deepseek = "deepseek-chat" }')
            return ()
        out: list[tuple[str, str]] = []
        for name, model in raw.items():
            if name not in self.declared_providers:
                self.error(f"{path}.{name}", f"unknown provider '{name}'" + _did_you_mean(name, self.declared_providers))
            elif not isinstance(model, str) or not model:
                self.error(f"{path}.{name}", "must be a non-empty string")
            else:
                out.append((name, model))
        return tuple(out)

    def check_route(self, route: Route, index: int, earlier: list[Route], providers: Mapping[str, Provider]) -> None:
        """Warnings for routes that parse but cannot do what their author meant."""
        path = f"routes[{index}]"
        literal = not any(c in route.match for c in "*?[")
        for j, prev in enumerate(earlier):
            if prev.match and (prev.match in (route.match, "*") or (literal and fnmatchcase(route.match, prev.match))):
                self.warn(f"{path}.match", f"never reached: routes[{j}] (match '{prev.match}') matches first")
                break
        if route.provider_order and providers:
            candidates = [providers[n] for n in route.providers if n in providers] or list(providers.values())
            if not any(p.type == "openrouter" for p in candidates):
                self.warn(
                    f"{path}.provider_order",
                    "has no effect: none of the route's providers is of type openrouter",
                )

    def logging(self, t: _Table) -> LoggingConfig:
        d = LoggingConfig()
        return LoggingConfig(
            dir=t.get_str("dir", d.dir, nonempty=True),
            access=t.get_bool("access", d.access),
            chat=t.get_bool("chat", d.chat),
            chat_file_limit=t.get_int("chat_file_limit", d.chat_file_limit, lo=1),
            errors=t.get_bool("errors", d.errors),
            max_bytes=t.get_int("max_bytes", d.max_bytes, lo=0),
            backups=t.get_int("backups", d.backups, lo=0),
        )

    def state(self, t: _Table) -> StateConfig:
        from rawgw.state.url import parse_state_url

        d = StateConfig()
        url = ""
        raw = t.raw("url")
        if raw is not _ABSENT and raw != "":
            # the URL may carry a password: a literal one is warned about like a key
            value = self.credential(raw, "state.url") if isinstance(raw, str) and "@" in raw else raw
            if not isinstance(value, str):
                self.error("state.url", "must be a string: redis://[user:pass@]host:port/db, rediss://… or unix:///path")
            else:
                try:
                    parse_state_url(value)
                    url = value
                except ValueError as exc:
                    self.error("state.url", str(exc))  # names the URL masked
        prefix = t.get_str("prefix", d.prefix, nonempty=True)
        timeout_ms = t.get_int("timeout_ms", d.timeout_ms, lo=1, hi=60000)
        return StateConfig(url=url, prefix=prefix, timeout_ms=timeout_ms)

    def cache(self, t: _Table) -> CacheConfig:
        d = CacheConfig()
        return CacheConfig(
            enabled=t.get_bool("enabled", d.enabled),
            ttl_s=t.get_seconds("ttl_s", d.ttl_s, positive=True),
            max_entries=t.get_int("max_entries", d.max_entries, lo=1),
        )


    def auth(self, t: _Table) -> AuthConfig:
        raw = t.raw("github")
        if raw is _ABSENT:
            return AuthConfig()
        g = self.table(t.data, "github", "auth.github", _GITHUB_FIELDS)
        client_id = g.get_str("client_id", "", nonempty=True, required=True)
        secret_raw = g.raw("client_secret")
        secret: str | None = None
        if secret_raw is _ABSENT:
            self.error("auth.github.client_secret", f"required (e.g. {ENV_PREFIX}GITHUB_CLIENT_SECRET)")
        else:
            secret = self.credential(secret_raw, "auth.github.client_secret")
        urls: dict[str, str] = {}
        for name, default in (("oauth_base", "https://github.com"), ("api_base", "https://api.github.com")):
            value = g.get_str(name, default, nonempty=True)
            parts = _split_base_url(value)
            if isinstance(parts, str):
                self.error(f"auth.github.{name}", parts)
            else:
                urls[name] = parts[4]
        redirect = g.get_str("redirect_url", "", nonempty=False)
        if redirect and isinstance(_split_base_url(redirect.split("?")[0]), str):
            self.error("auth.github.redirect_url", "must be an http:// or https:// URL")
        users = g.get_str_list("allowed_users", ())
        orgs = g.get_str_list("allowed_orgs", ())
        admins = g.get_str_list("admins", ())
        if not (users or orgs or admins):
            self.warn("auth.github", "no allowed_users, allowed_orgs or admins: nobody can sign in")
        d = self.table(g.data, "key_defaults", "auth.github.key_defaults", _KEY_DEFAULT_FIELDS)
        defaults = KeyDefaults(
            providers=self.provider_refs(d, "providers"),
            models=d.get_str_list("models", ()),
            rate_limit_rpm=d.get_int("rate_limit_rpm", 0, lo=0),
            rate_limit_burst=d.get_int("rate_limit_burst", 0, lo=0),
        )
        return AuthConfig(
            github=GithubAuth(
                client_id=client_id,
                client_secret=secret or "",
                allowed_users=users,
                allowed_orgs=orgs,
                admins=admins,
                oauth_base=urls.get("oauth_base", "https://github.com"),
                api_base=urls.get("api_base", "https://api.github.com"),
                redirect_url=redirect,
                key_defaults=defaults,
            )
        )


class _Table:
    """Typed reads from one TOML table; unknown settings are reported on construction."""

    __slots__ = ("data", "parser", "path")

    def __init__(self, parser: _Parser, path: str, data: dict[str, Any], known: tuple[str, ...]) -> None:
        self.parser = parser
        self.path = path
        self.data = data
        for name in data:
            if name not in known:
                parser.error(_join(path, name), "unknown setting" + _did_you_mean(name, known))

    def raw(self, name: str) -> Any:
        return self.data.get(name, _ABSENT)

    def _err(self, name: str, message: str) -> None:
        self.parser.error(_join(self.path, name), message)

    def get_int(self, name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(name)
        if value is _ABSENT or value is _UNRESOLVED:
            return default
        # bool is an int subclass in Python; `port = true` is still a mistake.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            ok = False
        if ok:
            return int(value)
        if lo is not None and hi is not None:
            self._err(name, f"must be an integer between {lo} and {hi}")
        elif lo == 1:
            self._err(name, "must be a positive integer")
        elif lo is not None:
            self._err(name, f"must be an integer >= {lo}")
        else:
            self._err(name, "must be an integer")
        return default

    def get_seconds(self, name: str, default: float, *, positive: bool) -> float:
        value = self.raw(name)
        if value is _ABSENT or value is _UNRESOLVED:
            return default
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0)
        ):
            return float(value)
        self._err(name, f"must be a number of seconds {'> 0' if positive else '>= 0'}")
        return default

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is _ABSENT or value is _UNRESOLVED:
            return default
        if isinstance(value, bool):
            return value
        self._err(name, "must be true or false")
        return default

    def get_str(self, name: str, default: str, *, nonempty: bool, required: bool = False) -> str:
        value = self.raw(name)
        if value is _ABSENT:
            if required:
                self._err(name, "required")
            return default
        if value is _UNRESOLVED:
            return default
        if not isinstance(value, str):
            self._err(name, "must be a string")
            return default
        if nonempty and not value:
            self._err(name, "must not be empty")
            return default
        return value

    def get_choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get_str(name, default, nonempty=False)
        if value not in choices:
            self._err(name, "must be one of " + ", ".join(choices))
            return default
        return value

    def get_str_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is _ABSENT or value is _UNRESOLVED:
            return default
        if not isinstance(value, list):
            self._err(name, "must be a list of strings")
            return default
        out: list[str] = []
        for i, item in enumerate(value):
            if item is _UNRESOLVED:
                continue
            if not isinstance(item, str):
                self._err(f"{name}[{i}]", "must be a string")
                continue
            out.append(item)
        return tuple(out)


def _split_base_url(url: str) -> tuple[str, str, int, str, str] | str:
    """``(scheme, host, port, base_path, normalized_url)`` or an error message.

    Messages never echo the URL: it might carry credentials.
    """
    if not _CREDENTIAL.fullmatch(url):
        return "must be a URL without spaces or control characters"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials (put keys in keys = [...])"
    host = parts.hostname
    if not host or not _HOST.fullmatch(host):
        return "must include a valid host"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    try:
        explicit_port = parts.port
    except ValueError:
        return "has an invalid port"
    port = explicit_port or (443 if scheme == "https" else 80)
    base_path = parts.path.rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    if explicit_port is not None:
        netloc = f"{netloc}:{explicit_port}"
    return scheme, host, port, base_path, f"{scheme}://{netloc}{base_path}"


def _valid_proxy(url: str) -> bool:
    if not _CREDENTIAL.fullmatch(url):
        return False
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() == "http"
        and bool(parts.hostname)
        and port is not None
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and (parts.username is None) == (parts.password is None)
    )


def _socks_proxy_error(url: str) -> str:
    """Why a socks5[h]:// proxy URL is unusable, or "" (messages never quote the URL)."""
    if not _CREDENTIAL.fullmatch(url):
        return "must be a URL without spaces or control characters"
    parsed = parse_proxy_url(url)
    return parsed if isinstance(parsed, str) else ""


def _readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o044)
    except OSError:
        return False
