"""Issue 13 point 5 through the CLI and the gateway: key prefixes checked at load by
`rawgw check` and `rawgw serve` (and a SIGHUP reload) on the vendor's official host, as
errors naming the provider and the key's index, never the key; ``key_format = "any"``
and local servers are not checked."""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import GW_KEY, StartGateway, to_toml
from mock_upstream import MockUpstream
from ops_helpers import wait_until
from providers_helpers import rawgw_cli
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    call,
    cfg,
    chat,
    prov,
    routed_by,
    ups_fixture,
)

OR_KEY = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef"
WRONG = "sk-ant-api03-pasted-into-the-wrong-provider-0123456789-wxyz"


def official(keys: list[str], **extra: object) -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "keys": [{"key": GW_KEY, "name": "t"}],
        "providers": {"openrouter": {"type": "openrouter", "keys": keys, **extra}},
    }


def test_check_and_serve_refuse_a_key_with_the_wrong_prefix(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(to_toml(official(["env:OR_1", "env:OR_2"])))
    env = {"OR_1": OR_KEY, "OR_2": WRONG}
    checked = rawgw_cli("check", "-c", "gateway.toml", cwd=tmp_path, env=env)
    assert checked.returncode == 1
    assert "providers.openrouter.keys[1]: does not look like an OpenRouter key (they start with sk-or-)" in checked.stdout
    assert "keys[0]" not in checked.stdout
    served = rawgw_cli("serve", "-c", "gateway.toml", cwd=tmp_path, env=env)
    assert served.returncode == 2
    assert "providers.openrouter.keys[1]: does not look like an OpenRouter key" in served.stderr
    for out in (checked.stdout + checked.stderr, served.stdout + served.stderr):
        assert WRONG not in out and WRONG[-4:] not in out and WRONG[:12] not in out


def test_key_format_any_and_local_servers_take_any_key(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(to_toml(official(["env:OR_2"], key_format="any")))
    assert rawgw_cli("check", "-c", "a.toml", cwd=tmp_path, env={"OR_2": WRONG}).returncode == 0
    local = official(["x"])
    local["providers"] = {"local": {"type": "openai", "base_url": "http://127.0.0.1:11434/v1", "keys": ["x"]}}
    (tmp_path / "b.toml").write_text(to_toml(local))
    assert rawgw_cli("check", "-c", "b.toml", cwd=tmp_path).returncode == 0


async def test_a_reload_with_a_wrong_key_is_refused_and_the_old_config_kept(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    gw = await start_gateway(cfg({"a": prov(ups[0])}))
    assert routed_by(await call(gw, chat("m"))) == ("a", "1")
    bad = cfg({"a": prov(ups[0]), "openrouter": {"type": "openrouter", "keys": [WRONG]}})
    gw.config_path.write_text(to_toml(bad))
    gw.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "providers.openrouter.keys[0]: does not look like an OpenRouter key" in gw.stderr_text(), what="reload refusal")
    assert WRONG not in gw.stderr_text()
    assert routed_by(await call(gw, chat("m"))) == ("a", "1")
