"""The command line as a user runs it: demo, serve without a config, bad config, --help."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import StartGateway, base_config
from mock_upstream import MockUpstream
from ops_helpers import call, chat_body

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rawgw", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(**(env or {})))


def test_demo_once_shows_a_completion_and_a_stream(tmp_path: Path) -> None:
    r = run(["demo", "--once"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("rawgw listening on http://127.0.0.1:")
    assert '"object":"chat.completion"' in out
    assert "HTTP/1.1 200 OK" in out and "x-rawgw-provider: mock" in out
    assert "text/event-stream" in out and out.count("data: {") >= 10
    assert "data: [DONE]" in out
    assert "assembled: Hello! I am the rawgw demo model." in out
    assert "Traceback" not in r.stderr


def test_serve_without_config_names_init_and_demo(tmp_path: Path) -> None:
    r = run(["serve"], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "rawgw init" in lines[0] and "rawgw demo" in lines[0]
    assert r.stdout == ""


def test_serve_with_bad_config_prints_path_message_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[server]\nport = "x"\nmax_body_byte = 5\n[providers.p]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nkeys = ["env:NOPE_NOT_SET"]\n')
    r = run(["serve", "-c", str(cfg)], tmp_path)
    assert r.returncode == 2
    err = r.stderr
    assert "server.port:" in err
    assert "server.max_body_byte: unknown setting (did you mean max_body_bytes?)" in err
    assert "providers.p.keys[0]:" in err and "NOPE_NOT_SET" in err
    assert "rawgw listening" not in r.stdout


def test_rawgw_config_env_var_is_used(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text("[server]\nport = -1\n")
    r = run(["serve"], tmp_path, env={"RAWGW_CONFIG": str(cfg)})
    assert r.returncode == 2 and "server.port:" in r.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    r = run(["--help"], tmp_path)
    assert r.returncode == 0
    for command in ("serve", "demo", "init", "check", "import"):
        assert command in r.stdout


# --------------------------------------------------------------------------- issue 10.2 and 10.5

LISTENING = re.compile(r"rawgw listening on http://127\.0\.0\.1:(\d+)\n")


def _serve_config(tmp_path: Path, name: str = "gateway.toml") -> Path:
    # no [[keys]] and a literal provider key: two warnings logged at start
    cfg = tmp_path / name
    cfg.write_text('[server]\nshutdown_grace_s = 1\n[providers.p]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nkeys = ["literal-key-0123456789"]\n')
    cfg.chmod(0o600)
    return cfg


def _first_line(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[bytes, bytes]:
    """The first line of the process's stdout, and what was read after it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0, data
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"exited before a line: {data!r}"
            data += chunk
    first, _, more = data.partition(b"\n")
    return first + b"\n", more


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAWGW_CONFIG"}
    src = os.environ.get("RAWGW_TEST_SRC") or str(REPO)  # as conftest: another tree for mutation checks
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


