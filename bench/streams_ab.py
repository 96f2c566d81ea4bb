"""A/B two source trees under a burst of SSE streams, interleaved in one run.

    git worktree add /tmp/before <commit>
    python bench/streams_ab.py --before /tmp/before --after . [--streams 500] [--reps 3]

Each repeat opens ``--streams`` streams at once (the load client's default: 200
connecting at a time) through each gateway in turn, ``--events`` events at
``--interval-ms``; then the same through the mock alone (direct, the rig's floor).
Both gateways are pinned to CPU 0, the mock and the load client to CPU 1. Printed per
target, medians of the repeats: gateway CPU µs per event relayed, first-event p50/p99,
per-event delay p99, % coalesced, % byte-exact — the 500-stream figures of issue 15.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import BENCH, cpu_s, start, stop, write_config

FIELDS = ("us_per_event", "ttfe_p50_ms", "ttfe_p99_ms", "delay_p99_ms", "coalesced_pct", "exact_pct")


def burst(port: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "sse", "--port", str(port), "-s", str(args.streams), "--events", str(args.events), "--interval-ms", str(args.interval_ms)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)}),
    ).stdout
    return json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--upstream-host", default="127.0.0.1", help="the mock's name in base_url (localhost: each new connection resolves it)")
    ap.add_argument("--pool-idle-s", type=float, default=None, help="providers' pool_idle_s (0.5: every burst opens its upstream connections anew)")
    args = ap.parse_args()
    mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
    idle = f"pool_idle_s = {args.pool_idle_s}\n" if args.pool_idle_s is not None else ""
    cfg = write_config(Path("/tmp/rawgw-streams-ab.toml"), mport, provider_extra=idle, host=args.upstream_host)
    trees = {"before": args.before, "after": args.after}
    gws = {name: start([sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"], tree, 0) for name, tree in trees.items()}
    results: dict[str, list[dict]] = {name: [] for name in (*trees, "direct")}  # type: ignore[type-arg]
    try:
        for _ in range(args.reps):
            for name, (p, port) in gws.items():
                c0 = cpu_s(p.pid)
                r = burst(port, args)
                r["us_per_event"] = round((cpu_s(p.pid) - c0) / max(r["events"], 1) * 1e6, 2)
                results[name].append(r)
            c0 = cpu_s(mock.pid)
            r = burst(mport, args)
            r["us_per_event"] = round((cpu_s(mock.pid) - c0) / max(r["events"], 1) * 1e6, 2)
            results["direct"].append(r)
        print(
            f"{args.streams} streams x {args.events} events at {args.interval_ms} ms, upstream {args.upstream_host}, "
            f"pool_idle_s {args.pool_idle_s}, medians of {args.reps} (direct: the mock's CPU)"
        )
        print(f"{'target':8s}" + "".join(f"{f:>15s}" for f in FIELDS))
        for name, rs in results.items():
            med = [sorted(r[f] for r in rs)[len(rs) // 2] for f in FIELDS]
            print(f"{name:8s}" + "".join(f"{v:15.2f}" for v in med))
        for name, rs in results.items():
            print(name, "runs:", [tuple(r[f] for f in FIELDS) for r in rs])
    finally:
        stop([p for p, _ in gws.values()], mock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
