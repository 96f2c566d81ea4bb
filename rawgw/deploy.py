"""``rawgw install-service``: the systemd unit for this interpreter and config.

deploy/rawgw.service in the repository is this template rendered for a venv in
/opt/rawgw and /etc/rawgw/gateway.toml (tests/test_deploy.py checks they agree).
"""

from __future__ import annotations

import math
import os
import stat
import sys

from rawgw.config import DEFAULT_CONFIG_NAME, ServerConfig, find_config_path

SHIPPED_PYTHON = "/opt/rawgw/venv/bin/python"
SHIPPED_CONFIG = "/etc/rawgw/gateway.toml"
DEFAULT_USER = "rawgw"
# After SIGTERM rawgw drains for shutdown_grace_s (SPEC 7); systemd waits this much longer
# before SIGKILL, for the close and the log thread's flush.
STOP_MARGIN_S = 15
DEFAULT_GRACE_S = ServerConfig().shutdown_grace_s

UNIT_TEMPLATE = """\
# rawgw, a strict HTTP/1.1 gateway for LLM APIs, as a systemd service.
# Made by `rawgw install-service`; deploy/rawgw.service is the same unit for a venv in
# /opt/rawgw (python3 -m venv /opt/rawgw/venv && /opt/rawgw/venv/bin/pip install rawgw).
# Install: copy to /etc/systemd/system/rawgw.service, then
#   systemctl daemon-reload && systemctl enable --now rawgw
# Secrets: NAME=value lines in /etc/rawgw/rawgw.env (mode 0600; systemd reads it as root),
# named "env:NAME" in the config. The config must be readable by any user (DynamicUser);
# logs go to [logging] dir = "/var/log/rawgw" (LogsDirectory below); a relative dir lands
# in /var/lib/rawgw (StateDirectory, the working directory).

[Unit]
Description=rawgw LLM gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={python} -m rawgw serve -c {config}
# SIGHUP reloads the config (a bad one is logged and the old one kept).
ExecReload=/bin/kill -HUP $MAINPID
EnvironmentFile=-/etc/rawgw/rawgw.env
Environment=PYTHONUNBUFFERED=1
User={user}
DynamicUser=yes
StateDirectory=rawgw
LogsDirectory=rawgw
WorkingDirectory=/var/lib/rawgw
# SIGTERM to rawgw only: with workers > 1 it stops its workers itself, each draining
# its requests for shutdown_grace_s; SIGKILL to everything left after TimeoutStopSec.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={timeout_stop}
Restart=on-failure
RestartSec=2
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# No capabilities: listen on a port above 1024 (8080). For 80/443 add
# AmbientCapabilities=CAP_NET_BIND_SERVICE and put it in the bounding set.
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
"""


def _quote(arg: str) -> str:
    """One ExecStart word: systemd expands %-specifiers and $VARS, splits on spaces."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in arg):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def render_unit(python: str, config: str, user: str = DEFAULT_USER, grace_s: float = DEFAULT_GRACE_S) -> str:
    return UNIT_TEMPLATE.format(
        python=_quote(python),
        config=_quote(config),
        user=user,
        timeout_stop=f"{math.ceil(grace_s) + STOP_MARGIN_S}s",
    )


def _grace_from(path: str) -> float:
    """shutdown_grace_s as written in the file, without resolving env: secrets (they may
    only exist for the service). The default when unreadable: `check` reports errors."""
    import tomllib

    try:
        with open(path, "rb") as f:
            value = tomllib.load(f).get("server", {}).get("shutdown_grace_s")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return DEFAULT_GRACE_S
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return DEFAULT_GRACE_S


def _unreadable_by_others(path: str, need: int) -> str | None:
    """The first path component a DynamicUser (not owner, not in the group) cannot get past."""
    parts = [path]
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent):
        parts.append(parent)
        parent = os.path.dirname(parent)
    for i, p in enumerate(parts):
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return p
        if not mode & (need if i == 0 else stat.S_IXOTH):
            return p
    return None


def cmd_install_service(config: str | None, user: str, write: str | None) -> int:
    cfg = os.path.abspath(find_config_path(config) or DEFAULT_CONFIG_NAME)
    python = sys.executable
    if not os.path.isfile(cfg):
        print(f"rawgw: warning: {cfg} does not exist yet; the unit names it anyway", file=sys.stderr)
    for path, need, what in ((cfg, stat.S_IROTH, "config"), (os.path.realpath(python), stat.S_IXOTH, "interpreter")):
        blocked = _unreadable_by_others(path, need) if os.path.exists(path) else None
        if blocked:
            print(
                f"rawgw: warning: the service's dynamic user cannot reach the {what} {path} ({blocked} is closed to others); "
                "install rawgw in a venv under /opt and the config under /etc/rawgw",
                file=sys.stderr,
            )
    unit = render_unit(python, cfg, user, _grace_from(cfg))
    if write is None:
        sys.stdout.write(unit)
        return 0
    target = os.path.join(write, "rawgw.service") if os.path.isdir(write) else write
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(unit)
    except OSError as exc:
        print(f"rawgw: cannot write {target}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {target}; now: systemctl daemon-reload && systemctl enable --now {os.path.basename(target)}")
    return 0
