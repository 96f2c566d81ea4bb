"""rawgw.control.overlay: merge rules, tombstones, error paths naming gateway.d/admin.toml,
atomic 0600 writes, load_config round trip; plus the config fields the control plane adds."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rawgw.config import ConfigError, parse_config
from rawgw.configfile import load_config
from rawgw.control import overlay as ov

GW = "gw-7d3c1f0e9b8a6d5c4b3a2f1e0d9c8b7a"
ENV = {"OR1": "sk-or-v1-3f1e9c0d7a4b2e8f6c5d1a0b9e8f7c6d5a4b3c2d1e0f9a8b7c6d5e4f", "GW": GW}
MAIN = """
[[keys]]
key = "env:GW"
[providers.openrouter]
keys = ["env:OR1"]
[providers.groq]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = ["env:OR1"]
[[routes]]
match = "fast"
providers = ["groq"]
[[routes]]
match = "*"
providers = ["openrouter"]
"""


def write(tmp: Path, main: str = MAIN, overlay: dict[str, Any] | None = None) -> str:
    path = tmp / "gateway.toml"
    path.write_text(main)
    path.chmod(0o600)
    if overlay is not None:
        ov.write_overlay(ov.overlay_path(str(path)), overlay)
    return str(path)


def main_doc() -> dict[str, Any]:
    return tomllib.loads(MAIN)


# --------------------------------------------------------------------------- merge


def test_new_route_goes_before_main_routes_and_replacement_keeps_position() -> None:
    data, _ = ov.merge(main_doc(), {"routes": [{"match": "new", "providers": ["openrouter"]}, {"match": "fast", "providers": ["openrouter"]}]})
    assert [(r["match"], r["providers"]) for r in data["routes"]] == [
        ("new", ["openrouter"]),
        ("fast", ["openrouter"]),
        ("*", ["openrouter"]),
    ]


def test_route_tombstone_removes_main_route() -> None:
    cfg = ov.parse_with_overlay(main_doc(), ENV, None, {"removed_routes": ["fast"]})
    assert [r.match for r in cfg.routes] == ["*"]


def test_key_patch_keeps_main_secret_and_default_name() -> None:
    # the unnamed main key is "default" only while it is alone: its name is pinned
    overlay = {"keys": [{"name": "default", "models": ["m"]}, {"name": "alice", "key": "rgw_" + "a" * 30}]}
    cfg = ov.parse_with_overlay(main_doc(), ENV, None, overlay)
    assert [(k.name, k.key, k.models) for k in cfg.keys] == [("default", GW, ("m",)), ("alice", "rgw_" + "a" * 30, ())]


def test_key_tombstone_revokes_main_key_and_same_name_is_a_fresh_key() -> None:
    cfg = ov.parse_with_overlay(main_doc(), ENV, None, {"removed_keys": ["default"]})
    assert cfg.keys == ()
    fresh = {"removed_keys": ["default"], "keys": [{"name": "default", "key": "rgw_" + "b" * 30}]}
    cfg = ov.parse_with_overlay(main_doc(), ENV, None, fresh)
    assert [(k.name, k.key) for k in cfg.keys] == [("default", "rgw_" + "b" * 30)]


def test_overlay_errors_name_the_overlay_file_and_main_errors_keep_main_paths() -> None:
    main = main_doc()
    main["routes"][1]["providers"] = ["nope"]  # main file's routes[1]; merged index differs
    overlay = {"routes": [{"match": "new", "providers": ["groqq"]}], "keys": [{"name": "default", "rate_limit_rpm": -1}]}
    with pytest.raises(ConfigError) as info:
        ov.parse_with_overlay(main, ENV, None, overlay)
    errors = info.value.errors
    assert "gateway.d/admin.toml: routes[0].providers[0]: unknown provider 'groqq' (did you mean groq?)" in errors
    assert "gateway.d/admin.toml: keys[0].rate_limit_rpm: must be an integer >= 0" in errors
    assert any(e.startswith("routes[1].providers[0]: unknown provider 'nope'") for e in errors), errors


def test_focus_gives_paths_relative_to_the_item_sent() -> None:
    overlay = {"routes": [{"match": "new", "providers": ["groqq"], "colour": 1}]}
    with pytest.raises(ConfigError) as info:
        ov.parse_with_overlay(main_doc(), ENV, None, overlay, focus=("routes", "new"))
    assert info.value.errors == [
        "colour: unknown setting",
        "providers[0]: unknown provider 'groqq' (did you mean groq?)",
    ]


def test_structural_errors() -> None:
    bad = {"routes": [{"providers": []}, {"match": "a"}, {"match": "a"}], "removed_keys": [1], "extra": 1}
    assert ov.check_overlay(bad) == [
        "gateway.d/admin.toml: extra: unknown setting (expected routes, keys, removed_routes, removed_keys)",
        "gateway.d/admin.toml: routes[0].match: required (the overlay merges by match)",
        "gateway.d/admin.toml: routes[2].match: duplicate 'a'",
        "gateway.d/admin.toml: removed_keys: must be a list of strings",
    ]


def test_no_literal_secret_warning_for_generated_keys(tmp_path: Path) -> None:
    path = write(tmp_path, overlay={"keys": [{"name": "alice", "key": "rgw_" + "c" * 30}]})
    Path(path).chmod(0o644)  # main has only env: secrets: its mode is not the overlay's business
    cfg = load_config(path, ENV)
    assert cfg.warnings == (), cfg.warnings


# --------------------------------------------------------------------------- edits


def test_edit_helpers() -> None:
    main = main_doc()
    o: ov.Overlay = {}
    assert ov.route_exists(o, main, "fast") and not ov.route_exists(o, main, "x")
    ov.set_route(o, {"match": "x", "providers": ["groq"]})
    ov.set_route(o, {"match": "x", "model": "m"})
    assert o["routes"] == [{"match": "x", "model": "m"}]
    assert ov.remove_route(o, main, "x") and not ov.route_exists(o, main, "x")
    assert ov.remove_route(o, main, "fast") and o["removed_routes"] == ["fast"]
    assert not ov.remove_route(o, main, "fast") and not ov.remove_route(o, main, "zzz")
    assert ov.key_exists(o, main, "default")
    ov.set_key(o, "default", {"models": ["a"]})
    ov.set_key(o, "default", {"rate_limit_rpm": 5})
    assert o["keys"] == [{"name": "default", "models": ["a"], "rate_limit_rpm": 5}]
    assert ov.remove_key(o, main, "default") and not ov.key_exists(o, main, "default")


# --------------------------------------------------------------------------- files


def test_write_is_0600_atomic_and_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path)
    target = ov.overlay_path(path)
    overlay = {"routes": [{"match": "n", "providers": ["groq"]}], "removed_keys": ["x"]}
    ov.write_overlay(target, overlay)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(target)).st_mode) == 0o700
    assert ov.read_overlay(target) == overlay
    assert Path(target).read_text().startswith("# Written by rawgw")
    assert [p.name for p in Path(target).parent.iterdir()] == ["admin.toml"]  # no temp file left


def test_load_config_applies_overlay_and_names_it_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, overlay={"routes": [{"match": "n", "providers": ["groq"]}], "removed_routes": ["fast"]})
    cfg = load_config(path, ENV)
    assert [r.match for r in cfg.routes] == ["n", "*"]
    ov.write_overlay(ov.overlay_path(path), {"routes": [{"match": "n", "providers": ["missing"]}]})
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert info.value.errors == ["gateway.d/admin.toml: routes[0].providers[0]: unknown provider 'missing'"]
    Path(ov.overlay_path(path)).write_text("routes = [")
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert info.value.errors[0].startswith("gateway.d/admin.toml: TOML syntax error")


def test_update_validates_before_writing(tmp_path: Path) -> None:
    path = write(tmp_path)

    def add(o: ov.Overlay, main: dict[str, Any]) -> str:
        ov.set_route(o, {"match": "n", "providers": ["groq"]})
        return "done"

    cfg, result = ov.update(path, add, ENV)
    assert result == "done" and cfg.routes[0].match == "n"

    def bad(o: ov.Overlay, main: dict[str, Any]) -> None:
        ov.set_route(o, {"match": "m", "providers": ["missing"]})

    with pytest.raises(ConfigError):
        ov.update(path, bad, ENV, focus=("routes", "m"))
    assert ov.read_overlay(ov.overlay_path(path)) == {"routes": [{"match": "n", "providers": ["groq"]}]}


# --------------------------------------------------------------------------- config fields


def test_config_admin_flag_sessions_and_github() -> None:
    doc = {
        "server": {"session_ttl_s": 60, "max_sessions": 5},
        "keys": [{"key": GW, "admin": True}],
        "providers": {"openrouter": {"keys": ["env:OR1"]}},
        "auth": {
            "github": {
                "client_id": "cid",
                "client_secret": "env:GW",
                "allowed_orgs": ["acme"],
                "admins": ["octocat"],
                "oauth_base": "http://127.0.0.1:1/",
                "key_defaults": {"providers": ["openrouter"], "rate_limit_rpm": 10},
            }
        },
    }
    cfg = parse_config(doc, ENV)
    assert cfg.keys[0].admin and cfg.server.session_ttl_s == 60 and cfg.server.max_sessions == 5
    gh = cfg.auth.github
    assert gh is not None and gh.client_secret == GW and gh.oauth_base == "http://127.0.0.1:1"
    assert gh.key_defaults.providers == ("openrouter",) and gh.key_defaults.rate_limit_rpm == 10
    assert GW not in repr(cfg)
    doc["auth"]["github"] = {"client_id": "", "key_defaults": {"providers": ["x"]}, "admin": []}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, ENV)
    assert info.value.errors == [
        "auth.github.admin: unknown setting (did you mean admins?)",
        "auth.github.client_id: must not be empty",
        "auth.github.client_secret: required (e.g. env:GITHUB_CLIENT_SECRET)",
        "auth.github.key_defaults.providers[0]: unknown provider 'x'",
    ]
