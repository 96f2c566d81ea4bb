"""/dashboard in a real headless browser (SPEC 4).

The gateway serves one self-contained HTML page that polls /metrics.json. These tests send
known traffic through the gateway, then run Debian's chromium (``--headless --no-sandbox``,
a throw-away profile, every host but 127.0.0.1 unresolvable) with a virtual-time budget so
the page's 2 s poll runs a few times without the test waiting for it, and read the numbers
out of the DOM chromium prints. Skipped only when no chromium binary exists
(``apt-get install -y chromium``; .ci/run installs it).

``RAWGW_UPDATE_SCREENSHOT=1`` writes the screenshot to docs/dashboard.png (the README shows
it); otherwise it goes to tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    GW_KEY,
    REPO_ROOT,
    UPSTREAM_KEY,
    Gateway,
    StartGateway,
    base_config,
    chat_request,
    raw_connection,
)
from mock_upstream import Json, MockUpstream

SECOND_KEY = "sk-upstream-key-bbbb2222"
BACKUP_KEY = "sk-or-v1-backup-key-cccc3333"
USAGE = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
HOSTILE_MODEL = '<img src=x onerror="document.title=1">&amp;'
OK_REQUESTS = 5  # plain successes, plus one that succeeds after a 429 on the other key
CHROMIUM_TIMEOUT_S = 25  # conftest's hard limit is 30 s per test
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary: apt-get install -y chromium")


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-dash",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }


def dashboard_config(mock: MockUpstream, public_paths: list[str]) -> dict[str, Any]:
    """Two providers: ``mock`` (two keys, priority 1) and ``backup`` (one key, priority 2),
    both answered by the same mock upstream."""
    return base_config(
        mock,
        server={"public_paths": public_paths},
        provider={"keys": [UPSTREAM_KEY, SECOND_KEY], "priority": 1},
        extra={
            "providers": {
                "backup": {"type": "openrouter", "base_url": mock.url("/v1"), "keys": [BACKUP_KEY], "priority": 2}
            }
        },
    )


async def send_traffic(gw: Gateway, mock: MockUpstream) -> None:
    """1 request failing everywhere (500 from all three provider keys: the client gets the
    last 500), 1 request whose first key gets 429 (that key cools down 120 s) and whose
    second key answers, then OK_REQUESTS plain successes. Every success carries USAGE."""
    mock.default = Json(body=completion("gpt-dash"))
    body = json.dumps({"model": "gpt-dash", "messages": [{"role": "user", "content": "hi"}]}).encode()
    err = {"error": {"message": "upstream exploded", "type": "server_error"}}
    async with await raw_connection(gw.port, timeout=10) as c:
        mock.enqueue(Json(status=500, body=err), Json(status=500, body=err), Json(status=500, body=err))
        r = await c.request(chat_request(body))
        assert r.status == 500, r.body
        mock.enqueue(Json(status=429, body={"error": {"message": "slow down"}}, headers=[("Retry-After", "120")]))
        r = await c.request(chat_request(body))
        assert r.status == 200, r.body
        for _ in range(OK_REQUESTS):
            r = await c.request(chat_request(body))
            assert r.status == 200, r.body


async def run_chromium(binary: str, tmp_path: Path, url: str, *extra: str) -> str:
    """Run chromium headless against ``url``; return its stdout. No network but loopback."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--force-prefers-reduced-motion",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # three polls (0, 2, 4 s of page time), seconds of real time
        *extra,
        url,
    ]
    env = dict(os.environ, HOME=str(profile))
    proc = await asyncio.create_subprocess_exec(
        binary,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}"
    return out.decode("utf-8", errors="replace")


