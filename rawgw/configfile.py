"""The config the gateway runs: the main TOML file with the admin overlay merged in.

``rawgw.config`` validates one document; ``rawgw.control.overlay`` merges the
runtime changes of the admin API (``gateway.d/admin.toml``) into it. This module
composes the two, so neither depends on the other's caller.
"""

from __future__ import annotations

from collections.abc import Mapping

from rawgw.config import Config, read_toml
from rawgw.control.overlay import parse_with_overlay


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path`` plus its overlay; every failure is a ConfigError."""
    return parse_with_overlay(read_toml(path), env, path)
