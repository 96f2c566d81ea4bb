"""Logs (issue 4.1, README "Logs"): access.jsonl, errors.jsonl, chat logs, the console line.

The files are written by a background thread: every check polls with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from conftest import GW_KEY, UPSTREAM_KEY, StartGateway, base_config, chat_request, free_port, raw_connection
from mock_upstream import Json, MockUpstream, ResetMidBody, Sse, Stall
from ops_helpers import (
    access_record,
    call,
    chat_body,
    completion,
    jsonl_records,
    sse_chat,
    wait_until,
)

ACCESS_FIELDS = {
    "time",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "upstream_ttfb_ms",
    "provider",
    "key_name",
    "client_model",
    "upstream_model",
    "attempts",
    "bytes_in",
    "bytes_out",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cache",
    "outcome",
}

ALIAS = {"routes": [{"match": "alias", "model": "up-model"}]}


def rid_headers(rid: str) -> list[tuple[str, str]]:
    return [("X-Request-ID", rid)]


# --------------------------------------------------------------------------- access.jsonl


async def test_access_log_non_streaming_fields(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=ALIAS))
    answer = json.dumps(completion("hello", prompt=11, completion_tokens=7)).encode()
    mock_upstream.enqueue(Json(body=answer, delay_before=0.1))
    body = chat_body("alias")
    t_before = time.time()
    r = await call(gw.port, body, headers=rid_headers("acc-plain-1"))
    assert r.status == 200 and r.body == answer
    rec = await access_record(gw.logs_dir, "acc-plain-1")
    assert set(rec) >= ACCESS_FIELDS, sorted(ACCESS_FIELDS - set(rec))
    assert abs(rec["time"] - t_before) < 5, rec["time"]
    expected = {
        "request_id": "acc-plain-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "provider": "mock",
        "key_name": "tester",
        "client_model": "alias",
        "upstream_model": "up-model",
        "attempts": 1,
        "bytes_in": len(body),
        "bytes_out": len(answer),
        "stream": False,
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cache": None,
        "outcome": "ok",
    }
    assert {k: rec[k] for k in expected} == expected, rec
    # the mock waits 100 ms before its head: both timings see it
    assert 100 <= rec["upstream_ttfb_ms"] <= 3000, rec
    assert rec["upstream_ttfb_ms"] <= rec["duration_ms"] <= 3000, rec


async def test_access_log_one_object_per_request(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    async with await raw_connection(gw.port) as c:  # keep-alive: still one object each
        for i in range(3):
            r = await c.request(chat_request(chat_body(), headers=rid_headers(f"acc-many-{i}")))
            assert r.status == 200
    r = await call(gw.port, b"", path="/health", method="GET", key=None, headers=rid_headers("acc-many-health"))
    assert r.status == 200
    ids = ["acc-many-0", "acc-many-1", "acc-many-2", "acc-many-health"]
    recs = await jsonl_records(gw.logs_dir / "access.jsonl", lambda rs: {r["request_id"] for r in rs} >= set(ids))
    assert sorted(r["request_id"] for r in recs) == sorted(ids), recs
    health = next(r for r in recs if r["request_id"] == "acc-many-health")
    assert (health["method"], health["path"], health["status"], health["outcome"]) == ("GET", "/health", 200, "ok")


async def test_access_log_stream_usage_from_last_event(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    pieces = sse_chat([f"w{i} " for i in range(30)], usage=(23, 31))
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.002))
    body = chat_body(stream=True)
    r = await call(gw.port, body, headers=rid_headers("acc-stream-1"))
    assert r.status == 200 and r.body == b"".join(pieces)
    rec = await access_record(gw.logs_dir, "acc-stream-1")
    expected = {
        "status": 200,
        "stream": True,
        "prompt_tokens": 23,
        "completion_tokens": 31,
        "outcome": "ok",
        "bytes_in": len(body),
        "bytes_out": len(b"".join(pieces)),
        "attempts": 1,
        "provider": "mock",
    }
    assert {k: rec[k] for k in expected} == expected, rec


async def test_access_log_stream_usage_event_split_over_small_chunks(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The usage event arrives cut into several small chunks (an intermediary re-chunking
    the stream, or a server writing `data: `, the JSON and the blank line separately):
    the tokens are still counted (README: usage from the last SSE events)."""
    gw = await start_gateway(base_config(mock_upstream))
    pieces = sse_chat(["a", "b"], usage=(5, 9))
    usage_event, done = pieces[-2], pieces[-1]
    cut = usage_event.index(b'"usage"') + 12
    split = [usage_event[:cut], usage_event[cut:-2], usage_event[-2:], done[:6], done[6:]]
    mock_upstream.enqueue(Sse(pieces=pieces[:-2] + split, delay=0.02))
    r = await call(gw.port, chat_body(stream=True), headers=rid_headers("acc-split-1"))
    assert r.status == 200 and r.body == b"".join(pieces)
    rec = await access_record(gw.logs_dir, "acc-split-1")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (5, 9), rec


