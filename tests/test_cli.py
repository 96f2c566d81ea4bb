"""The command line as a user runs it: demo, serve without a config, bad config, --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "RAWGW_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "rawgw", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


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
