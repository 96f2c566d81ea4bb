"""CPU per round trip and latency of the state-server client: rawgw.state.client vs
redis-py's asyncio client (with hiredis), under uvloop, against a local redis-server
this script starts itself (issue 12).

    pip install redis hiredis        # redis-py is for this comparison only
    python bench/state_client.py [--ops 20000] [--concurrency 64]

Workloads, each for both clients: GET/SET alternating and EVALSHA of the limiter
script (rawgw.state.limiter), sequential (one caller) and N concurrent callers.
Reports µs of client-process CPU per round trip (time.process_time over the run / ops:
the redis-server runs in its own process, pinned to another CPU when there are two) and
p50/p99 of each call's latency. Nothing is asserted: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rawgw.state.client import StateClient
from rawgw.state.limiter import LIMIT_SCRIPT, SharedLimiter
from rawgw.state.url import parse_state_url

Op = Callable[[int], Awaitable[object]]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(proc.pid, {1})
        os.sched_setaffinity(0, {0})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.01)
    proc.kill()
    sys.exit("redis-server did not answer PING")


async def run(op: Op, ops: int, concurrency: int) -> dict[str, float]:
    for i in range(min(2000, ops)):  # warm up (connections, script cache)
        await op(i)
    lat: list[float] = []
    per_worker = ops // concurrency

    async def worker(w: int) -> None:
        pc = time.perf_counter
        for i in range(per_worker):
            t0 = pc()
            await op(w * per_worker + i)
            lat.append(pc() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    lat.sort()
    n = len(lat)
    return {
        "cpu_us": cpu / n * 1e6,
        "p50_us": lat[n // 2] * 1e6,
        "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6,
        "ops_s": n / wall,
    }


async def main(args: argparse.Namespace) -> None:
    import hiredis
    import redis
    import redis.asyncio as redis_asyncio
    from redis.utils import HIREDIS_AVAILABLE

    tmp = tempfile.mkdtemp(prefix="rawgw-bench-redis-")
    proc, port = start_redis(tmp)
    try:
        ours = StateClient(parse_state_url(f"redis://127.0.0.1:{port}/0"), timeout_ms=5000)
        ours.start()
        assert await ours.wait_up(5)
        limiter = SharedLimiter(ours)
        theirs = redis_asyncio.Redis(host="127.0.0.1", port=port, protocol=2)
        sha = await theirs.script_load(LIMIT_SCRIPT)
        evargs = (1000000, 1000000, 0, 1, 0, "")

        async def ours_getset(i: int) -> object:
            if i & 1:
                return await ours.call("GET", "bench:k")
            return await ours.call("SET", "bench:k", b"v" * 64)

        async def theirs_getset(i: int) -> object:
            if i & 1:
                return await theirs.get("bench:k")
            return await theirs.set("bench:k", b"v" * 64)

        async def ours_evalsha(i: int) -> object:
            return await ours.call("EVALSHA", sha, 1, limiter.key(f"bench{i & 63}"), *evargs)

        async def theirs_evalsha(i: int) -> object:
            return await theirs.evalsha(sha, 1, limiter.key(f"bench{i & 63}"), *evargs)

        clients: list[tuple[str, Op, Op]] = [
            ("rawgw.state", ours_getset, ours_evalsha),
            (f"redis-py {redis.__version__} (hiredis={HIREDIS_AVAILABLE})", theirs_getset, theirs_evalsha),
        ]
        print(f"hiredis {hiredis.__version__}, uvloop {uvloop.__version__}, {args.ops} round trips per point")
        print(f"{'client':<36} {'workload':<10} {'callers':>7} {'CPU µs/op':>10} {'p50 µs':>8} {'p99 µs':>8} {'ops/s':>9}")
        for workload in ("GET/SET", "EVALSHA"):
            for concurrency in (1, args.concurrency):
                for name, getset, evalsha in clients:
                    op = getset if workload == "GET/SET" else evalsha
                    r = await run(op, args.ops, concurrency)
                    print(
                        f"{name:<36} {workload:<10} {concurrency:>7} {r['cpu_us']:>10.1f} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['ops_s']:>9.0f}"
                    )
        await ours.close()
        await theirs.aclose()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=20000, help="round trips per point (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers of the second point (default 64)")
    uvloop.run(main(parser.parse_args()))