class Dom(HTMLParser):
    """Text of every element with an id, class of every element with an id, and the cells
    of the recent-errors rows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self.error_rows: list[list[str]] = []
        self._stack: list[str | None] = []  # id (or None) of each open element
        self._in_error_row = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "error-row" in (a.get("class") or "").split():
            self._in_error_row = True
            self.error_rows.append([])
        if tag == "td" and self._in_error_row:
            self._cell = []
        if tag in VOID:
            return
        ident = a.get("id")
        if ident is not None:
            self.text[ident] = ""
            self.classes[ident] = a.get("class") or ""
        self._stack.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if tag == "td" and self._cell is not None:
            self.error_rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._in_error_row = False
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._stack:
            if ident is not None:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)

    def __getitem__(self, ident: str) -> str:
        assert ident in self.text, f"no element id={ident!r} in the rendered page"
        return self.text[ident].strip()

    def int(self, ident: str) -> int:
        return int(self[ident].replace(",", ""))

    def num(self, ident: str) -> float:
        return float(self[ident].replace(",", ""))


def parse_dom(html: str) -> Dom:
    d = Dom()
    d.feed(html)
    d.close()
    return d


async def metrics_json(gw: Gateway) -> dict[str, Any]:
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(path="/metrics.json", method="GET"))
        assert r.status == 200, r.body
        return r.json()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- tests


async def test_dashboard_renders_live_numbers(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """The page, given the gateway key in its URL fragment, shows what the traffic did."""
    binary = find_chromium()
    gw = await start_gateway(dashboard_config(mock_upstream, ["/health", "/dashboard"]))
    await send_traffic(gw, mock_upstream)
    # A client chooses the model name, and the page shows it: it must stay text.
    hostile = json.dumps({"model": HOSTILE_MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(hostile))
        assert r.status == 200, r.body
    before = await metrics_json(gw)

    html = await run_chromium(binary, tmp_path, f"{gw.url}/dashboard#key={GW_KEY}", "--dump-dom")
    dom = parse_dom(html)

    assert dom["conn-status"] == "live", html[:3000]
    assert GW_KEY not in html  # the key is used, never shown
    ok = OK_REQUESTS + 2  # send_traffic's successes and the hostile one
    proxied = ok + 1

    # Requests: the proxied ones by status and provider; the total also counts the
    # gateway's own answers (the /metrics.json polls, /dashboard itself).
    assert sum(before["by_provider"].values()) == proxied, before
    assert dom.int("requests-total") >= proxied
    assert dom.int("status-500") == 1
    assert dom.int("status-200") >= ok
    assert dom.int("status-class-5xx") == 1
    assert dom.int("status-class-4xx") == 0
    assert sum(dom.int(f"provider-requests-{p}") for p in before["by_provider"]) == proxied
    rate = dom.num("req-rate")  # computed from successive snapshots
    assert math.isfinite(rate) and 0 <= rate < 100, rate
    assert dom.num("req-rate-avg") > 0

    # Tokens: every success reported 7 prompt + 11 completion tokens.
    assert dom.int("tokens-prompt") == USAGE["prompt_tokens"] * ok
    assert dom.int("tokens-completion") == USAGE["completion_tokens"] * ok
    assert dom.int("tokens-total") == USAGE["total_tokens"] * ok
    per_model = [k for k in dom.text if k.startswith("tokens-") and k.endswith("-prompt") and k != "tokens-prompt"]
    assert per_model, "no per provider/model token rows"
    assert sum(dom.int(k) for k in per_model) == USAGE["prompt_tokens"] * ok
    assert HOSTILE_MODEL in dom["tokens-table"], dom["tokens-table"]  # shown as text
    assert "<img" not in html, "a model name was parsed as HTML"
    assert "<title>rawgw dashboard</title>" in html

    # Latency and overhead: numbers in milliseconds, p50 <= p99.
    for name in ("latency-p50", "latency-p99", "latency-mean", "overhead-p50", "overhead-p99"):
        assert dom.num(name) >= 0, name
    assert dom.num("latency-p50") <= dom.num("latency-p99")
    assert dom.num("overhead-p50") <= dom.num("overhead-p99")

    # Keys: `mock` has one key cooling down after the 429 (Retry-After: 120), one active;
    # `backup` is active. Keys appear masked.
    states = sorted([dom["key-state-mock-0"], dom["key-state-mock-1"]])
    assert states == ["active", "cooling"], states
    cooling = 0 if dom["key-state-mock-0"] == "cooling" else 1
    cooldown = dom[f"key-cooldown-mock-{cooling}"]
    assert cooldown.endswith("s") and cooldown != "", cooldown  # e.g. "1m 59s"
    assert dom[f"key-cooldown-mock-{1 - cooling}"] == ""
    assert dom["key-state-backup-0"] == "active"
    assert "cooling" in dom.classes[f"key-state-mock-{cooling}"]
    for ident in ("key-mock-0", "key-mock-1", "key-backup-0"):
        shown = dom[ident]
        assert shown and shown not in (UPSTREAM_KEY, SECOND_KEY, BACKUP_KEY), shown
    for secret in (UPSTREAM_KEY, SECOND_KEY, BACKUP_KEY):
        assert secret not in html
    assert dom["breaker-mock"] == "closed"
    assert dom.int("failovers") >= 3  # two 500s and one 429 moved on

    # Recent errors: the failed attempts that moved on (two 500s, one 429), newest first,
    # one row each: time, status ("attempt" for a failed attempt), provider, request id,
    # message.
    expected = before["recent_errors"]
    assert len(expected) >= 3, expected
    assert len(dom.error_rows) == len(expected), dom.error_rows
    newest = expected[-1]
    assert dom.error_rows[0][2] == newest["provider"], dom.error_rows
    assert dom.error_rows[0][3] == newest["request_id"], dom.error_rows
    assert dom.error_rows[0][4] == newest["message"], dom.error_rows
    assert "429" in dom.error_rows[0][4], dom.error_rows
    assert sum("500" in row[4] for row in dom.error_rows) == 2, dom.error_rows
    assert {row[3] for row in dom.error_rows} == {e["request_id"] for e in expected}

    assert dom.int("open-connections") >= 1
    assert dom.int("active-streams") >= 0

    # Process panel (issue 13.6): CPU from successive snapshots, memory and fds as served.
    proc = before["process"]
    cpu = dom.num("process-cpu")
    assert math.isfinite(cpu) and 0 <= cpu <= 100 * (os.cpu_count() or 1), cpu
    rss_mib = dom.num("process-rss")
    assert 0.5 * proc["resident_memory_bytes"] < rss_mib * 2**20 < 2 * proc["resident_memory_bytes"], (rss_mib, proc)
    assert dom.num("process-vms") * 2**20 >= rss_mib * 2**20
    assert dom.int("process-fds") >= 1
    assert dom.int("process-max-fds") == proc["max_fds"]


async def test_dashboard_asks_for_a_key(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """/dashboard is public but /metrics.json is not: without a key the page says so and
    offers the key field, and shows no numbers."""
    binary = find_chromium()
    gw = await start_gateway(dashboard_config(mock_upstream, ["/health", "/dashboard"]))
    html = await run_chromium(binary, tmp_path, f"{gw.url}/dashboard", "--dump-dom")
    dom = parse_dom(html)
    assert dom["conn-status"] == "needs key", html[:3000]
    assert dom.classes["keybox"] == "show"
    assert dom["requests-total"] == "\u2014"


async def test_dashboard_screenshot(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """A screenshot of the page after traffic (docs/dashboard.png when
    RAWGW_UPDATE_SCREENSHOT=1): a real PNG of the requested size, not a blank page."""
    binary = find_chromium()
    gw = await start_gateway(dashboard_config(mock_upstream, ["/health", "/dashboard", "/metrics.json"]))
    await send_traffic(gw, mock_upstream)
    if os.environ.get("RAWGW_UPDATE_SCREENSHOT") == "1":
        target = REPO_ROOT / "docs" / "dashboard.png"
        target.parent.mkdir(exist_ok=True)
    else:
        target = tmp_path / "dashboard.png"
    target.unlink(missing_ok=True)
    await run_chromium(
        binary,
        tmp_path,
        f"{gw.url}/dashboard",
        f"--screenshot={target}",
        "--window-size=1280,900",
        "--hide-scrollbars",
    )
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1280, 900), (width, height)
    assert len(data) > 20_000, f"suspiciously small screenshot ({len(data)} bytes): blank page?"


def test_page_is_self_contained() -> None:
    """No external asset of any kind (runs without chromium): no URL to fetch but the
    relative metrics.json, no @import/url(), no HTML parsing of data."""
    from rawgw.observe.dashboard import PAGE

    page = PAGE.decode("ascii")  # ASCII only: non-ASCII text is written as entities/escapes
    assert page.startswith("<!doctype html>")
    external = re.search(r"https?:|//[a-z]", page, re.IGNORECASE)
    assert external is None, external
    for attr in re.findall(r"""\b(?:src|href|action)\s*=\s*["']([^"']*)""", page):
        assert attr.startswith("data:"), attr
    assert "@import" not in page and "url(" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    # metrics.json, and auth/me to learn whether sign-in with GitHub is offered
    assert re.findall(r"fetch\(\"([^\"]+)\"", page) == ["auth/me", "metrics.json"]
