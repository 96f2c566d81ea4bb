"""Helpers for the operations tests (issue 4): logs, metrics, rate limits, cache,
validation, CORS, signals, workers, secrets.

Everything here talks to a real gateway subprocess over TCP; nothing imports rawgw.

functions
    chat_body(model="m", **fields) -> bytes            compact chat completion body
    sse_chat(texts, usage=None, model="m") -> list[bytes]  one OpenAI SSE event per piece,
                                                        then the usage event, then [DONE]
    await call(port, body=None, *, path, method, headers, key, auth, timeout) -> Response
    await wait_until(fn, timeout=5.0, what="")          poll fn() (sync or async) until truthy
    await jsonl_records(path, pred, timeout=5.0)        poll a JSON-lines file until pred(records)
    await scrape(port, key=GW_KEY) -> (Response, Samples)
    parse_metrics(text) -> Samples                      prometheus_client's own parser
    child_pids(pid) -> list[int]                        direct children of a process (/proc)
    listening_sockets(port) -> int                      sockets in LISTEN on a port (/proc/net/tcp)
    ProcGateway                                         a gateway started by hand (extra CLI args,
                                                        e.g. --workers), stopped in ``finally``
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import GW_KEY, Gateway, Response, chat_request, launch_gateway, raw_connection, to_toml
from conftest import chat_body as chat_body  # re-exported: the one body builder
from conftest import wait_until as wait_until  # re-exported: the one poller

# --------------------------------------------------------------------------- bodies


def completion(content: str = "hi", *, prompt: int = 1, completion_tokens: int = 1, model: str = "m") -> dict[str, Any]:
    """A non-streaming OpenAI chat completion with ``usage``."""
    return {
        "id": "chatcmpl-ops",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens},
    }


def sse_event(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def sse_chat(texts: Iterable[str], usage: tuple[int, int] | None = None, model: str = "m") -> list[bytes]:
    """An OpenAI chat stream as pieces: one delta event per text, then (``usage``) the
    ``include_usage`` event with empty choices, then ``data: [DONE]``."""
    pieces = []
    for t in texts:
        pieces.append(
            sse_event(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}],
                }
            )
        )
    if usage is not None:
        pieces.append(
            sse_event(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
                }
            )
        )
    pieces.append(b"data: [DONE]\n\n")
    return pieces


# --------------------------------------------------------------------------- requests


async def call(
    port: int,
    body: bytes | None = None,
    *,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: Iterable[tuple[str, str]] = (),
    key: str | None = GW_KEY,
    auth: str = "bearer",
    timeout: float = 5.0,
) -> Response:
    """One request on a fresh connection; the complete response."""
    data = chat_request(body, path=path, method=method, headers=headers, key=key, auth=auth)
    async with await raw_connection(port, timeout) as c:
        await c.send(data)
        return await c.read_response(timeout, request_method=method)


async def raw_call(port: int, data: bytes, *, method: str = "POST", timeout: float = 5.0) -> Response:
    async with await raw_connection(port, timeout) as c:
        await c.send(data)
        return await c.read_response(timeout, request_method=method)


# --------------------------------------------------------------------------- polling


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (a line being written may be partial)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:
        if line.strip():
            out.append(json.loads(line))
    return out


async def jsonl_records(path: Path, pred: Callable[[list[dict[str, Any]]], Any], timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll the JSON-lines file until ``pred(records)`` is truthy (logs come from a thread)."""

    def ready() -> list[dict[str, Any]] | None:
        records = read_jsonl(path)
        return records if pred(records) else None

    return await wait_until(ready, timeout, f"{path.name}: condition {pred}")  # type: ignore[no-any-return]


async def access_record(logs_dir: Path, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The single access.jsonl object of ``request_id``."""
    recs = await jsonl_records(logs_dir / "access.jsonl", lambda rs: any(r.get("request_id") == request_id for r in rs), timeout)
    mine = [r for r in recs if r.get("request_id") == request_id]
    assert len(mine) == 1, mine
    return mine[0]


async def recorded(gw: Gateway, r: Response, timeout: float = 5.0) -> dict[str, Any]:
    """Barrier on a fact: the access-log record of response ``r`` (by X-Request-Id).

    The gateway writes it when the exchange ends, after its last upstream attempt, so
    once it is there "the upstream was not contacted (again)" can be asserted; its
    ``attempts`` is checked against ``X-Rawgw-Attempts`` (0 when the header is absent)."""
    rid = r.header("x-request-id")
    assert rid, f"no X-Request-Id on the response: {r.raw_head!r}"
    rec = await access_record(gw.logs_dir, rid, timeout)
    assert rec["attempts"] == int(r.header("x-rawgw-attempts") or 0), (rec, r.raw_head)
    return rec


# --------------------------------------------------------------------------- metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Metrics:
    samples: Samples
    types: dict[str, str]  # family name -> type

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {lbl: v for (n, lbl), v in self.samples.items() if n == name}

    def total(self, name: str, **match: str) -> float:
        return sum(v for (n, lbl), v in self.samples.items() if n == name and all((k, m) in lbl for k, m in match.items()))


def parse_metrics(text: str) -> Metrics:
    """Parse with prometheus_client's own parser; duplicate series are an error."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            k = (s.name, frozenset(s.labels.items()))
            assert k not in samples, f"duplicate series {k}"
            samples[k] = s.value
    return Metrics(samples, types)


async def scrape(port: int, key: str | None = GW_KEY) -> tuple[Response, Metrics]:
    r = await call(port, b"", path="/metrics", method="GET", key=key)
    assert r.status == 200, (r.status, r.body[:300])
    return r, parse_metrics(r.body.decode())


# --------------------------------------------------------------------------- processes


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return sorted(set(out))


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (Linux /proc/net/tcp{,6}, state 0A)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


LISTEN_RE = re.compile(r"^rawgw listening on http://(?P<host>[^\s:]+):(?P<port>\d+)")


@dataclass
class ProcGateway(Gateway):
    """A gateway started by hand (``await ProcGateway.start(cwd, config, args)``), in its
    own session so that it and its workers can be killed together if a test fails.
    Launched by conftest.launch_gateway (the one launcher); stop it with ``close()``."""

    @classmethod
    async def start(cls, cwd: Path, config: Mapping[str, Any], args: Iterable[str] = (), timeout: float = 10.0) -> ProcGateway:
        return await launch_gateway(cwd, config, args=list(args), new_session=True, timeout=timeout, cls=cls)

    @property
    def _reader(self) -> asyncio.Task[None] | None:  # the old name of the stdout reader
        return self._stdout_task

    def kill(self) -> None:
        """SIGKILL the whole session (the supervisor and its workers): cleanup only."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._stdout_task is not None:
            try:
                await asyncio.wait_for(self._stdout_task, 2)
            except (TimeoutError, asyncio.CancelledError):
                self._stdout_task.cancel()
        return rc

    async def close(self) -> None:
        """For ``finally``: SIGTERM, then SIGKILL of the session if still there."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ProcessLookupError):
                pass
        self.kill()
        if self.proc.returncode is None:
            await self.proc.wait()
        if self._stdout_task is not None and not self._stdout_task.done():
            self._stdout_task.cancel()


def write_config(path: Path, cfg: Mapping[str, Any] | str) -> None:
    """Replace a config file atomically (the gateway may read it at any time)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cfg if isinstance(cfg, str) else to_toml(cfg))
    os.replace(tmp, path)
