"""The admin overlay: ``gateway.d/admin.toml`` next to the config file.

Runtime changes made through the admin API (and personal keys from the GitHub device
flow) live here, never in the user's commented ``gateway.toml``. The file is loaded after
the main file by :func:`rawgw.config.load_config`, so changes survive SIGHUP and restart.

Shape (all four optional)::

    removed_routes = ["old-alias"]     # tombstones: the main file's route of that match is gone
    removed_keys = ["bob"]             # tombstones: the main file's key of that name is revoked
    [[routes]]                         # a whole route; replaces the main route of the same match
    match = "fast"                     # in place, else is placed BEFORE the main file's routes
    providers = ["groq"]               # (an admin's addition wins over a catch-all "*")
    [[keys]]                           # by name: over a live main-file key, a patch of its fields
    name = "alice"                     # (the secret stays the main file's one unless `key` is set);
    key = "rgw_..."                    # otherwise a whole key, appended after the main file's keys
    providers = ["openrouter"]

The merged document goes through the one validator (:func:`rawgw.config.parse_config`);
error and warning paths that belong to the overlay are rewritten to name
``gateway.d/admin.toml: routes[i]...`` so a bad hand edit is found where it is. The file
holds generated secrets in clear (the gateway must compare them): it is written 0600 in a
0700 directory, atomically (temp file, fsync, rename), and its literal-secret warnings are
not reported (it is not a file a human should move to ``env:``).

Wiring: :func:`update` blocks (file lock, reads, fsync); callers run it with
``asyncio.to_thread``. After it returns the new :class:`Config`, the caller swaps it in the
way SIGHUP does (``Gateway.reload``); other worker processes need a SIGHUP (or the state
server's broadcast) to pick it up.
"""

from __future__ import annotations

import copy
import fcntl
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final, TypeVar

import tomli_w

from rawgw.config import Config, ConfigError, parse_config, read_toml

OVERLAY_DIR: Final = "gateway.d"
OVERLAY_FILE: Final = "admin.toml"
LABEL: Final = f"{OVERLAY_DIR}/{OVERLAY_FILE}"
_FIELDS: Final = ("routes", "keys", "removed_routes", "removed_keys")
_HEADER: Final = (
    "# Written by rawgw's admin API: runtime routes and keys, merged after the main config.\n"
    "# Holds generated gateway keys: keep it 0600. Edit only while the gateway is stopped.\n\n"
)
_ITEM: Final = re.compile(r"(routes|keys)\[(\d+)\]([^:]*)(: .*)", re.S)
_LITERAL: Final = "literal secret in config file"
_READABLE: Final = "config file is readable by others"

Overlay = dict[str, Any]
T = TypeVar("T")


def overlay_dir(config_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), OVERLAY_DIR)


def overlay_path(config_path: str) -> str:
    return os.path.join(overlay_dir(config_path), OVERLAY_FILE)


def empty() -> Overlay:
    return {}


def read_overlay(path: str) -> Overlay | None:
    """The overlay file as a dict, None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError([f"{LABEL}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{LABEL}: not valid UTF-8 (byte offset {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{LABEL}: TOML syntax error: {exc}"]) from None


def parse_text(raw: bytes) -> Overlay:
    """An overlay file's bytes (e.g. from the state server) as a checked dict."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{LABEL}: not a valid overlay: {type(exc).__name__}"]) from None
    problems = check_overlay(doc)
    if problems:
        raise ConfigError(problems)
    return doc


