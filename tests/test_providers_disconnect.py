"""Issue 13 point 8 through the real gateway: ``on_disconnect = "close"`` (default: the
upstream is closed at once when the client leaves, SPEC 6) or ``"drain"`` per route (the
rest of the response is read and discarded, its usage recorded, the connection pooled)."""

from __future__ import annotations

import json

from conftest import StartGateway, chat_request, raw_connection
from mock_upstream import Chunked, Json, MockUpstream, Sse
from ops_helpers import access_record, completion, sse_chat
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    call,
    cfg,
    chat,
    prov,
    routed_by,
    ups_fixture,
)


def drain_config(mock: MockUpstream, on_disconnect: str | None = "drain") -> dict[str, object]:
    route: dict[str, object] = {"match": "m*"}
    if on_disconnect is not None:
        route["on_disconnect"] = on_disconnect
    return cfg({"a": prov(mock)}, [route])


async def leave_after(gw_port: int, request_id: str, body: bytes, marker: bytes | None) -> None:
    """Send a request, read until ``marker`` (None: read nothing), then reset the connection."""
    conn = await raw_connection(gw_port)
    await conn.send(chat_request(body, headers=[("X-Request-ID", request_id)]))
    if marker is not None:
        await conn.read_until(marker)
    conn.abort()


async def test_drain_reads_the_rest_of_a_stream_and_records_its_usage(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    a = ups[0]
    pieces = sse_chat(["one", "two", "three", "four"], usage=(11, 22))
    a.enqueue(Sse(pieces=pieces, delay=0.1))
    gw = await start_gateway(drain_config(a))
    await leave_after(gw.port, "drain-sse", chat("m", stream=True), b"one")
    rec = await access_record(gw.logs_dir, "drain-sse")
    assert rec["outcome"] == "drained"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (11, 22)
    assert rec["bytes_out"] == len(b"".join(pieces))  # read off the upstream, to its end
    assert rec["status"] == 200 and rec["error"] is None
    (req,) = a.requests
    assert len(req.pieces_sent_at) == len(pieces) and not req.conn.peer_closed.is_set()
    # the drained connection went back to the pool: the next request reuses it
    r = await call(gw, chat("m"))
    assert r.status == 200 and a.requests[1].conn is req.conn


async def test_close_is_the_default_and_ends_the_upstream_at_once(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    for name, on_disconnect in (("default", None), ("close", "close")):
        a = ups[0]
        a.requests.clear()
        pieces = sse_chat(["one", "two", "three", "four"], usage=(11, 22))
        a.enqueue(Sse(pieces=pieces, delay=0.3))
        gw = await start_gateway(drain_config(a, on_disconnect))
        await leave_after(gw.port, f"close-{name}", chat("m", stream=True), b"one")
        (req,) = a.requests
        await a.wait_peer_closed(req.conn, timeout=2.0)
        rec = await access_record(gw.logs_dir, f"close-{name}")
        assert rec["outcome"] == "client_closed"
        assert rec["completion_tokens"] is None
        assert len(req.pieces_sent_at) < len(pieces)


async def test_drain_before_the_head_waits_for_the_answer_and_records_its_usage(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    """A non-streamed request: the head comes only with the whole answer. The client
    leaves while it is generated; the answer is still read and its usage recorded."""
    a = ups[0]
    a.enqueue(Json(body=completion("late", prompt=5, completion_tokens=7), delay_before=0.5))
    gw = await start_gateway(drain_config(a))
    conn = await raw_connection(gw.port)
    await conn.send(chat_request(chat("m"), headers=[("X-Request-ID", "drain-json")]))
    await a.wait_for_requests(1)
    conn.abort()
    rec = await access_record(gw.logs_dir, "drain-json")
    assert rec["outcome"] == "drained"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (5, 7)
    assert not a.requests[0].conn.peer_closed.is_set()


async def test_drain_does_not_fail_over_for_a_client_that_left(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    ups[0].enqueue(Json(status=503, body={"error": "busy"}, delay_before=0.5))
    config = cfg({"a": prov(ups[0]), "b": prov(ups[1])}, [{"match": "m*", "providers": ["a", "b"], "on_disconnect": "drain"}])
    config["providers"]["a"]["max_retries"] = 2
    gw = await start_gateway(config)
    conn = await raw_connection(gw.port)
    await conn.send(chat_request(chat("m"), headers=[("X-Request-ID", "drain-503")]))
    await ups[0].wait_for_requests(1)
    conn.abort()
    rec = await access_record(gw.logs_dir, "drain-503")
    assert rec["outcome"] == "drained" and rec["status"] == 503 and rec["attempts"] == 1
    assert len(ups[0].requests) == 1 and not ups[1].requests


async def test_drain_of_a_client_that_never_read_resumes_the_paused_upstream(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    """A client that reads nothing fills the gateway's buffers, which pauses the upstream
    (SPEC 6). When it leaves, the drain resumes reading: 32 MiB go by, discarded, with the
    gateway's memory staying bounded (only the usage tail is kept)."""
    a = ups[0]
    piece = b": " + b"x" * 65530 + b"\n\n"  # an SSE comment line of 64 KiB, the same object each time
    usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4096}}
    tail = [b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    pieces = [piece] * 512 + tail
    a.enqueue(Chunked(pieces=pieces, content_type="text/event-stream"))
    gw = await start_gateway(drain_config(a))
    rss_before = _rss(gw.proc.pid)
    conn = await raw_connection(gw.port)
    await conn.send(chat_request(chat("m", stream=True), headers=[("X-Request-ID", "drain-big")]))
    (req,) = await a.wait_for_requests(1)
    while len(req.pieces_sent_at) < 8:  # the stream is flowing (and the gateway soon paused)
        await conn_gap()
    conn.abort()
    rec = await access_record(gw.logs_dir, "drain-big", timeout=20.0)
    assert rec["outcome"] == "drained"
    assert rec["bytes_out"] == sum(len(p) for p in pieces)
    assert rec["completion_tokens"] == 4096
    assert _rss(gw.proc.pid) - rss_before < 16 * 1024 * 1024


async def conn_gap() -> None:
    import asyncio

    await asyncio.sleep(0.01)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_on_disconnect_must_be_close_or_drain(start_gateway: StartGateway, ups: list[MockUpstream], tmp_path: object) -> None:
    from pathlib import Path

    from conftest import to_toml
    from providers_helpers import rawgw_cli

    path = Path(str(tmp_path)) / "gateway.toml"
    path.write_text(to_toml(drain_config(ups[0], "finish")))
    done = rawgw_cli("check", "-c", str(path), cwd=path.parent)
    assert done.returncode == 1 and "routes[0].on_disconnect: must be one of close, drain" in done.stdout
    assert routed_by(await call(await start_gateway(drain_config(ups[0])), chat("m"))) == ("a", "1")
