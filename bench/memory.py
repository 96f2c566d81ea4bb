"""Memory and fairness under clients that do not read: the thresholds the tests used to hold.

    python bench/memory.py              # both scenarios, ~15 s
    python bench/memory.py --only slow_reader

Starts the bench mock upstream and a rawgw (pinned like bench/run.py), then:

  slow_reader  one SSE stream of ~20 MB (``--events`` events, no interval) to a client
               with a 64 kB receive buffer that reads nothing for 2 s, then reads it all
               in 64 kB steps; the gateway's RSS peak over its baseline (flow control:
               the upstream is paused, nothing piles up in the gateway). Byte-exact check
               by the mock's sha256 event.
  flood        2 MB of pipelined ``GET /health`` from a client with a 16 kB receive buffer
               that never reads, for 4 s; the RSS peak over the baseline (bounded
               pipelining) and how long another client, one second in, waits for a 200
               (fairness).

Prints one JSON object. Exit 1 when a figure crosses its limit (``--max-slow-mb`` 8,
``--max-flood-mb`` 30, ``--max-other-s`` 1.0; what tests/test_hardening_limits.py
asserted before issue 11 moved the numbers here), 2 when the rig failed. The tests keep
the functional facts (the upstream is paused, the other client is served, answers are
all 200 and byte-exact).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl
from run import RUNNING, cleanup, rawgw_config, start_mock, start_rawgw

KEY = b"bench-key"
HEALTH = b"GET /health HTTP/1.1\r\nHost:a\r\n\r\n"


def chat(stream: bool, extra: bytes = b"") -> bytes:
    body = b'{"model":"m","stream":%s,"messages":[{"role":"user","content":"hi"}]}' % (b"true" if stream else b"false")
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + KEY + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


async def small_window(port: int, rcvbuf: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is set before connecting, so the window stays small."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=s, limit=1 << 20)


async def slow_reader(port: int, pid: int, events: int) -> dict[str, object]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(chat(False))
    await r.readuntil(b"\r\n\r\n")  # warm: one request through
    w.close()
    base = bl.rss_kib([pid])
    r, w = await small_window(port, 65536)
    w.write(chat(True, b"x-bench-events: %d\r\nx-bench-interval-ms: 0\r\n" % events))
    peak = base
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:  # read nothing
        await asyncio.sleep(0.05)
        peak = max(peak, bl.rss_kib([pid]))
    got = bytearray()
    decoder = bl.ChunkedDecoder()
    body: list[bytes] = []
    head_done = False
    while True:
        data = await asyncio.wait_for(r.read(65536), 20)
        if not data:
            break
        if not head_done:
            got += data
            end = got.find(b"\r\n\r\n")
            if end < 0:
                continue
            head_done, data = True, bytes(got[end + 4 :])
        decoder.feed(data, body)
        peak = max(peak, bl.rss_kib([pid]))
        if decoder.done:
            break
        await asyncio.sleep(0.001)
    w.close()
    raw = b"".join(body)
    m = re.search(rb'data: \{"sha256":"([0-9a-f]{64})"\}\n\n', raw)
    exact = m is not None and hashlib.sha256(raw[: m.start()]).hexdigest() == m.group(1).decode()
    return {"stream_mb": round(len(raw) / 1e6, 1), "byte_exact": exact, "rss_growth_mb": round((peak - base) / 1024, 1)}


async def flood(port: int, pid: int) -> dict[str, object]:
    base = bl.rss_kib([pid])
    r, w = await small_window(port, 16384)
    other: list[float] = []

    async def other_client() -> None:
        await asyncio.sleep(1.0)
        t1 = time.monotonic()
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(chat(False))
            head = await asyncio.wait_for(r2.readuntil(b"\r\n\r\n"), 3)
            other.append(time.monotonic() - t1 if head.startswith(b"HTTP/1.1 200") else float("inf"))
            w2.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            other.append(float("inf"))

    task = asyncio.create_task(other_client())
    peak, sent = base, 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0:
        if sent < 2_000_000:
            w.write(HEALTH * 1024)
            sent += len(HEALTH) * 1024
        try:
            await asyncio.wait_for(w.drain(), 0.1)
        except TimeoutError:
            pass
        peak = max(peak, bl.rss_kib([pid]))
    await task
    w.transport.abort()
    return {"sent_mb": round(sent / 1e6, 1), "rss_growth_mb": round((peak - base) / 1024, 1), "other_client_s": round(other[0], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated: slow_reader, flood")
    p.add_argument("--events", type=int, default=100_000, help="SSE events of the slow reader's stream (~200 B each)")
    p.add_argument("--max-slow-mb", type=float, default=8.0)
    p.add_argument("--max-flood-mb", type=float, default=30.0)
    p.add_argument("--max-other-s", type=float, default=1.0)
    args = p.parse_args()
    only = set((args.only or "slow_reader,flood").split(","))
    all_cpus = bl.cpus()
    gw_cpus, rig_cpus = (all_cpus[:1], all_cpus[1:]) if len(all_cpus) >= 2 else (None, None)
    if rig_cpus:
        os.sched_setaffinity(0, set(rig_cpus))
    tmp = Path(tempfile.mkdtemp(prefix="rawgw-memory-"))
    res: dict[str, object] = {"command": "python bench/memory.py " + " ".join(sys.argv[1:]), "machine": bl.machine_info()}
    problems: list[str] = []
    try:
        mock = start_mock(tmp, rig_cpus)
        gw, reason = start_rawgw(tmp, "rawgw", rawgw_config(tmp, "rawgw", mock.port), gw_cpus)
        if gw is None:
            print(json.dumps({"error": f"rawgw did not start: {reason}"}))
            return 2
        pid = gw.proc.pid  # type: ignore[union-attr]
        if "slow_reader" in only:
            s = res["slow_reader"] = asyncio.run(slow_reader(gw.port, pid, args.events))
            if not s["byte_exact"]:
                problems.append("slow_reader: stream not byte-exact")
            if float(s["rss_growth_mb"]) >= args.max_slow_mb:  # type: ignore[arg-type]
                problems.append(f"slow_reader: RSS grew {s['rss_growth_mb']} MB (limit {args.max_slow_mb})")
        if "flood" in only:
            f = res["flood"] = asyncio.run(flood(gw.port, pid))
            if float(f["rss_growth_mb"]) > args.max_flood_mb:  # type: ignore[arg-type]
                problems.append(f"flood: RSS grew {f['rss_growth_mb']} MB (limit {args.max_flood_mb})")
            if float(f["other_client_s"]) >= args.max_other_s:  # type: ignore[arg-type]
                problems.append(f"flood: another client waited {f['other_client_s']} s (limit {args.max_other_s})")
    finally:
        cleanup()
        assert not RUNNING
        shutil.rmtree(tmp, ignore_errors=True)
    res["problems"] = problems
    print(json.dumps(res, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
