"""Time the gateway spends in the garbage collector, tuned (rawgw.gctune) vs CPython's defaults.

    python bench/gc_stats.py [--duration 4] [--streams 500]

Starts the mock and two gateways of this tree (``rawgw serve`` under a wrapper that
records every collection with ``gc.callbacks``; one of them with ``rawgw.gctune.enable``
turned into a no-op, i.e. CPython's defaults), pinned to CPU 0, and loads each in turn:
64-connection RPS for ``--duration`` seconds, then ``--streams`` SSE streams x 100
events. Prints collections per generation and GC milliseconds for each load, and GC µs
per request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import BENCH, start, stop, write_config

WRAPPER = r'''
import gc, signal, sys, time
stats = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
t0 = [0.0]
def cb(phase, info):
    if phase == "start":
        t0[0] = time.perf_counter()
    else:
        s = stats[info["generation"]]; s[0] += 1; s[1] += time.perf_counter() - t0[0]
gc.callbacks.append(cb)
def dump(*_):
    out = {g: [n, round(t * 1000, 2)] for g, (n, t) in stats.items()}
    with open(sys.argv[1], "a") as f:
        f.write(repr(out) + "\n")
    for s in stats.values():
        s[0] = 0; s[1] = 0.0
signal.signal(signal.SIGUSR1, dump)
import rawgw.cli, rawgw.gctune
if sys.argv[2] == "default":
    rawgw.gctune.enable = lambda: None
sys.exit(rawgw.cli.main(sys.argv[3:]))
'''


def load(mode: str, port: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, str(BENCH / "loadgen.py"), mode, "--port", str(port)]
    cmd += ["-c", "64", "-d", str(args.duration), "--warmup", "0"] if mode == "rps" else ["-s", str(args.streams), "--events", "100", "--interval-ms", "10"]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})).stdout
    return json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--streams", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rawgw-gc-"))
    (tmp / "wrap.py").write_text(WRAPPER)
    mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
    cfg = write_config(tmp / "gw.toml", mport)
    gws = {}
    for mode in ("default", "tuned"):
        out = tmp / f"{mode}.txt"
        gws[mode] = (*start([sys.executable, str(tmp / "wrap.py"), str(out), mode, "serve", "-c", str(cfg), "--log-level", "warning"], str(BENCH.parent), 0), out)
    try:
        for mode, (p, port, out) in gws.items():
            p.send_signal(signal.SIGUSR1)  # start-up's collections are not counted
            for what in ("rps", "sse"):
                r = load(what, port, args)
                before = len(out.read_text().splitlines()) if out.exists() else 0
                p.send_signal(signal.SIGUSR1)
                while not out.exists() or len(out.read_text().splitlines()) == before:
                    time.sleep(0.05)
                stats = eval(out.read_text().splitlines()[-1])  # our own repr
                ms = sum(t for _, t in stats.values())
                n = r["requests"] if what == "rps" else r["events"]
                unit = "request" if what == "rps" else "event"
                counts = " ".join(f"gen{g} {c}" for g, (c, _) in stats.items())
                print(f"{mode:8s} {what}: {n:7d} {unit}s  collections {counts}  GC {ms:7.1f} ms = {ms * 1000 / max(n, 1):.2f} µs/{unit}")
    finally:
        stop([p for p, _, _ in gws.values()], mock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