@pytest.mark.parametrize("workers", ["1", "2"])
def test_listening_line_stands_alone_first_in_a_shared_pipe(tmp_path: Path, workers: str) -> None:
    """Issue 10.2: `PYTHONUNBUFFERED=1 rawgw serve … 2>&1 | head -1` is the whole
    listening line, never glued to a log line, whatever logs at start (the warnings)."""
    cfg = _serve_config(tmp_path)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--port", "0", "--workers", workers],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_env(PYTHONUNBUFFERED="1"), start_new_session=True,
        )  # fmt: skip
        try:
            first, more = _first_line(proc)
            line = first.decode()
            assert LISTENING.fullmatch(line), line
        finally:
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, rest
        out = line + (more + rest).decode()
        assert "no gateway keys configured" in out  # the warnings came, after the line
        assert out.count("rawgw listening on") == 1, out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_one_line_naming_the_address_exit_2(tmp_path: Path, workers: str) -> None:
    cfg = _serve_config(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = run(["serve", "-c", str(cfg), "--port", str(port), "--workers", workers], tmp_path)
    finally:
        taken.close()
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines == [f"rawgw: cannot listen on 127.0.0.1:{port}: Address already in use"], r.stderr
    assert r.stdout == ""


def test_bad_listen_host_is_one_line_exit_2(tmp_path: Path) -> None:
    r = run(["serve", "-c", str(_serve_config(tmp_path)), "--host", "no-such-host.invalid", "--port", "0"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rawgw: cannot listen on no-such-host.invalid:0: "), r.stderr


def _into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader has already gone: the first write fails,
    exactly what `| head -1` does to the rest of a report."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "rawgw", *args], cwd=cwd, stdout=w, stderr=subprocess.PIPE, text=True, timeout=30, env=_env())
    finally:
        os.close(w)


def test_check_and_import_into_a_closed_pipe_end_quietly(tmp_path: Path) -> None:
    """Issue 10.5: `rawgw check | head -1`, `rawgw import … | head -1`: no BrokenPipeError
    traceback, no "Exception ignored"; the exit status a shell shows for SIGPIPE."""
    cfg = _serve_config(tmp_path)
    env_file = tmp_path / "proxy.env"
    env_file.write_text("OPENROUTER_KEYS=sk-or-v1-abcdefabcdef1234,sk-or-v1-abcdefabcdef9999\nGATEWAY_API_KEY=gw-abcdefghijkl\n")
    for args in (["check", "-c", str(cfg)], ["import", str(env_file), "-o", str(tmp_path / "out.toml")], ["--help"]):
        r = _into_closed_pipe(args, tmp_path)
        # argparse swallows a failed write of --help itself: 0 there
        assert r.returncode in ((0, 141) if args == ["--help"] else (141,)), (args, r.returncode, r.stderr)
        assert r.stderr == "", (args, r.stderr)


def test_check_piped_into_head(tmp_path: Path) -> None:
    # a report larger than a pipe's buffer: check is still writing when head exits
    cfg = tmp_path / "big.toml"
    cfg.write_text(
        "".join(f'[providers.p{i}]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nkeys = ["env:K"]\nmodels = ["model-{i}-*"]\n' for i in range(800))
    )
    r = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m rawgw check -c "{cfg}" | head -1; echo "status ${{PIPESTATUS[0]}}"'],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=_env(PYTHONUNBUFFERED="1", K="key-0123456789abcdef"),
    )  # fmt: skip
    assert r.stdout.splitlines()[0] == f"{cfg}: valid", r.stdout
    assert r.stdout.splitlines()[-1] in ("status 0", "status 141"), r.stdout
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- issue 10.6


async def test_serve_splits_an_env_list_into_a_key_pool(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """keys = ["env:OPENROUTER_KEYS"] with OPENROUTER_KEYS="k1,k2 k3": three keys rotated."""
    pool = ["sk-pool-split-aaaa0001", "sk-pool-split-bbbb0002", "sk-pool-split-cccc0003"]
    cfg = base_config(mock_upstream, provider={"keys": ["env:OPENROUTER_KEYS"], "key_strategy": "round-robin"})
    gw = await start_gateway(cfg, env={"OPENROUTER_KEYS": f"{pool[0]},{pool[1]} {pool[2]}"})
    for _ in range(3):
        assert (await call(gw.port, chat_body())).status == 200
    sent = [(q.header("authorization") or b"").decode().removeprefix("Bearer ") for q in mock_upstream.requests]
    assert sorted(sent) == sorted(pool), sent


# --------------------------------------------------------------------------- issue 10.8


def test_check_of_a_json_file_points_at_import(tmp_path: Path) -> None:
    path = tmp_path / "llm_router_config.json"
    path.write_text('{"providers": [{"name": "openrouter", "priority": 1}]}')
    r = run(["check", "-c", str(path)], tmp_path)
    assert r.returncode == 1
    assert f"convert it with `rawgw import {path}`" in r.stdout and "TOML syntax error" not in r.stdout, r.stdout


SAME_END = ["sk-or-v1-first-one-key", "sk-or-v1-second-two-key"]


def test_check_tells_same_looking_keys_apart(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[providers.openrouter]\nkeys = ["env:OPENROUTER_KEYS"]\n')
    r = run(["check", "-c", str(cfg)], tmp_path, env={"OPENROUTER_KEYS": ",".join(SAME_END)})
    assert r.returncode == 0, r.stdout
    assert "keys (2): keys[0] sk-or-…-key, keys[1] sk-or-…-key" in r.stdout, r.stdout
    assert not any(k in r.stdout for k in SAME_END)


async def test_health_providers_tells_same_looking_keys_apart(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"keys": ["env:OPENROUTER_KEYS"]}), env={"OPENROUTER_KEYS": ",".join(SAME_END)})
    r = await call(gw.port, b"", path="/health/providers", method="GET")
    assert r.status == 200
    keys = r.json()["providers"]["mock"]["keys"]
    assert [(k["index"], k["key"]) for k in keys] == [(0, "keys[0] sk-or-…-key"), (1, "keys[1] sk-or-…-key")], keys
    assert not any(k in r.body.decode() for k in SAME_END)


def test_check_shows_log_rotation(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[providers.openrouter]\nkeys = ["env:K"]\n[logging]\nmax_bytes = 5000\nbackups = 3\n')
    r = run(["check", "-c", str(cfg)], tmp_path, env={"K": "sk-or-v1-0123456789abcdef"})
    assert r.returncode == 0, r.stdout
    assert "rotated at 5000 bytes (keep 3)" in r.stdout, r.stdout
    cfg.write_text('[providers.openrouter]\nkeys = ["env:K"]\n[logging]\nmax_bytes = 0\n')
    assert "never rotated (max_bytes 0)" in run(["check", "-c", str(cfg)], tmp_path, env={"K": "sk-or-v1-0123456789abcdef"}).stdout
