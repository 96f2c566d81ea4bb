"""A/B two rawgw source trees in one run: CPU µs per proxied request and req/s.

    git worktree add /tmp/before <commit>
    python bench/ab.py --before /tmp/before --after . [--reps 3] [--duration 5] [--log]

Both gateways run at once, each pinned to CPU 0 (the mock and the load client on
CPU 1); the measurements are interleaved (before, after, before, ...) so machine
noise hits both alike; medians are printed. ``--profile`` adds py-spy's top self
frames of each under the same load (py-spy must be installed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def _pinned(cpu: int):  # type: ignore[no-untyped-def]
    return lambda: os.sched_setaffinity(0, {cpu % os.cpu_count()})  # type: ignore[operator]


def start(cmd: list[str], cwd: str, cpu: int) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_pinned(cpu))
    assert p.stdout is not None
    line = p.stdout.readline()
    return p, int(re.search(r":(\d+)", line.split("http://")[1]).group(1))  # type: ignore[union-attr]


def write_config(path: Path, mport: int, log_dir: str | None = None, provider_extra: str = "", host: str = "127.0.0.1") -> Path:
    """The bench gateway's config: key ``bench-key``, one provider ``mock`` on the mock
    ``host``:``mport``; logs off unless ``log_dir`` is given."""
    logging = f'[logging]\ndir = "{log_dir}"\naccess = true\nerrors = true\n' if log_dir else "[logging]\naccess = false\nerrors = false\n"
    path.write_text(
        f'[server]\nport = 0\n[[keys]]\nkey = "bench-key"\nname = "bench"\n[providers.mock]\ntype = "openai"\n'
        f'base_url = "http://{host}:{mport}/v1"\nkeys = ["sk-bench-upstream"]\nmax_connections = 4096\n{provider_extra}{logging}'
    )
    return path


def stop(procs: list[subprocess.Popen[str]], mock: subprocess.Popen[str]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    mock.terminate()


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, conns: int, duration: float) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "rps", "--port", str(port), "-c", str(conns), "-d", str(duration), "--warmup", "0"],
        capture_output=True,
        text=True,
        preexec_fn=_pinned(1),
    ).stdout
    return json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])  # type: ignore[no-any-return]


def top_frames(pid: int, seconds: float) -> list[tuple[str, float]]:
    path = f"/tmp/rawgw-ab-{pid}.txt"
    subprocess.run(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw", "-o", path, "--nonblocking"], capture_output=True)
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        counts[re.sub(r" \((.*?)/([^/]+\.py):\d+\)", r" (\2)", stack.split(";")[-1])] += int(n)
    return [(fn, round(100 * n / max(total, 1), 1)) for fn, n in counts.most_common(12)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--log", action="store_true", help="access and error logs on (to a temporary directory)")
    args = ap.parse_args()
    mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
    cfg = write_config(Path("/tmp/rawgw-ab.toml"), mport, tempfile.mkdtemp(prefix="rawgw-ab-") if args.log else None)
    trees = {"before": args.before, "after": args.after}
    gws = {name: start([sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"], tree, 0) for name, tree in trees.items()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    try:
        for _ in range(args.reps):
            for name, (p, port) in gws.items():
                c0 = cpu_s(p.pid)
                r = load(port, args.connections, args.duration)
                results[name].append((round((cpu_s(p.pid) - c0) / max(r["requests"], 1) * 1e6, 1), r["rps"]))
        for name in trees:
            us = sorted(x[0] for x in results[name])
            rps = sorted(x[1] for x in results[name])
            print(f"{name:7s} CPU µs/request median {us[len(us) // 2]:7.1f}   req/s median {rps[len(rps) // 2]:9.0f}   runs {results[name]}")
        if args.profile:
            for name, (p, port) in gws.items():
                loader = subprocess.Popen(
                    [sys.executable, str(BENCH / "loadgen.py"), "rps", "--port", str(port), "-c", str(args.connections), "-d", "7"],
                    stdout=subprocess.DEVNULL,
                    preexec_fn=_pinned(1),
                )
                time.sleep(1)
                print(f"{name}: top self frames at {args.connections} connections")
                for fn, pct in top_frames(p.pid, 5):
                    print(f"  {pct:5.1f}%  {fn}")
                loader.wait()
    finally:
        stop([p for p, _ in gws.values()], mock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