def write_overlay(path: str, overlay: Overlay) -> None:
    """Atomically replace the overlay file (blocking: run it off the event loop)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    doc = {k: overlay[k] for k in _FIELDS if overlay.get(k)}
    text = _HEADER + tomli_w.dumps(doc)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".admin.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # the rename itself must reach the disk too
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- structure


def check_overlay(overlay: Mapping[str, Any]) -> list[str]:
    """Structural errors (before merging): the validator cannot tell overlay from main."""
    errors: list[str] = []
    if not isinstance(overlay, dict):
        return [f"{LABEL}: must be a table"]
    for name in overlay:
        if name not in _FIELDS:
            errors.append(f"{LABEL}: {name}: unknown setting (expected {', '.join(_FIELDS)})")
    for name, ident in (("routes", "match"), ("keys", "name")):
        items = overlay.get(name, [])
        if not isinstance(items, list):
            errors.append(f"{LABEL}: {name}: must be an array of tables ([[{name}]])")
            continue
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append(f"{LABEL}: {name}[{i}]: must be a table")
            elif not isinstance(item.get(ident), str) or not item[ident]:
                errors.append(f"{LABEL}: {name}[{i}].{ident}: required (the overlay merges by {ident})")
            elif item[ident] in seen:
                errors.append(f"{LABEL}: {name}[{i}].{ident}: duplicate '{item[ident]}'")
            else:
                seen.add(item[ident])
    for name in ("removed_routes", "removed_keys"):
        items = overlay.get(name, [])
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            errors.append(f"{LABEL}: {name}: must be a list of strings")
    return errors


def main_key_names(main: Mapping[str, Any]) -> list[str | None]:
    """Each main-file key's effective name (the validator's defaults for unnamed ones)."""
    keys = main.get("keys")
    if not isinstance(keys, list):
        return []
    out: list[str | None] = []
    for i, k in enumerate(keys):
        name = k.get("name") if isinstance(k, dict) else None
        if name is None and isinstance(k, dict):
            name = "default" if len(keys) == 1 else f"key{i + 1}"
        out.append(name if isinstance(name, str) else None)
    return out


def main_route_matches(main: Mapping[str, Any]) -> list[str | None]:
    routes = main.get("routes")
    if not isinstance(routes, list):
        return []
    return [r.get("match") if isinstance(r, dict) and isinstance(r.get("match"), str) else None for r in routes]


# --------------------------------------------------------------------------- merge


class Origins:
    """Where each merged ``routes[i]`` / ``keys[i]`` came from, to rewrite messages."""

    def __init__(self) -> None:
        # merged "routes[3]" -> (overlay label or None, main label or None, overlay fields)
        self.items: dict[str, tuple[str | None, str | None, frozenset[str]]] = {}
        self.focus: str | None = None  # merged item whose messages drop their prefix

    def rewrite(self, line: str) -> str:
        m = _ITEM.fullmatch(line)
        if m is None:
            return line
        item = f"{m[1]}[{m[2]}]"
        where = self.items.get(item)
        if where is None:
            return line
        ov_label, main_label, ov_fields = where
        rest, tail = m[3], m[4]
        field = rest.lstrip(".").split(".")[0].split("[")[0]
        from_overlay = ov_label is not None and (main_label is None or field in ov_fields)
        if item == self.focus and from_overlay:
            return (rest.lstrip(".") or ("route" if m[1] == "routes" else "key")) + tail
        label = ov_label if from_overlay else main_label
        return f"{label}{rest}{tail}"

    def is_overlay_secret(self, line: str) -> bool:
        m = _ITEM.fullmatch(line)
        if m is None or m[1] != "keys" or m[3] != ".key" or _LITERAL not in m[4]:
            return False
        where = self.items.get(f"keys[{m[2]}]")
        return where is not None and where[0] is not None and "key" in where[2]

    def warnings(self, warnings: tuple[str, ...]) -> tuple[str, ...]:
        kept = [w for w in warnings if not self.is_overlay_secret(w)]
        if not any(_LITERAL in w for w in kept):
            # the main file's own secrets are all env: — the overlay's are not its business
            kept = [w for w in kept if _READABLE not in w]
        return tuple(self.rewrite(w) for w in kept)


def merge(main: dict[str, Any], overlay: Mapping[str, Any]) -> tuple[dict[str, Any], Origins]:
    """The main document with the overlay applied (main is not modified)."""
    origins = Origins()
    data = dict(main)
    removed_r = set(overlay.get("removed_routes", ()))
    removed_k = set(overlay.get("removed_keys", ()))
    ov_routes: list[dict[str, Any]] = list(overlay.get("routes", ()))
    ov_keys: list[dict[str, Any]] = list(overlay.get("keys", ()))

    main_routes = main.get("routes", [])
    if isinstance(main_routes, list):
        matches = main_route_matches(main)
        live = {m for m in matches if m is not None and m not in removed_r}
        by_match = {r["match"]: i for i, r in enumerate(ov_routes)}
        routes: list[Any] = []
        for i, r in enumerate(ov_routes):
            if r["match"] not in live:
                origins.items[f"routes[{len(routes)}]"] = (f"{LABEL}: routes[{i}]", None, frozenset(r))
                routes.append(r)
        for j, r in enumerate(main_routes):
            m = matches[j]
            if m is not None and m in removed_r:
                continue
            if m is not None and m in by_match:
                i = by_match[m]
                origins.items[f"routes[{len(routes)}]"] = (f"{LABEL}: routes[{i}]", None, frozenset(ov_routes[i]))
                routes.append(ov_routes[i])
            else:
                origins.items[f"routes[{len(routes)}]"] = (None, f"routes[{j}]", frozenset())
                routes.append(r)
        if routes or "routes" in main:
            data["routes"] = routes

    main_keys = main.get("keys", [])
    if isinstance(main_keys, list):
        names = main_key_names(main)
        by_name = {k["name"]: i for i, k in enumerate(ov_keys)}
        keys: list[Any] = []
        used: set[str] = set()
        for j, k in enumerate(main_keys):
            name = names[j]
            if name is not None and name in removed_k:
                continue
            if name is not None and isinstance(k, dict):
                k = {**k, "name": name}  # pin the default name: the key count changes below
                if name in by_name and name not in used:
                    i = by_name[name]
                    used.add(name)
                    origins.items[f"keys[{len(keys)}]"] = (f"{LABEL}: keys[{i}]", f"keys[{j}]", frozenset(ov_keys[i]))
                    keys.append({**k, **ov_keys[i]})
                    continue
            origins.items[f"keys[{len(keys)}]"] = (None, f"keys[{j}]", frozenset())
            keys.append(k)
        for i, k in enumerate(ov_keys):
            if k["name"] not in used:
                origins.items[f"keys[{len(keys)}]"] = (f"{LABEL}: keys[{i}]", None, frozenset(k))
                keys.append(k)
        if keys or "keys" in main:
            data["keys"] = keys
    return data, origins


def parse_with_overlay(
    data: dict[str, Any],
    env: Mapping[str, str] | None,
    path: str | None,
    overlay: Mapping[str, Any] | None = None,
    focus: tuple[str, str] | None = None,
) -> Config:
    """Validate ``data`` with the overlay (given, or read from next to ``path``) merged in.

    ``focus`` = ("routes", match) or ("keys", name): that item's messages are given
    relative to it (``providers[0]: unknown provider``), for an API caller who sent it.
    """
    if overlay is None:
        overlay = read_overlay(overlay_path(path)) if path is not None else None
        if overlay is None:
            return parse_config(data, env, path)
    errors = check_overlay(overlay)
    if errors:
        raise ConfigError(errors)
    if not isinstance(data, dict):
        return parse_config(data, env, path)
    merged, origins = merge(data, overlay)
    if focus is not None:
        section, ident = focus
        field = "match" if section == "routes" else "name"
        for i, item in enumerate(merged.get(section, ())):
            if isinstance(item, dict) and item.get(field) == ident:
                origins.focus = f"{section}[{i}]"
    try:
        cfg = parse_config(merged, env, path)
    except ConfigError as exc:
        raise ConfigError([origins.rewrite(e) for e in exc.errors]) from None
    return replace(cfg, warnings=origins.warnings(cfg.warnings))


# --------------------------------------------------------------------------- edits (pure)


def route_exists(overlay: Overlay, main: Mapping[str, Any], match: str) -> bool:
    if any(r.get("match") == match for r in overlay.get("routes", ())):
        return True
    return match in main_route_matches(main) and match not in overlay.get("removed_routes", ())


def key_exists(overlay: Overlay, main: Mapping[str, Any], name: str) -> bool:
    if any(k.get("name") == name for k in overlay.get("keys", ())):
        return True
    return name in main_key_names(main) and name not in overlay.get("removed_keys", ())


def set_route(overlay: Overlay, route: dict[str, Any]) -> None:
    """Add or replace (whole) the overlay route with ``route["match"]``."""
    routes: list[dict[str, Any]] = overlay.setdefault("routes", [])
    for i, r in enumerate(routes):
        if r.get("match") == route["match"]:
            routes[i] = route
            return
    routes.append(route)


def remove_route(overlay: Overlay, main: Mapping[str, Any], match: str) -> bool:
    """Drop the route from the overlay, tombstone the main file's one; False if neither."""
    found = False
    routes = overlay.get("routes", [])
    kept = [r for r in routes if r.get("match") != match]
    if len(kept) != len(routes):
        overlay["routes"] = kept
        found = True
    removed: list[str] = overlay.setdefault("removed_routes", [])
    if match in main_route_matches(main) and match not in removed:
        removed.append(match)
        found = True
    return found


