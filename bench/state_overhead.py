"""Shared state on vs in-process (issue 12): CPU per request and latency p50/p99 of the
same gateway in three setups, same run, interleaved:

  in-process     no [state] url (the default)
  state, no-rt   [state] url set, a gateway key without a rate limit: the hot path makes
                 no round trip (key states are mirrored by pub/sub, counters batched)
  state, limit   [state] url set, a key with rate_limit_rpm: one EVALSHA per request

A real redis-server is started on a free loopback port (temporary dir, no persistence).
At 1 connection the latencies show what a request waits (no queueing); at 64 the gateway
is saturated and CPU per request is what matters. ``--callgrind`` counts instructions per
request of each setup instead (bench/callgrind.py's method: repeatable on a noisy machine).
Usage: python bench/state_overhead.py [--duration 4] [--repeat 3] [--connections 1,64] [--callgrind]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import BENCH, _pinned, cpu_s, start


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_redis(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)  # polling a starting server, not a synchronisation of results
    raise SystemExit("redis-server did not start")


def config(mport: int, state_url: str, limited: bool, timeout_ms: int = 50) -> str:
    limit = "rate_limit_rpm = 100000000\nrate_limit_burst = 100000000\n" if limited else ""
    state = f'[state]\nurl = "{state_url}"\ntimeout_ms = {timeout_ms}\n' if state_url else ""
    return f"""[server]
port = 0
[[keys]]
key = "bench-key"
name = "bench"
{limit}[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:{mport}/v1"
keys = ["sk-bench"]
max_connections = 1024
[logging]
access = false
errors = false
{state}"""


def load(port: int, conns: int, duration: float) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "rps", "--port", str(port), "-c", str(conns), "-d", str(duration), "--warmup", "0.5"],
        capture_output=True,
        text=True,
        preexec_fn=_pinned(1),
    ).stdout
    return json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])  # type: ignore[no-any-return]


def measure(gws: dict, redis_pid: int, conns: int, args: argparse.Namespace) -> None:  # type: ignore[type-arg]
    res: dict[str, list[dict[str, float]]] = {k: [] for k in gws}
    for _ in range(args.repeat):
        for name, (gw, port) in gws.items():
            c0, r0 = cpu_s(gw.pid), cpu_s(redis_pid)
            r = load(port, conns, args.duration)
            n = max(1, r["requests"])
            res[name].append(
                {
                    "cpu_us": (cpu_s(gw.pid) - c0) / n * 1e6,
                    "redis_us": (cpu_s(redis_pid) - r0) / n * 1e6,
                    "rps": r["rps"],
                    "p50": r["p50_ms"],
                    "p99": r["p99_ms"],
                    "errors": r.get("errors") or 0,
                }
            )
    base = None
    print(f"-- {conns} connection(s), {args.duration:g} s x {args.repeat}, medians")
    print(f"{'setup':14s} {'gw CPU µs/req':>14s} {'redis µs/req':>13s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}  +p50/+p99 vs in-process")
    for name, runs in res.items():
        med = {k: sorted(x[k] for x in runs)[len(runs) // 2] for k in runs[0]}
        if base is None:
            base = med
        extra = f"{med['p50'] - base['p50']:+.3f}/{med['p99'] - base['p99']:+.3f} ms"
        print(
            f"{name:14s} {med['cpu_us']:14.1f} {med['redis_us']:13.1f} {med['rps']:8.0f} {med['p50']:8.3f} {med['p99']:8.3f}  {extra}"
            + (f"  errors {med['errors']:.0f}" if med["errors"] else "")
        )


def count_instructions(setups: dict[str, tuple[str, bool]], mport: int, tmp: str) -> int:
    """Instructions per request of each setup under callgrind (start-up cancelled out)."""
    from pathlib import Path

    from callgrind import gateway_instructions

    n1, n2 = 200, 1200
    base = None
    for name, (state_url, limited) in setups.items():
        cfg = Path(tmp) / f"cg-{name.replace(', ', '-')}.toml"
        # a generous timeout: under valgrind the gateway is ~50x slower to read a reply
        cfg.write_text(config(mport, state_url, limited, timeout_ms=5000))
        g1 = gateway_instructions(str(BENCH.parent), cfg, n1, 4, Path(tmp), name + "1")
        g2 = gateway_instructions(str(BENCH.parent), cfg, n2, 4, Path(tmp), name + "2")
        per = (g2 - g1) / (n2 - n1)
        base = base or per
        print(f"{name:14s} {per:12,.0f} instructions/request  {per / base - 1:+.1%} vs in-process", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", default="1,64", help="comma-separated concurrency points")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under valgrind instead of timings")
    args = ap.parse_args()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("redis-server not on PATH (apt-get install redis-server)")
        return 2
    tmp = tempfile.mkdtemp(prefix="rawgw-bench-state-")
    rport = free_port()
    redis = subprocess.Popen(
        [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        preexec_fn=_pinned(1),
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        wait_redis(rport)
        mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
        procs.append(mock)
        url = f"redis://127.0.0.1:{rport}/0"
        setups = {"in-process": ("", False), "state, no-rt": (url, False), "state, limit": (url, True)}
        if args.callgrind:
            return count_instructions(setups, mport, tmp)
        gws = {}
        for name, (state_url, limited) in setups.items():
            path = os.path.join(tmp, f"{name.replace(', ', '-')}.toml")
            with open(path, "w") as f:
                f.write(config(mport, state_url, limited))
            gw, port = start([sys.executable, "-m", "rawgw", "serve", "-c", path, "--log-level", "warning"], str(BENCH.parent), 0)
            procs.append(gw)
            gws[name] = (gw, port)
        time.sleep(0.5)  # let the state clients connect before measuring (not a result sync)
        for conns in [int(c) for c in args.connections.split(",")]:
            measure(gws, redis.pid, conns, args)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.terminate()
        redis.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
