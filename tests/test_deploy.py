"""Deployment files (issue 13.7): what can be checked without a container daemon.

- deploy/rawgw.service is what `rawgw install-service` prints, apart from the paths, and
  `systemd-analyze verify` accepts the generated unit (skipped without systemd-analyze);
- the Dockerfile's ENTRYPOINT + CMD, run as written in a fresh venv made from the files
  its COPY lines name with its `pip install`, listens; its HEALTHCHECK exits 0 against it
  (and 1 once it is gone); SIGTERM (its STOPSIGNAL) ends it with exit 0;
- compose.yaml parses with PyYAML and every file it references exists;
- deploy/nginx.conf passes `nginx -t`, and a real nginx with it in front of two gateways
  relays a stream event by event and keeps its upstream connections alive.

Not checked here: `docker build` / `docker compose up` (no daemon on these machines).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GW_KEY, REPO_ROOT, StartGateway, base_config, chat_request, free_port, raw_connection, to_toml
from mock_upstream import Chunked, MockUpstream, Sse
from ops_helpers import LISTEN_RE, call, chat_body, scrape

SHIPPED_UNIT = REPO_ROOT / "deploy" / "rawgw.service"
SHIPPED_PYTHON = "/opt/rawgw/venv/bin/python"
SHIPPED_CONFIG = "/etc/rawgw/gateway.toml"


def rawgw_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.pop("RAWGW_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "rawgw", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=30)


def sd_verify(unit: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify; the lines it says about this unit (unknown keys and bad
    values are only warnings: exit 0 with a line naming the file)."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    p = subprocess.run([binary, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if unit.name in ln or str(unit) in ln]
    return p.returncode, lines


# --------------------------------------------------------------------------- systemd


def test_shipped_unit_is_the_generated_one(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(to_toml({"server": {"port": 8080}}))
    p = rawgw_cli("install-service", "-c", str(config))
    assert p.returncode == 0, p.stderr
    generated = p.stdout.replace(f"{sys.executable} -m rawgw", f"{SHIPPED_PYTHON} -m rawgw").replace(str(config), SHIPPED_CONFIG)
    assert generated == SHIPPED_UNIT.read_text()
    # The paths are this interpreter and the config made absolute.
    assert f"\nExecStart={sys.executable} -m rawgw serve -c {config}\n" in p.stdout


def test_shipped_unit_settings() -> None:
    unit = SHIPPED_UNIT.read_text()
    service = unit.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    settings = dict(ln.split("=", 1) for ln in service.splitlines() if ln and not ln.startswith("#"))
    expected = {
        "Type": "exec",
        "ExecStart": f"{SHIPPED_PYTHON} -m rawgw serve -c {SHIPPED_CONFIG}",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "LimitNOFILE": "65536",
        "Restart": "on-failure",
        "StateDirectory": "rawgw",
        "LogsDirectory": "rawgw",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
    }
    assert {k: settings.get(k) for k in expected} == expected
    # SPEC 7: the drain (shutdown_grace_s, default 30) ends before systemd's SIGKILL.
    assert int(settings["TimeoutStopSec"].rstrip("s")) > 30


def test_install_service_unit_verifies(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(to_toml({"server": {"port": 8080}}))
    out = tmp_path / "units"
    out.mkdir()
    p = rawgw_cli("install-service", "-c", str(config), "--user", "llmgw", "--write", str(out))
    assert p.returncode == 0, p.stderr
    unit = out / "rawgw.service"
    assert f"wrote {unit}" in p.stdout
    assert "\nUser=llmgw\n" in unit.read_text()
    assert sd_verify(unit) == (0, [])
    # The check can fail: a misspelt key is reported.
    broken = tmp_path / "broken" / "rawgw.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("DynamicUser=", "DynamicUzer="))
    assert sd_verify(broken)[1], "systemd-analyze said nothing about an unknown key"


def test_install_service_quotes_paths_and_follows_grace(tmp_path: Path) -> None:
    """A config path with a space and a % survives systemd's splitting and specifiers;
    TimeoutStopSec follows the config's shutdown_grace_s."""
    d = tmp_path / "my configs"
    d.mkdir()
    config = d / "100%.toml"
    config.write_text(to_toml({"server": {"shutdown_grace_s": 100}}))
    out = tmp_path / "rawgw.service"
    p = rawgw_cli("install-service", "-c", "100%.toml", "--write", str(out), cwd=d)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    quoted = '"' + str(config).replace("%", "%%") + '"'
    assert f"\nExecStart={sys.executable} -m rawgw serve -c {quoted}\n" in text
    assert "\nTimeoutStopSec=115s\n" in text
    assert sd_verify(out) == (0, [])


def test_install_service_write_error(tmp_path: Path) -> None:
    p = rawgw_cli("install-service", "-c", "x.toml", "--write", str(tmp_path / "no" / "such" / "rawgw.service"), cwd=tmp_path)
    assert p.returncode == 1
    assert "cannot write" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(value: str) -> list[str]:
    """A JSON array of strings: the exec form (no shell between docker and the process)."""
    doc = json.loads(value)
    assert isinstance(doc, list) and all(isinstance(x, str) for x in doc), value
    return doc