async def test_access_log_outcome_client_closed(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    pieces = sse_chat([f"t{i}" for i in range(20)], usage=(1, 1))
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.2))
    c = await raw_connection(gw.port)
    await c.send(chat_request(chat_body(stream=True), headers=rid_headers("acc-gone-1")))
    await c.read_until(b"t0")
    c.abort()
    rec = await access_record(gw.logs_dir, "acc-gone-1")
    assert (rec["outcome"], rec["status"], rec["stream"]) == ("client_closed", 200, True), rec
    assert 0 < rec["bytes_out"] < len(b"".join(pieces)), rec


async def test_access_log_outcome_upstream_error_mid_body(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    mock_upstream.enqueue(ResetMidBody(body_prefix=b'{"partial":', content_length=200))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat_body(), headers=rid_headers("acc-cut-1")))
        data = await c.read_until_close()
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    rec = await access_record(gw.logs_dir, "acc-cut-1")
    assert (rec["outcome"], rec["status"], rec["bytes_out"]) == ("upstream_error", 200, len(b'{"partial":')), rec


async def test_access_log_outcome_timeout(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"first_byte_timeout_s": 0.3}))
    mock_upstream.enqueue(Stall(seconds=3))
    r = await call(gw.port, chat_body(), headers=rid_headers("acc-slow-1"))
    assert r.status == 504
    rec = await access_record(gw.logs_dir, "acc-slow-1")
    assert (rec["outcome"], rec["status"], rec["attempts"]) == ("timeout", 504, 1), rec


async def test_access_log_outcomes_rejected_and_rate_limited(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    keys = [{"key": GW_KEY, "name": "tester", "rate_limit_rpm": 1, "rate_limit_burst": 1}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    assert (await call(gw.port, chat_body(), key="wrong-key-000000", headers=rid_headers("acc-401"))).status == 401
    assert (await call(gw.port, chat_body(), headers=rid_headers("acc-ok"))).status == 200
    assert (await call(gw.port, chat_body(), headers=rid_headers("acc-429"))).status == 429
    r401 = await access_record(gw.logs_dir, "acc-401")
    r429 = await access_record(gw.logs_dir, "acc-429")
    assert (r401["status"], r401["outcome"], r401["key_name"]) == (401, "rejected", None), r401
    assert (r429["status"], r429["outcome"], r429["key_name"], r429["attempts"]) == (429, "rate_limited", "tester", 0), r429


async def test_access_log_cache_field(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"cache": {"enabled": True}}))
    for rid in ("acc-c1", "acc-c2"):
        assert (await call(gw.port, chat_body(), headers=rid_headers(rid))).status == 200
    c1 = await access_record(gw.logs_dir, "acc-c1")
    c2 = await access_record(gw.logs_dir, "acc-c2")
    assert (c1["cache"], c2["cache"]) == ("MISS", "HIT"), (c1, c2)
    assert (c2["status"], c2["outcome"], c2["provider"]) == (200, "ok", "mock"), c2


# --------------------------------------------------------------------------- errors.jsonl


