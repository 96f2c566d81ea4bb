"""The h11 floor: only the h11 work one proxied request needs, in-process, µs per request.

One "request" is what a gateway with h11 on both legs cannot avoid doing:
  server leg  receive_data(client request) → Request, Data, EndOfMessage, NEED_DATA
  client leg  send(Request) + send_with_data_passthrough(Data) + send(EndOfMessage)
  client leg  receive_data(upstream response) → Response, Data, EndOfMessage
  server leg  send(Response) + send_with_data_passthrough(Data) + send(EndOfMessage)
  both        start_next_cycle() (keep-alive reuse of the same h11.Connection)
Header lists are built once outside the loop (that is the gateway's work, not h11's);
the h11 event objects are built inside it (their validation is h11's work). The wire
bytes are those of the bench: the load client's request and the mock's 600 B answer.

The figure is CPU time (``time.process_time``), the median of 5 batches, so that other
load on a shared machine does not inflate it; the wall-clock figure is kept beside it.

Also measured: one SSE event relayed (client leg receive a chunk → Data, server leg
send_with_data_passthrough), µs per event.

Prints a JSON object (``--json``) or a short text summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from time import perf_counter

import h11

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import median
from mock_upstream import BODY, EV_PREFIX

REQ_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
CLIENT_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: rawgw-bench/1\r\n"
    b"Authorization: Bearer bench-key\r\nContent-Type: application/json\r\nAccept: */*\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(REQ_BODY), REQ_BODY)
)
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: bench-mock\r\nopenai-processing-ms: 1\r\n\r\n%s" % (len(BODY), BODY)
)
UP_HEADERS = [
    (b"user-agent", b"rawgw-bench/1"),
    (b"content-type", b"application/json"),
    (b"accept", b"*/*"),
    (b"host", b"127.0.0.1:9999"),
    (b"authorization", b"Bearer sk-bench-upstream"),
    (b"x-request-id", b"0123456789abcdef01234567"),
    (b"content-length", b"%d" % len(REQ_BODY)),
]
DOWN_HEADERS = [
    (b"content-type", b"application/json"),
    (b"openai-processing-ms", b"1"),
    (b"content-length", b"%d" % len(BODY)),
    (b"x-request-id", b"0123456789abcdef01234567"),
    (b"x-rawgw-provider", b"mock"),
    (b"x-rawgw-attempts", b"1"),
    (b"server-timing", b"gw;dur=0.050, upstream;dur=0.100"),
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"*"),
    (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
    (b"server", b"rawgw"),
]


def _pair() -> tuple[h11.Connection, h11.Connection]:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=16384), h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)


def one_request(srv: h11.Connection, cli: h11.Connection) -> int:
    """The h11 work of one proxied request; returns the bytes written (keeps the work live)."""
    srv.receive_data(CLIENT_REQUEST)
    req = srv.next_event()
    data = srv.next_event()
    srv.next_event()  # EndOfMessage
    srv.next_event()  # NEED_DATA: the call a gateway's read loop makes before it stops
    n = len(cli.send(h11.Request(method=req.method, target=req.target, headers=UP_HEADERS)))  # type: ignore[union-attr]
    for piece in cli.send_with_data_passthrough(h11.Data(data=data.data)):  # type: ignore[union-attr]
        n += len(piece)
    n += len(cli.send(h11.EndOfMessage()))  # type: ignore[arg-type]
    cli.receive_data(UPSTREAM_RESPONSE)
    resp = cli.next_event()
    body = cli.next_event()
    cli.next_event()  # EndOfMessage
    n += len(srv.send(h11.Response(status_code=resp.status_code, headers=DOWN_HEADERS, reason=resp.reason)))  # type: ignore[union-attr,arg-type]
    for piece in srv.send_with_data_passthrough(h11.Data(data=body.data)):  # type: ignore[union-attr]
        n += len(piece)
    n += len(srv.send(h11.EndOfMessage()))  # type: ignore[arg-type]
    cli.start_next_cycle()
    srv.start_next_cycle()
    return n


def staged(n: int) -> dict[str, float]:
    """The same work with a clock between stages: where the floor goes (µs per request)."""
    srv, cli = _pair()
    acc = [0.0] * 5
    pc = perf_counter
    for _ in range(n):
        t0 = pc()
        srv.receive_data(CLIENT_REQUEST)
        req = srv.next_event()
        data = srv.next_event()
        srv.next_event()
        srv.next_event()
        t1 = pc()
        cli.send(h11.Request(method=req.method, target=req.target, headers=UP_HEADERS))  # type: ignore[union-attr]
        cli.send_with_data_passthrough(h11.Data(data=data.data))  # type: ignore[union-attr]
        cli.send(h11.EndOfMessage())
        t2 = pc()
        cli.receive_data(UPSTREAM_RESPONSE)
        resp = cli.next_event()
        body = cli.next_event()
        cli.next_event()
        t3 = pc()
        srv.send(h11.Response(status_code=resp.status_code, headers=DOWN_HEADERS, reason=resp.reason))  # type: ignore[union-attr]
        srv.send_with_data_passthrough(h11.Data(data=body.data))  # type: ignore[union-attr]
        srv.send(h11.EndOfMessage())
        t4 = pc()
        cli.start_next_cycle()
        srv.start_next_cycle()
        t5 = pc()
        acc[0] += t1 - t0
        acc[1] += t2 - t1
        acc[2] += t3 - t2
        acc[3] += t4 - t3
        acc[4] += t5 - t4
    names = ("server_parse_request", "client_send_request", "client_parse_response", "server_send_response", "start_next_cycle_both")
    return {k: round(v / n * 1e6, 2) for k, v in zip(names, acc)}


def sse_event_us(n: int) -> float:
    """µs per SSE event relayed: client leg parses one chunk, server leg re-frames it."""
    srv, cli = _pair()
    srv.receive_data(CLIENT_REQUEST)
    for _ in range(4):  # Request, Data, EndOfMessage, NEED_DATA
        srv.next_event()
    cli.send(h11.Request(method=b"POST", target=b"/v1/chat/completions", headers=UP_HEADERS))
    cli.send(h11.Data(data=REQ_BODY))
    cli.send(h11.EndOfMessage())
    cli.receive_data(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    resp = cli.next_event()
    srv.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream"), (b"server", b"rawgw")]))
    ev = EV_PREFIX + b'1,"t":1700000000.123456}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(ev), ev)
    assert resp.status_code == 200  # type: ignore[union-attr]
    t0 = time.process_time()
    for _ in range(n):
        cli.receive_data(chunk)
        d = cli.next_event()
        cli.next_event()  # NEED_DATA
        srv.send_with_data_passthrough(h11.Data(data=d.data))  # type: ignore[union-attr]
    return (time.process_time() - t0) / n * 1e6


def measure(n: int, batches: int = 5) -> dict:
    srv, cli = _pair()
    for _ in range(min(2000, n)):  # warm caches and h11's internal paths
        one_request(srv, cli)
    per = max(1, n // batches)
    runs = []
    cpu_runs = []
    for _ in range(batches):
        t0 = perf_counter()
        c0 = time.process_time()
        for _ in range(per):
            one_request(srv, cli)
        cpu_runs.append((time.process_time() - c0) / per * 1e6)
        runs.append((perf_counter() - t0) / per * 1e6)
    cpu = median(cpu_runs) or 0.0
    stages = staged(max(1, per))
    total = sum(stages.values()) or 1.0
    return {
        "h11_version": h11.__version__,
        "python": sys.version.split()[0],
        "requests": per * batches,
        # CPU time (process_time), median of the batches: robust on a shared machine.
        "us_per_request": round(cpu, 2),
        "us_per_request_min": round(min(cpu_runs), 2),
        "wall_us_per_request": round(median(runs) or 0.0, 2),
        # Where the floor goes, from a wall-clocked pass, scaled to the CPU figure.
        "stages_us": {k: round(v / total * cpu, 2) for k, v in stages.items()},
        "sse_event_us": round(sse_event_us(max(1000, per)), 2),
        "gc_enabled": gc.isenabled(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="requests measured (split into 5 batches; median)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = measure(args.n)
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        print(f"h11 floor: {res['us_per_request']} µs per proxied request (h11 {res['h11_version']}, {res['requests']} requests)")
        for k, v in res["stages_us"].items():
            print(f"  {k:24s} {v:8.2f} µs")
        print(f"  sse event relay          {res['sse_event_us']:8.2f} µs per event")


if __name__ == "__main__":
    main()