def set_key(overlay: Overlay, name: str, fields: Mapping[str, Any]) -> None:
    """Update the overlay entry of ``name`` with ``fields`` (created if absent)."""
    keys: list[dict[str, Any]] = overlay.setdefault("keys", [])
    for k in keys:
        if k.get("name") == name:
            k.update(fields)
            return
    keys.append({"name": name, **fields})


def remove_key(overlay: Overlay, main: Mapping[str, Any], name: str) -> bool:
    found = False
    keys = overlay.get("keys", [])
    kept = [k for k in keys if k.get("name") != name]
    if len(kept) != len(keys):
        overlay["keys"] = kept
        found = True
    removed: list[str] = overlay.setdefault("removed_keys", [])
    if name in main_key_names(main) and name not in removed:
        removed.append(name)
        found = True
    return found


def origin_of(overlay: Overlay, section: str, ident: str) -> str:
    """"admin" when the overlay defines or changes the item, else "file"."""
    field = "match" if section == "routes" else "name"
    return "admin" if any(x.get(field) == ident for x in overlay.get(section, ())) else "file"


# --------------------------------------------------------------------------- transaction


def update(
    config_path: str,
    change: Callable[[Overlay, dict[str, Any]], T],
    env: Mapping[str, str] | None = None,
    focus: tuple[str, str] | None = None,
    check: Callable[[Config], None] | None = None,
) -> tuple[Config, T]:
    """Read-modify-validate-write under an exclusive lock (blocking: use asyncio.to_thread).

    ``change(overlay, main)`` edits a copy of the overlay in place (it may raise, e.g. a
    GatewayError for 404/409); the merged result must validate, else ConfigError and the
    file is left as it was; so it is when ``check(config)`` raises. The lock also
    serialises worker processes.
    """
    directory = overlay_dir(config_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, ".admin.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        main = read_toml(config_path)
        path = overlay_path(config_path)
        current = read_overlay(path) or empty()
        errors = check_overlay(current)
        if errors:
            raise ConfigError(errors)
        new = copy.deepcopy(current)
        result = change(new, main)
        cfg = parse_with_overlay(main, env, config_path, new, focus)
        if check is not None:
            check(cfg)  # a policy on the result (e.g. "an admin must remain"); may raise
        write_overlay(path, new)
    return cfg, result