async def test_errors_log_failover_after_500(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(
        base_config(mock_upstream, provider={"keys": [UPSTREAM_KEY, "sk-second-key-bbbb2222"], "key_strategy": "first"})
    )
    mock_upstream.enqueue(Json(status=500, body=b'{"error":"boom"}'))
    r = await call(gw.port, chat_body(), headers=rid_headers("err-500-1"))
    assert r.status == 200 and r.header("x-rawgw-attempts") == "2"
    recs = await jsonl_records(gw.logs_dir / "errors.jsonl", lambda rs: any(x.get("request_id") == "err-500-1" for x in rs))
    mine = [x for x in recs if x["request_id"] == "err-500-1"]
    assert len(mine) == 1, mine
    assert mine[0]["provider"] == "mock" and "500" in mine[0]["message"], mine
    rec = await access_record(gw.logs_dir, "err-500-1")
    assert (rec["attempts"], rec["outcome"], rec["status"]) == (2, "ok", 200), rec


async def test_errors_log_502_unreachable(start_gateway: StartGateway) -> None:
    gw = await start_gateway(base_config(f"http://127.0.0.1:{free_port()}/v1"))
    r = await call(gw.port, chat_body(), headers=rid_headers("err-502-1"))
    assert r.status == 502
    recs = await jsonl_records(
        gw.logs_dir / "errors.jsonl",
        lambda rs: any(x.get("request_id") == "err-502-1" and x.get("status") == 502 for x in rs),
    )
    mine = [x for x in recs if x["request_id"] == "err-502-1"]
    # the failed attempt and the 502 the client got
    assert any(x.get("provider") == "mock" for x in mine), mine
    assert [x["status"] for x in mine if "status" in x] == [502], mine
    rec = await access_record(gw.logs_dir, "err-502-1")
    assert (rec["status"], rec["outcome"], rec["attempts"]) == (502, "upstream_error", 1), rec


# --------------------------------------------------------------------------- chat logs


def chat_files(logs_dir: Path) -> list[Path]:
    d = logs_dir / "chat"
    return sorted(d.glob("*.json")) if d.is_dir() else []


async def chat_file_of(logs_dir: Path, rid: str) -> dict[str, Any]:
    def find() -> Path | None:
        return next((p for p in chat_files(logs_dir) if p.name.endswith(f"_{rid}.json")), None)

    path = await wait_until(find, what=f"chat log of {rid}")
    doc: dict[str, Any] = await wait_until(lambda: _load(path), what=f"complete JSON in {path}")
    return doc


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (ValueError, FileNotFoundError):
        return None


CHAT_ON = {"logging": {"chat": True}}


async def test_chat_log_non_streaming(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={**CHAT_ON, **ALIAS}))
    answer = completion("the full answer", prompt=3, completion_tokens=4)
    mock_upstream.enqueue(Json(body=answer))
    body = chat_body("alias", temperature=0.5)
    r = await call(gw.port, body, headers=rid_headers("chat-plain-1") + [("X-Title", "ops-test")])
    assert r.status == 200
    rec = await chat_file_of(gw.logs_dir, "chat-plain-1")
    headers = {k.lower(): v for k, v in rec["request"]["headers"].items()}
    assert GW_KEY not in json.dumps(rec), rec
    assert headers["authorization"].startswith("Bearer ") and headers["authorization"] != f"Bearer {GW_KEY}", headers
    assert headers["x-title"] == "ops-test", headers
    assert rec["request"]["body"] == json.loads(body), rec["request"]
    assert rec["response"]["status"] == 200, rec["response"]
    assert rec["response"]["body"] == answer, rec["response"]


async def test_chat_log_masks_x_api_key(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CHAT_ON))
    r = await call(gw.port, chat_body(), auth="x-api-key", headers=rid_headers("chat-xkey-1"))
    assert r.status == 200
    rec = await chat_file_of(gw.logs_dir, "chat-xkey-1")
    headers = {k.lower(): v for k, v in rec["request"]["headers"].items()}
    assert "x-api-key" in headers and headers["x-api-key"] != GW_KEY, headers
    assert GW_KEY not in json.dumps(rec) and UPSTREAM_KEY not in json.dumps(rec)


