"""A mock GitHub (OAuth + REST) on loopback for the sign-in tests: asyncio + h11.

Endpoints: ``GET /login/oauth/authorize`` (302 back to redirect_uri with code and state,
for ``mock.login``), ``POST /login/oauth/access_token`` (authorization-code grant: each
code once; device grant: answers taken from ``device_script``, then a token),
``POST /login/device/code``, ``GET /user``, ``GET /user/orgs``. Every request is kept in
``requests`` as (method, target, headers dict, body).

    gh = await MockGithub.start(); gh.login = "octocat"; gh.orgs["octocat"] = ["acme"]
    gh.device_script = ["authorization_pending", "slow_down"]   # then success
    ...
    await gh.close()
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode

import h11
import orjson

CLIENT_ID = "mock-client-id"
CLIENT_SECRET = "mock-client-secret-5f4dcc3b5aa765d61d8327deb882cf99"


class MockGithub:
    def __init__(self) -> None:
        self.login = "octocat"
        self.orgs: dict[str, list[str]] = {}
        self.device_script: list[str] = []
        self.device_interval = 5  # what /login/device/code tells the client (0: poll at once)
        self.device_expires_in = 900
        self.codes: dict[str, str] = {}  # unused code -> login
        self.tokens: dict[str, str] = {}  # token -> login
        self.device_codes: dict[str, str] = {}  # device_code -> login
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls) -> MockGithub:
        self = cls()
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                status, headers, payload = self._answer(request, body)
                headers = [*headers, ("content-length", str(len(payload)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()

    def _answer(self, req: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        target = req.target.decode()
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        method = req.method.decode()
        self.requests.append((method, target, headers, body))
        path, _, query = target.partition("?")
        q = {k: v[0] for k, v in parse_qs(query).items()}
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}

        def js(doc: Any, status: int = 200) -> tuple[int, list[tuple[str, str]], bytes]:
            return status, [("content-type", "application/json")], orjson.dumps(doc)

        if method == "GET" and path == "/login/oauth/authorize":
            code = secrets.token_hex(10)
            self.codes[code] = self.login
            location = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
            return 302, [("location", location)], b""
        if method == "POST" and path == "/login/device/code":
            if form.get("client_id") != CLIENT_ID:
                return js({"error": "incorrect_client_credentials"}, 401)
            device_code = secrets.token_hex(20)
            self.device_codes[device_code] = self.login
            return js({"device_code": device_code, "user_code": "ABCD-1234", "verification_uri": f"{self.url}/login/device", "expires_in": self.device_expires_in, "interval": self.device_interval})
        if method == "POST" and path == "/login/oauth/access_token":
            if headers.get("accept") != "application/json":
                return 200, [("content-type", "application/x-www-form-urlencoded")], b"error=accept_json_please"
            if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
                login = self.device_codes.get(form.get("device_code", ""))
                if login is None:
                    return js({"error": "incorrect_device_code"})
                if self.device_script:
                    step = self.device_script.pop(0)
                    return js({"error": step, **({"interval": 10} if step == "slow_down" else {})})
                del self.device_codes[form["device_code"]]
                return js({"access_token": self._token(login), "token_type": "bearer"})
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return js({"error": "incorrect_client_credentials"})
            login = self.codes.pop(form.get("code", ""), None)  # GitHub codes are single-use
            if login is None:
                return js({"error": "bad_verification_code"})
            return js({"access_token": self._token(login), "token_type": "bearer", "scope": "read:org"})
        if method == "GET" and path in ("/user", "/user/orgs"):
            token = headers.get("authorization", "").removeprefix("Bearer ")
            login = self.tokens.get(token)
            if login is None:
                return js({"message": "Bad credentials"}, 401)
            if path == "/user":
                return js({"login": login, "id": 1})
            return js([{"login": org} for org in self.orgs.get(login, [])])
        return js({"message": "Not Found"}, 404)

    def _token(self, login: str) -> str:
        token = "gho_" + secrets.token_hex(18)
        self.tokens[token] = login
        return token
