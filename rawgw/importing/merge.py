"""The gateway.toml being assembled from every input, and how it is written.

Secrets found in an input never reach the written file: each becomes an ``env:NAME``
reference and the literal goes to the export list, printed masked.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from rawgw.config import ENV_PREFIX


def unique(base: str, taken: Container[str]) -> str:
    """``base``, or ``base_2``, ``base_3`` … : the first name not in ``taken``."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name

class ImportFailed(Exception):
    """One input could not be converted; the message is safe to print (no secrets)."""


@dataclass(slots=True)
class Export:
    """One environment variable the generated config reads."""

    value: str | None  # the literal secret found in an input, or None when unknown
    hint: str  # what to put there when the value is unknown, or where it came from


@dataclass(slots=True)
class Merge:
    """Every section the inputs produced, plus what to tell the user."""

    server: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    keys: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    logging: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Export] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # lines telling which generated name stands for which (masked) credential
    legend: list[str] = field(default_factory=list)
    provider_injection: bool = True
    # providers made to hold one virtual key's api_key -> the provider name it had there
    vk_providers: dict[str, str] = field(default_factory=dict)
    # the provider a FastAPI-gateway .env named (TARGET_SERVER_URL): its provider mapping
    # applies there, whatever the upstream is
    target_provider: str | None = None

    # ---------------------------------------------------------------- secrets

    def secret(self, value: str, var: str, hint: str) -> str:
        """An ``env:NAME`` reference for ``value``; the literal goes to the export list.

        A value already written as ``env:X`` is kept. The same literal seen twice maps to
        one variable, so a key shared by several entries is set once.
        """
        if value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX) :]
            self.exports.setdefault(name, Export(None, "already an env: reference in your input"))
            return value
        for name, export in self.exports.items():
            if export.value == value:
                return ENV_PREFIX + name
        name = self._unique_var(var)
        self.exports[name] = Export(value, hint)
        return ENV_PREFIX + name

    def placeholder(self, var: str, hint: str) -> str:
        """An ``env:NAME`` reference whose value the inputs did not contain."""
        if var not in self.exports:
            self.exports[var] = Export(None, hint)
        return ENV_PREFIX + var

    def _unique_var(self, base: str) -> str:
        return unique(base, self.exports)

    # ---------------------------------------------------------------- names

    def unique_provider(self, base: str) -> str:
        return unique(base, self.providers)

    def unique_key_name(self, base: str) -> str:
        return unique(base, {k["name"] for k in self.keys})

    def set_server(self, field_name: str, value: Any, source: str) -> None:
        old = self.server.get(field_name)
        if old is not None and old != value:
            self.notes.append(f"server.{field_name}: {source} says {value!r}, an earlier input {old!r}; the first is kept")
            return
        self.server[field_name] = value

    def shared_openrouter_providers(self) -> list[str]:
        """OpenRouter providers for everyone's routes, by priority: not the ones holding
        a virtual key's api_key, which only that key's clients should spend."""
        found = [
            (t.get("priority", 1), name)
            for name, t in self.providers.items()
            if t["type"] == "openrouter" and name not in self.vk_providers
        ]
        return [name for _, name in sorted(found, key=lambda pair: pair[0])]

    # ---------------------------------------------------------------- output

    def to_toml_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in ("server", "keys", "providers", "groups", "routes", "models", "cache", "logging"):
            value = getattr(self, name)
            if value:
                data[name] = value
        return data


def env_token(text: str) -> str:
    """``team-a.prod`` → ``TEAM_A_PROD``: a fragment usable in a variable name."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_") or "X"


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML for a generated config, with every array of tables as ``[[name]]`` tables.

    tomli_w writes a short array of tables inline (``keys = [{...}]``) at the top of the
    file, where a ``[server]`` table a user adds above it would swallow it (``server.keys``):
    written as ``[[keys]]`` tables, the file stays valid whatever section goes where.
    """
    parts: list[str] = []
    for name, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                flat = {k: v for k, v in item.items() if not isinstance(v, dict)}
                nested = {k: v for k, v in item.items() if isinstance(v, dict)}
                text = f"[[{name}]]\n" + tomli_w.dumps(flat)
                if nested:
                    # sub-tables of the array element just opened: [name.sub]
                    text += "\n" + tomli_w.dumps({name: nested})
                parts.append(text)
        else:
            parts.append(tomli_w.dumps({name: value}))
    return "\n".join(parts)


class CheckEnv(Mapping[str, str]):
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