async def test_chat_log_stream_has_assembled_text(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CHAT_ON))
    texts = ["Hel", "lo, ", "wor", "ld ", "é!"]
    pieces = sse_chat(texts, usage=(2, 5))
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.01))
    r = await call(gw.port, chat_body(stream=True), headers=rid_headers("chat-stream-1"))
    assert r.status == 200
    rec = await chat_file_of(gw.logs_dir, "chat-stream-1")
    assert rec["response"]["text"] == "".join(texts), rec["response"]
    assert rec["response"]["body"] == b"".join(pieces).decode(), rec["response"]
    assert rec["request"]["body"] == json.loads(chat_body(stream=True))


async def test_chat_log_oldest_deleted_beyond_limit(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"logging": {"chat": True, "chat_file_limit": 2}}))
    for i in range(4):
        assert (await call(gw.port, chat_body(), headers=rid_headers(f"chat-lim-{i}"))).status == 200
        await asyncio.sleep(0.01)  # distinct timestamps in the names

    def names() -> list[str]:
        return sorted(p.name.rsplit("_", 1)[1] for p in chat_files(gw.logs_dir))

    await wait_until(lambda: names() == ["chat-lim-2.json", "chat-lim-3.json"], what="the 2 newest chat logs only")
    await asyncio.sleep(0.2)
    assert names() == ["chat-lim-2.json", "chat-lim-3.json"]


