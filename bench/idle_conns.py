"""RSS per idle keep-alive client connection: N connections that each made one request.

    python bench/idle_conns.py                       # 10,000 connections, this tree
    python bench/idle_conns.py -n 2000 --tree /tmp/before

A fresh gateway (pinned to CPU 0) is warmed (a few requests), its VmRSS read (idle);
then N keep-alive connections are opened (200 at a time, the client pinned to CPU 1),
each sends ``GET /health`` and reads the answer, and all stay open. RSS is read again
(loaded), KiB/connection = (loaded - idle) / N. User-space memory only: kernel socket
buffers are not in RSS. Prints one line and a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def open_idle(port: int, n: int, concurrency: int) -> list[asyncio.StreamWriter]:
    sem = asyncio.Semaphore(concurrency)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--connections", type=int, default=10_000)
    ap.add_argument("--tree", default=str(bl.REPO_DIR))
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()
    bl.raise_nofile()
    cpus = bl.cpus()
    d = Path(tempfile.mkdtemp(prefix="rawgw-idle-"))
    cfg = d / "gateway.toml"
    cfg.write_text(
        f"[server]\nport = 0\nmax_connections = {args.connections + 100}\nkeepalive_timeout_s = 600\n"
        '[[keys]]\nkey = "bench-key"\nname = "bench"\n'
        '[providers.m]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nkeys = ["sk-x"]\n'
        "[logging]\naccess = false\nerrors = false\n"
    )
    cfg.chmod(0o600)
    env = dict(os.environ, PYTHONPATH=args.tree)

    def pin() -> None:
        bl.raise_nofile()
        os.sched_setaffinity(0, {cpus[0]})

    gw = subprocess.Popen(
        [sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"],
        cwd=args.tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pin,
    )
    try:
        assert gw.stdout is not None
        port = int(re.search(r"http://[^:]+:(\d+)", gw.stdout.readline()).group(1))  # type: ignore[union-attr]
        if len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[1:]))
        bl.install_uvloop()

        async def run() -> dict:
            warm = await open_idle(port, 20, 20)
            for w in warm:
                w.close()
            await asyncio.sleep(0.5)
            idle = bl.rss_kib([gw.pid])
            t0 = time.monotonic()
            writers = await open_idle(port, args.connections, args.concurrency)
            opened_s = time.monotonic() - t0
            await asyncio.sleep(1.0)
            loaded = bl.rss_kib([gw.pid])
            fds = bl.fd_count([gw.pid])
            for w in writers:
                w.transport.abort()
            return {
                "tree": args.tree,
                "connections": len(writers),
                "rss_idle_kib": idle,
                "rss_loaded_kib": loaded,
                "kib_per_connection": round((loaded - idle) / max(1, len(writers)), 2),
                "fds": fds,
                "open_s": round(opened_s, 2),
            }

        res = asyncio.run(run())
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)
    print(
        f"{res['connections']} idle keep-alive connections: RSS {res['rss_idle_kib'] / 1024:.1f} -> "
        f"{res['rss_loaded_kib'] / 1024:.1f} MiB = {res['kib_per_connection']} KiB/connection, {res['fds']} fds"
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
