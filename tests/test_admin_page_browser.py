"""/admin and the dashboard's sign-in in a real headless Chromium (issue 14, point 4).

tests/test_dashboard.py reads a DOM dump; the admin page needs clicks and typing, so here
Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (fds 3 and 4,
NUL-separated JSON; no extra package). Every host but 127.0.0.1 is unresolvable. The
scenario: sign in with (mock) GitHub through the real redirects, add a route with the
page's form, send a request through that route, see it in the page's usage, and take a
screenshot (``RAWGW_UPDATE_SCREENSHOT=1`` writes docs/admin.png for the README).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import GW_KEY, REPO_ROOT, StartGateway
from mock_github import MockGithub
from mock_upstream import Json, MockUpstream
from ops_helpers import call, completion
from test_control_gateway import ADMIN_KEY, GH_ENV, admin_config, github_extra

STEP_TIMEOUT_S = 8.0


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary: apt-get install -y chromium")


class Browser:
    """One headless Chromium and one page, driven synchronously over the pipe (run it in a
    thread: the mock upstream and mock GitHub live on the test's event loop)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes answers
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        profile.mkdir(parents=True, exist_ok=True)
        self.stderr = open(profile / "stderr.txt", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-proxy-server",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=fds,
            # Python's own fds are close-on-exec; dup2 made 3 and 4 inheritable (pass_fds
            # would close them again after preexec_fn)
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=dict(os.environ, HOME=str(profile)),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.session = ""
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True, session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = True, **params: Any) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, orjson.dumps(msg) + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium closed the pipe during {method}")
                self._buf += chunk
            raw, _, self._buf = self._buf.partition(b"\0")
            doc = orjson.loads(raw)
            if doc.get("id") == self._id:
                if "error" in doc:
                    raise AssertionError(f"{method}: {doc['error']}")
                return doc.get("result", {})

    def js(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = STEP_TIMEOUT_S) -> Any:
        """Poll a JS expression until truthy (a fact in the DOM, not a sleep)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except AssertionError:
                last = None  # mid-navigation: the context is being replaced
            if last:
                return last
            time.sleep(0.05)  # test-side polling between DOM checks
        raise AssertionError(f"timed out waiting for {what}: last {last!r}; url {self.js('location.href')}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)
        self.stderr.close()


def text_of(ident: str) -> str:
    return f"(document.getElementById({json.dumps(ident)}) || {{}}).textContent"


async def test_admin_page_sign_in_add_route_and_see_usage(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    binary = find_chromium()
    gh = await MockGithub.start()
    try:
        mock_upstream.default = Json(body=completion(model="real-model", prompt=5, completion_tokens=7))
        gw = await start_gateway(admin_config(mock_upstream, github_extra(gh)), env=GH_ENV)
        b = await asyncio.to_thread(Browser, binary, tmp_path / "profile")

        def sign_in_and_add_route() -> None:
            b.navigate(f"{gw.url}/admin")
            # [auth.github] is set: the sign-in screen offers GitHub
            b.wait("!document.getElementById('signin-github').hidden", "the GitHub sign-in button")
            shown = "(id) => getComputedStyle(document.getElementById(id)).display !== 'none'"
            assert b.js(f"({shown})('signin') && !({shown})('main')") is True
            b.js("document.getElementById('signin-github').click()")
            # gateway -> mock GitHub -> callback -> back on /admin, signed in (cookie)
            b.wait(f"{text_of('who')} === 'GitHub: octocat'", "signed in as octocat")
            b.wait("document.querySelectorAll('#keys tr').length === 2", "the keys table")
            assert b.js(f"!({shown})('signin') && ({shown})('main')") is True
            assert b.js("document.cookie") == ""  # HttpOnly: the page cannot read it
            # add a route with the form (a cookie write: the page sends X-CSRF-Token)
            b.js(
                "document.getElementById('route-match').value = 'browser-fast';"
                "document.getElementById('route-model').value = 'real-model';"
                "document.getElementById('route-providers').value = 'mock';"
                "document.getElementById('route-form').requestSubmit()"
            )
            b.wait(f"{text_of('message')} === 'route added'", "route added")
            b.wait(f"{text_of('routes')}.includes('browser-fast')", "the new route in the table")

        try:
            await asyncio.to_thread(sign_in_and_add_route)
            # a request through the new route, with the (non-admin) gateway key
            body = orjson.dumps({"model": "browser-fast", "messages": [{"role": "user", "content": "hi"}]})
            r = await call(gw.port, body, key=GW_KEY)
            assert r.status == 200, r.body
            assert mock_upstream.requests[-1].json()["model"] == "real-model"

            def usage() -> bytes:
                b.js("refresh()")
                # keys table: name, key, admin, providers, models, rpm, requests, tokens
                row = "[...document.querySelectorAll('#keys tr')].find(tr => tr.cells[0].textContent === 'tester')"
                b.wait(f"{row}.cells[6].textContent === '1' && {row}.cells[7].textContent === '12'", "tester's usage row")
                # usage table: by, name, requests, prompt, completion, tokens
                model_row = "[...document.querySelectorAll('#usage tr')].find(tr => tr.cells[0].textContent === 'model' && tr.cells[1].textContent === 'real-model')"
                b.wait(f"{model_row} && {model_row}.cells[2].textContent === '1' && {model_row}.cells[5].textContent === '12'", "real-model's usage row")
                html = b.js("document.documentElement.outerHTML")
                for secret in (GW_KEY, ADMIN_KEY):
                    assert secret not in html
                return b.screenshot()

            png = await asyncio.to_thread(usage)
        finally:
            await asyncio.to_thread(b.close)
    finally:
        await gh.close()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 900)
    assert len(png) > 20_000, "suspiciously small screenshot: blank page?"
    target = REPO_ROOT / "docs" / "admin.png" if os.environ.get("RAWGW_UPDATE_SCREENSHOT") == "1" else tmp_path / "admin.png"
    target.write_bytes(png)
    log = (gw.logs_dir / "admin.jsonl").read_text()
    assert '"route.create"' in log.replace(" ", "") and "github:octocat" in log


async def test_dashboard_offers_github_sign_in(start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """With [auth.github] the dashboard (not public) still serves its page, shows "Sign in
    with GitHub" instead of only the key field, and after the sign-in reads metrics.json
    with the session cookie."""
    binary = find_chromium()
    gh = await MockGithub.start()
    try:
        gh.login = "alice"  # allowed to sign in; not an admin: the dashboard is enough
        gw = await start_gateway(admin_config(mock_upstream, github_extra(gh)), env=GH_ENV)
        r = await call(gw.port, path="/metrics.json", method="GET", key=None)
        assert r.status == 401  # still closed without a key or a sign-in
        b = await asyncio.to_thread(Browser, binary, tmp_path / "profile")

        def scenario() -> None:
            b.navigate(f"{gw.url}/dashboard")
            b.wait("document.getElementById('signin-github').className.includes('show')", "the GitHub sign-in link")
            assert b.js(text_of("conn-status")) == "needs key"
            b.js("document.getElementById('signin-github').click()")
            b.wait(f"location.pathname === '/dashboard' && {text_of('conn-status')} === 'live'", "live numbers after sign-in")

        try:
            await asyncio.to_thread(scenario)
        finally:
            await asyncio.to_thread(b.close)
    finally:
        await gh.close()