async def test_chat_log_off_by_default(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    assert (await call(gw.port, chat_body(), headers=rid_headers("chat-off-1"))).status == 200
    await access_record(gw.logs_dir, "chat-off-1")
    await asyncio.sleep(0.1)
    assert chat_files(gw.logs_dir) == []


# --------------------------------------------------------------------------- console


async def test_console_line_per_request(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    assert (await call(gw.port, chat_body(), headers=rid_headers("console-ok-1"))).status == 200
    r = await call(gw.port, b"", path="/nope", method="GET", headers=rid_headers("console-404-1"))
    assert r.status == 404

    def lines(rid: str) -> list[str]:
        return [line for line in gw.stderr_text().splitlines() if rid in line]

    ok = await wait_until(lambda: lines("console-ok-1"), what="console line")
    assert len(ok) == 1, ok
    assert "POST" in ok[0] and "/v1/chat/completions" in ok[0] and " 200 " in ok[0], ok
    miss = await wait_until(lambda: lines("console-404-1"), what="console line")
    assert len(miss) == 1 and "GET" in miss[0] and "/nope" in miss[0] and " 404 " in miss[0], miss


# --------------------------------------------------------------------------- rotation (issue 10.9)


def _records(path: Path) -> list[int]:
    return [json.loads(line)["n"] for line in path.read_text().splitlines()] if path.exists() else []


def _writer(tmp_path: Path, **fields: Any) -> Any:
    from rawgw.config import LoggingConfig
    from rawgw.observe.logwriter import LogWriter

    return LogWriter(LoggingConfig(dir=str(tmp_path), **fields))


def test_rotation_keeps_backups_files_each_under_max_bytes(tmp_path: Path) -> None:
    w = _writer(tmp_path, max_bytes=1000, backups=2)
    try:
        for n in range(200):
            w.access({"n": n, "pad": "x" * 40})
            if n % 7 == 0:
                w.flush()  # batches of every size
        w.flush()
    finally:
        w.close()
    base = tmp_path / "access.jsonl"
    files = [base, tmp_path / "access.jsonl.1", tmp_path / "access.jsonl.2"]
    assert all(f.exists() for f in files) and not (tmp_path / "access.jsonl.3").exists()
    assert all(f.stat().st_size <= 1000 for f in files), [f.stat().st_size for f in files]
    kept = _records(files[2]) + _records(files[1]) + _records(base)
    assert kept == list(range(200 - len(kept), 200)), kept  # oldest to newest, nothing lost in between
    assert len(_records(base)) > 0 and len(kept) > 30


def test_rotation_with_no_backups_and_off(tmp_path: Path) -> None:
    w = _writer(tmp_path / "a", max_bytes=500, backups=0)
    w2 = _writer(tmp_path / "b", max_bytes=0)
    try:
        for n in range(100):
            w.error({"n": n})
            w2.error({"n": n})
        w.flush()
        w2.flush()
    finally:
        w.close()
        w2.close()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["errors.jsonl"]
    assert (tmp_path / "a" / "errors.jsonl").stat().st_size <= 500 and _records(tmp_path / "a" / "errors.jsonl")[-1] == 99
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["errors.jsonl"]
    assert _records(tmp_path / "b" / "errors.jsonl") == list(range(100))


def test_rotation_by_two_writers_sharing_the_files(tmp_path: Path) -> None:
    """Pre-forked workers append to the same access.jsonl: a rotation by one is seen by
    the other (it reopens the path), and no line is lost among the kept files."""
    a = _writer(tmp_path, max_bytes=2000, backups=50)
    b = _writer(tmp_path, max_bytes=2000, backups=50)
    try:
        for n in range(300):
            (a if n % 2 else b).access({"n": n, "pad": "y" * 30})
            if n % 5 == 0:
                a.flush()
                b.flush()
        a.flush()
        b.flush()
    finally:
        a.close()
        b.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 3
    seen = sorted(n for f in files for n in _records(f))
    assert seen == list(range(300))
    assert all(f.stat().st_size <= 2000 + 100 for f in files), [f.stat().st_size for f in files]


async def test_gateway_rotates_access_and_errors_logs(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"logging": {"max_bytes": 1000, "backups": 2}}))
    for i in range(20):
        assert (await call(gw.port, chat_body(), headers=rid_headers(f"ok-{i}"))).status == 200
        assert (await call(gw.port, chat_body(), key="wrong-key-0123456789", headers=rid_headers(f"bad-{i}"))).status == 401
    logs = gw.logs_dir
    for name in ("access.jsonl", "errors.jsonl"):
        # the last record written: the writer is done with this file
        def last_written(n: str = name) -> bool:
            try:  # a rotation may rename the file between a check and the read
                return '"bad-19"' in (logs / n).read_text()
            except FileNotFoundError:
                return False

        await wait_until(last_written, what=f"the last record in {name}")
        assert (logs / f"{name}.2").exists(), sorted(p.name for p in logs.iterdir())
        assert not (logs / f"{name}.3").exists()
        for f in (logs / name, logs / f"{name}.1", logs / f"{name}.2"):
            assert f.stat().st_size <= 1000, (f, f.stat().st_size)


async def test_sighup_reopens_the_log_files_even_when_the_reload_fails(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """External logrotate: rename the file, SIGHUP, the next request lands in a new file
    at the old path; a config that does not load at that moment must not stop that."""
    import signal

    from ops_helpers import write_config

    cfg = base_config(mock_upstream, extra={"logging": {"max_bytes": 0}})
    gw = await start_gateway(cfg)
    access = gw.logs_dir / "access.jsonl"
    first = await call(gw.port, chat_body(), headers=rid_headers("before-rotate"))
    assert first.status == 200
    await access_record(gw.logs_dir, "before-rotate")
    for i, broken in enumerate((False, True)):
        moved = gw.logs_dir / f"access.jsonl.moved{i}"
        access.rename(moved)
        if broken:
            gw.config_path.write_text("[server\n")  # the config is being edited
        gw.proc.send_signal(signal.SIGHUP)
        mark = "reload failed" if broken else "config reloaded"
        await wait_until(lambda m=mark, c=i + 1: gw.stderr_text().count(m) >= (1 if m == "reload failed" else c), what=mark)
        rid = f"after-rotate-{i}"
        assert (await call(gw.port, chat_body(), headers=rid_headers(rid))).status == 200
        await access_record(gw.logs_dir, rid)  # in the new access.jsonl
        assert rid not in moved.read_text()
        if broken:
            write_config(gw.config_path, cfg)