def test_dockerfile_shape() -> None:
    ins = dockerfile()
    kinds = [k for k, _ in ins]
    assert ins[0] == ("FROM", "python:3.12-slim")
    user = [v for k, v in ins if k == "USER"]
    assert user and user[-1] not in ("root", "0"), user
    assert kinds.count("ENTRYPOINT") == 1 and kinds.count("CMD") == 1 and kinds.count("HEALTHCHECK") == 1
    assert ("STOPSIGNAL", "SIGTERM") in ins
    assert any(k == "EXPOSE" and v == "8080" for k, v in ins)
    assert any(k == "RUN" and "pip install" in v for k, v in ins)
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # nothing (a local gateway.toml, .env) enters the context unless listed


async def test_dockerfile_command_runs_as_written(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    """The image's steps, minus the image: COPY into a build context, `pip install` it
    into a venv (offline: --system-site-packages, no index, no deps), then ENTRYPOINT +
    CMD with the ENV of the Dockerfile, cwd = its WORKDIR stand-in. Substituted: the
    mounted config path (a temp file) and port 8080 (a free one, other tests run too)."""
    ins = dockerfile()
    ctx = tmp_path / "context"
    ctx.mkdir()
    for kind, value in ins:
        if kind == "COPY":
            *sources, dest = shlex.split(value)
            assert dest.startswith("/tmp/src"), dest
            for src in sources:
                path = REPO_ROOT / src
                assert path.exists(), src
                target = ctx / dest.removeprefix("/tmp/src").strip("/") / (path.name if dest.endswith("/") else "")
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
    (pip_line,) = [v for k, v in ins if k == "RUN" and "pip install" in v]
    assert pip_line.startswith("pip install /tmp/src"), pip_line

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    p = subprocess.run([*pip, str(ctx)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr

    config = tmp_path / "gateway.toml"
    config.write_text(to_toml(base_config(mock_upstream)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAWGW_CONFIG", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for kind, value in ins:
        if kind == "ENV":
            for name, val in re.findall(r"(\w+)=(\S+)", value):
                env[name] = val.replace(SHIPPED_CONFIG, str(config))

    def substitute(argv: list[str]) -> list[str]:
        return [a.replace(SHIPPED_CONFIG, str(config)).replace("8080", str(port)) for a in argv]

    # The venv's own copy is the one imported, not this worktree or an editable install.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    where = subprocess.run(
        ["python", "-c", "import rawgw; print(rawgw.__file__)"], cwd=workdir, env=env, capture_output=True, text=True, timeout=30
    )
    assert where.stdout.startswith(str(venv)), where

    (entry,) = [exec_form(v) for k, v in ins if k == "ENTRYPOINT"]
    (cmd,) = [exec_form(v) for k, v in ins if k == "CMD"]
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    health_cmd = exec_form(health.split(" CMD ", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        *substitute(entry + cmd),
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        m = LISTEN_RE.match(line)
        assert m and int(m.group("port")) == port and m.group("host") == "0.0.0.0", line
        r = await call(port, chat_body())
        assert r.status == 200, r.body

        def run_health() -> subprocess.CompletedProcess[str]:
            return subprocess.run(substitute(health_cmd), cwd=workdir, env=env, capture_output=True, text=True, timeout=10)

        hc = await asyncio.to_thread(run_health)
        assert hc.returncode == 0, hc.stderr
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    assert b"Traceback" not in await proc.stderr.read()
    # The healthcheck can fail: nothing listens any more.
    assert (await asyncio.to_thread(run_health)).returncode != 0


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_references_exist() -> None:
    doc = compose()
    services = doc["services"]
    rawgws = [name for name, s in services.items() if "build" in s]
    assert len(rawgws) == 2, rawgws
    assert services["valkey"]["image"].startswith("valkey/valkey")
    balancers = [s for s in services.values() if str(s.get("image", "")).startswith("nginx")]
    assert len(balancers) == 1
    named_volumes = set(doc.get("volumes") or {})
    for name, s in services.items():
        build = s.get("build")
        if build:
            ctx = REPO_ROOT / build["context"]
            assert (ctx / build.get("dockerfile", "Dockerfile")).is_file(), name
        for v in s.get("volumes", []):
            source = v.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), (name, source)
            else:
                assert source in named_volumes, (name, source)
        for dep in s.get("depends_on", {}):
            assert dep in services, (name, dep)
    # Every env: secret of the config the instances mount is passed in by compose.
    config_text = (REPO_ROOT / "deploy" / "gateway.compose.toml").read_text()
    needed = set(re.findall(r'"env:(\w+)"', config_text))
    for name in rawgws:
        assert needed <= set(services[name]["environment"]), (name, needed)
        assert any(v.startswith("./deploy/gateway.compose.toml:/etc/rawgw/gateway.toml") for v in services[name]["volumes"])
        # stop_grace_period covers the drain.
        grace = tomllib.loads(config_text)["server"]["shutdown_grace_s"]
        assert int(services[name]["stop_grace_period"].rstrip("s")) > grace
    # The balancer's upstreams are the rawgw services.
    nginx_conf = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (\w+):8080;", nginx_conf)) == sorted(rawgws)


def test_compose_gateway_config_checks(tmp_path: Path) -> None:
    """`rawgw check` on the config the instances run. The [state] section (shared state in
    Valkey) is being built elsewhere: until `check` knows it, the rest is checked alone."""
    text = (REPO_ROOT / "deploy" / "gateway.compose.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["state"]["url"] == "redis://valkey:6379/0" and "valkey" in compose()["services"]
    env = {**os.environ, "GATEWAY_API_KEY": GW_KEY, "OPENROUTER_API_KEY": "sk-or-v1-compose-test-0000"}
    p = rawgw_cli("check", "-c", str(REPO_ROOT / "deploy" / "gateway.compose.toml"), env=env)
    if p.returncode != 0:
        errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ": " in ln and "invalid" not in ln]
        assert errors and all(ln.startswith("state") for ln in errors), p.stdout + p.stderr
        del doc["state"]
        alone = tmp_path / "gateway.toml"
        alone.write_text(to_toml(doc))
        p = rawgw_cli("check", "-c", str(alone), env=env)
    assert p.returncode == 0, p.stdout + p.stderr


# --------------------------------------------------------------------------- nginx


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.skip("nginx not installed (apt-get install nginx-light)")
    return binary


def local_nginx_conf(tmp_path: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with compose's names swapped for loopback ports, its pid file
    in tmp_path; everything else as shipped."""
    text = (REPO_ROOT / "deploy" / "nginx.conf").read_text()
    names = re.findall(r"server (\w+):8080;", text)
    assert len(names) == len(upstreams), names
    for name, port in zip(names, upstreams):
        text = text.replace(f"server {name}:8080;", f"server 127.0.0.1:{port};")
    text = text.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    assert re.search(r"listen 8080;", text)
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = text.replace("http {", f"http {{\n    {d}_temp_path {tmp_path / d};", 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_conf_valid(tmp_path: Path) -> None:
    binary = nginx_binary()
    conf = local_nginx_conf(tmp_path, free_port(), [free_port(), free_port()])
    p = subprocess.run([binary, "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";', "keepalive 64;"):
        assert directive in conf.read_text(), directive


async def test_nginx_in_front_of_two_gateways(tmp_path: Path, start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The shipped balancer config, for real: requests reach both instances, a stream
    arrives event by event, and nginx keeps idle keep-alive connections to rawgw."""
    binary = nginx_binary()
    gw1 = await start_gateway(base_config(mock_upstream))
    gw2 = await start_gateway(base_config(mock_upstream))
    port = free_port()
    conf = local_nginx_conf(tmp_path, port, [gw1.port, gw2.port])
    proc = await asyncio.create_subprocess_exec(
        binary, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # nginx prints nothing when it is up: its port accepting is the fact
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                assert proc.returncode is None and time.monotonic() < deadline, "nginx did not start"
                await asyncio.sleep(0.05)
        for _ in range(4):
            r = await call(port, chat_body())
            assert r.status == 200, r.body
        # SSE (rawgw adds X-Accel-Buffering: no) and a chunked non-SSE body (it does not).
        # nginx 1.22 forwarded both piece by piece even with buffering on, so this does not
        # prove `proxy_buffering off` matters; it proves the shipped config streams.
        first, last = b"data: first\n\n", b"data: last\n\ndata: [DONE]\n\n"
        a, b = b'{"part":"one"}\n', b'{"rest":"two"}\n'
        mock_upstream.enqueue(Sse(pieces=[first, last], delay=1.0), Chunked(pieces=[a, b], delay=1.0, content_type="application/x-ndjson"))
        for head, whole in ((first, first + last), (a, a + b)):
            async with await raw_connection(port) as c:
                await c.send(chat_request(chat_body(stream=True)))
                await c.read_until(head, timeout=5)
                t_first = time.monotonic()
                resp = await c.read_response(timeout=5)
            assert resp.body == whole
            sent_last = mock_upstream.requests[-1].pieces_sent_at[1]
            assert t_first < sent_last - 0.5, f"{head!r} only arrived with the rest: nginx buffered it"

        # Round robin: both instances answered; their idle connections from nginx stay
        # open (each scrape is one connection of its own).
        scrapes = [(await scrape(gw.port))[1] for gw in (gw1, gw2)]
        assert all((m.total("rawgw_requests_total", route="chat") or m.total("rawgw_requests_total")) > 0 for m in scrapes)
        idle = sum((m.get("rawgw_open_connections") or 0) - 1 for m in scrapes)
        assert idle >= 1, "nginx closed its upstream connections: no keep-alive"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
