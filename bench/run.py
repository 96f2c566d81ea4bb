"""rawgw bench: one run, one machine, the same workload against direct, rawgw and peers.

    python bench/run.py                 # full run (10 s per RPS point, peers when installed, 3 repeats)
    python bench/run.py --quick         # a few seconds, no peers: numbers produced + SSE byte-exact
    python bench/run.py --duration 5 --repeat 1 --only rps,sse --no-peers

Targets: ``direct`` (the load client talks to the mock upstream itself: the floor of the
rig), ``rawgw`` pinned to one CPU (CPU 0; mock and load client on the others when the
machine has ≥ 2 CPUs), and the peers when installed: ``nginx`` (plain reverse proxy,
keepalive upstream) and ``fastapi`` (FastAPI + uvicorn + httpx pass-through,
bench/peers/fastapi_proxy.py), each pinned like rawgw. Sections (``--only``):

  floor    the h11 floor (bench/h11_floor.py) on the gateway's CPU
  rps      requests/s at 1, 64, 256 connections; p50/p99; gateway CPU µs per request
  access   rawgw with logging.access = true vs false at 64 connections (ratio)
  sse      10 and 500 concurrent streams × 100 events at 10 ms: time to first event,
           per-event delay, coalescing, byte-exactness
  mem      RSS idle and with 1,000 / 5,000 open slow streams (fresh process each)
  scaling  rawgw --workers 1..N requests/s

Prints a table, writes JSON to bench/results/<UTC date-time>.json. Exit status: 1 when
rawgw answered no request successfully or an SSE run through it was not 100 % byte-exact
(never on timings), 2 when the rig itself could not start.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

PY = sys.executable
BENCH = bl.BENCH_DIR
SECTIONS = ("floor", "rps", "access", "sse", "mem", "scaling")
RUNNING: list[bl.Proc] = []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cleanup() -> None:
    while RUNNING:
        p = RUNNING.pop()
        p.stop(3)


def start(name: str, cmd: list[str], cpus: list[int] | None, tmp: Path, stdin: bool = False, cwd: Path | None = None) -> bl.Proc:
    p = bl.Proc(name, cmd, cpus=cpus, env=bl.child_env(), cwd=cwd or bl.REPO_DIR, stderr_path=tmp / f"{name}.{len(RUNNING)}.stderr", stdin=stdin)
    RUNNING.append(p)
    return p


def stop(p: bl.Proc | None) -> None:
    if p is None:
        return
    p.stop(5)
    if p in RUNNING:
        RUNNING.remove(p)


class Target:
    """Something the load client can talk to: direct (the mock), rawgw, or a peer."""

    def __init__(self, name: str, port: int, proc: bl.Proc | None, note: str = "") -> None:
        self.name = name
        self.port = port
        self.proc = proc
        self.note = note

    def pids(self) -> list[int]:
        return bl.tree(self.proc.pid) if self.proc is not None else []


# ---- starting things ------------------------------------------------------------------


def start_mock(tmp: Path, cpus: list[int] | None) -> Target:
    p = start("mock", [PY, str(BENCH / "mock_upstream.py"), "--port", "0"], cpus, tmp)
    m = p.wait_for(r"listening on http://[^:]+:(\d+)", 15)
    if m is None:
        raise SystemExit(f"bench: the mock upstream did not start: {p.stderr_tail()}")
    return Target("direct", int(m.group(1)), p)


def rawgw_config(tmp: Path, name: str, upstream_port: int, access: bool = False, max_upstream: int = 1024) -> Path:
    logs = tmp / f"logs-{name}"
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[server]
host = "127.0.0.1"
port = 0
max_connections = {max(10000, max_upstream + 100)}

[[keys]]
key = "bench-key"
name = "bench"

[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
keys = ["sk-bench-upstream"]
max_connections = {max_upstream}

[logging]
dir = "{logs}"
access = {"true" if access else "false"}
errors = false

[metrics]
enabled = true
"""
    )
    path.chmod(0o600)
    return path


def start_rawgw(tmp: Path, name: str, config: Path, cpus: list[int] | None, workers: int | None = None) -> tuple[Target | None, str]:
    cmd = [PY, "-m", "rawgw", "serve", "-c", str(config), "--port", "0", "--log-level", "warning"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    p = start(name, cmd, cpus, tmp)
    m = p.wait_for(r"rawgw listening on http://[^:]+:(\d+)", 20)
    if m is None:
        reason = p.stderr_tail(3) or f"exit status {p.p.poll()}"
        stop(p)
        return None, reason
    port = int(m.group(1))
    if not bl.wait_port(port, 5):
        stop(p)
        return None, "announced a port that does not accept connections"
    return Target(name, port, p), ""


def start_nginx(tmp: Path, upstream_port: int, cpus: list[int] | None) -> tuple[Target | None, str]:
    exe = shutil.which("nginx") or next((c for c in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(c)), None)
    if exe is None:
        return None, "nginx not installed (bash bench/install_peers.sh, or apt-get install nginx-light)"
    port = bl.free_port()
    d = tmp / f"nginx-{port}"
    d.mkdir(exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    nofile = bl.raise_nofile()
    conf = d / "nginx.conf"
    conf.write_text(
        f"""{user}
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max(1024, nofile - 64)}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /v1/ {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer sk-bench-upstream";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""
    )
    p = start("nginx", [exe, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], cpus, tmp)
    if not bl.wait_port(port, 10):
        reason = p.stderr_tail(3) or "did not listen"
        stop(p)
        return None, f"nginx failed to start: {reason}"
    return Target("nginx", port, p, note=_version([exe, "-v"])), ""


def start_fastapi(tmp: Path, upstream_port: int, cpus: list[int] | None) -> tuple[Target | None, str]:
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"{', '.join(missing)} not installed (bash bench/install_peers.sh)"
    p = start("fastapi", [PY, str(BENCH / "peers" / "fastapi_proxy.py"), "--upstream", f"http://127.0.0.1:{upstream_port}/v1"], cpus, tmp)
    m = p.wait_for(r"listening on http://[^:]+:(\d+)", 30)
    if m is None or not bl.wait_port(int(m.group(1)), 10):
        reason = p.stderr_tail(3) or "did not start"
        stop(p)
        return None, f"fastapi proxy failed to start: {reason}"
    import fastapi
    import httpx
    import uvicorn

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return Target("fastapi", int(m.group(1)), p, note=f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__} ({http}), httpx {httpx.__version__}"), ""


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stderr or out.stdout).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---- measuring ----------------------------------------------------------------------------


def run_loadgen(tmp: Path, args: list[str], cpus: list[int] | None, timeout: float, target: Target | None = None) -> dict:
    """Run one loadgen; with ``--sync`` sample the target's CPU over the measured window."""
    p = start("loadgen", [PY, str(BENCH / "loadgen.py"), *args], cpus, tmp)
    deadline = time.monotonic() + timeout
    cpu: dict = {}
    try:
        if "--sync" in args and target is not None and target.proc is not None:
            if p.wait_for(r"^START$", deadline - time.monotonic()) is None:
                return {"error": f"load client did not start: {p.stderr_tail()}"}
            pids = target.pids()
            (u0, k0), (s0, w0), t0 = bl.cpu_split(pids), bl.sched_times(pids), time.monotonic()
            if p.wait_for(r"^END$", deadline - time.monotonic()) is None:
                return {"error": f"load client did not finish: {p.stderr_tail()}"}
            pids = target.pids()
            (u1, k1), (s1, w1), t1 = bl.cpu_split(pids), bl.sched_times(pids), time.monotonic()
            cpu = {"user_s": u1 - u0, "sys_s": k1 - k0, "cpu_sched_s": s1 - s0, "wait_s": w1 - w0, "window_s": t1 - t0}
        elif target is not None and target.proc is not None:
            pids = target.pids()
            (u0, k0), (s0, w0), t0 = bl.cpu_split(pids), bl.sched_times(pids), time.monotonic()
        m = p.wait_for(r"^RESULT (.*)$", deadline - time.monotonic())
        if m is None:
            return {"error": f"load client gave no result within {timeout:.0f} s: {p.stderr_tail()}"}
        res = json.loads(m.group(1))
        if "--sync" not in args and target is not None and target.proc is not None:
            pids = target.pids()
            u1, k1 = bl.cpu_split(pids)
            s1, w1 = bl.sched_times(pids)
            cpu = {"user_s": u1 - u0, "sys_s": k1 - k0, "cpu_sched_s": s1 - s0, "wait_s": w1 - w0, "window_s": time.monotonic() - t0}
        if cpu:
            n = res.get("requests") or res.get("events") or 0
            cpu["cpu_s"] = cpu["user_s"] + cpu["sys_s"]
            res["cpu_s"] = bl.rnd(cpu["cpu_s"], 3)
            res["cpu_sys_pct"] = bl.rnd(100 * cpu["sys_s"] / cpu["cpu_s"], 1) if cpu["cpu_s"] > 0 else None
            res["cpu_util_pct"] = bl.rnd(100 * cpu["cpu_sched_s"] / cpu["window_s"], 1) if cpu["window_s"] > 0 else None
            # Runnable but not running (another process had the CPU): noise of a shared machine.
            res["runq_wait_pct"] = bl.rnd(100 * cpu["wait_s"] / cpu["window_s"], 1) if cpu["window_s"] > 0 else None
            if res.get("mode") == "rps" and n:
                res["cpu_us_per_req"] = bl.rnd(cpu["cpu_s"] / n * 1e6, 1)
                res["cpu_us_per_req_sched"] = bl.rnd(cpu["cpu_sched_s"] / n * 1e6, 1)
            elif res.get("mode") == "sse" and n:
                res["cpu_us_per_event"] = bl.rnd(cpu["cpu_sched_s"] / n * 1e6, 1)
        return res
    finally:
        stop(p)


WRK_LUA = """wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
"""


def _wrk_ms(text: str) -> float | None:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk_point(tmp: Path, t: Target, conns: int, duration: float, cpus: list[int] | None) -> dict:
    """The same RPS point with wrk (C load client) instead of loadgen.py; no warm-up window."""
    script = tmp / "post.lua"
    script.write_text(WRK_LUA)
    threads = max(1, min(conns, len(cpus or [0])))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s", "--latency", "-s", str(script), f"http://127.0.0.1:{t.port}/v1/chat/completions"]
    pids = t.pids()
    (u0, k0), (s0, w0), t0 = bl.cpu_split(pids), bl.sched_times(pids), time.monotonic()
    p = start("wrk", cmd, cpus, tmp)
    lines = []
    deadline = time.monotonic() + duration + 60
    while time.monotonic() < deadline:
        line = p.readline(deadline - time.monotonic())
        if line is None:
            break
        lines.append(line)
    stop(p)
    pids = t.pids()
    (u1, k1), (s1, w1), t1 = bl.cpu_split(pids), bl.sched_times(pids), time.monotonic()
    text = "\n".join(lines)
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if not m:
        return {"error": f"wrk gave no result: {text[-200:] or p.stderr_tail()}"}
    n = int(m.group(1))
    secs = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    pct = {q: _wrk_ms(v) for q, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    res = {"mode": "rps", "client": "wrk", "connections": conns, "requests": n, "ok": n - (int(non2xx.group(1)) if non2xx else 0),
           "rps": round(n / secs, 1) if secs else None, "p50_ms": pct.get("50"), "p90_ms": pct.get("90"), "p99_ms": pct.get("99"), "errors": errors}
    if t.proc is not None and n:
        cpu_s = (u1 - u0) + (k1 - k0)
        window = t1 - t0
        res.update({
            "cpu_s": round(cpu_s, 3),
            "cpu_us_per_req": round(cpu_s / n * 1e6, 1),
            "cpu_us_per_req_sched": round((s1 - s0) / n * 1e6, 1),
            "cpu_sys_pct": round(100 * (k1 - k0) / cpu_s, 1) if cpu_s > 0 else None,
            "cpu_util_pct": round(100 * (s1 - s0) / window, 1),
            "runq_wait_pct": round(100 * (w1 - w0) / window, 1),
        })
    return res


CLIENT = {"name": "loadgen"}


def overhead_metric(port: int) -> tuple[float, int] | None:
    """(sum s, count) of rawgw_overhead_seconds from the gateway's /metrics, or None."""
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer bench-key"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return None
    total = count = None
    for line in text.splitlines():
        if line.startswith("rawgw_overhead_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("rawgw_overhead_seconds_count"):
            count = int(float(line.split()[-1]))
    return None if total is None or count is None else (total, count)


def rps_point(tmp: Path, t: Target, conns: int, duration: float, warmup: float, cpus: list[int] | None) -> dict:
    before = overhead_metric(t.port) if t.name.startswith("rawgw") else None
    if CLIENT["name"] == "wrk":
        res = wrk_point(tmp, t, conns, duration, cpus)
    else:
        args = ["rps", "--port", str(t.port), "-c", str(conns), "-d", str(duration), "--warmup", str(warmup), "--sync"]
        res = run_loadgen(tmp, args, cpus, duration + warmup + 60, t)
    after = overhead_metric(t.port) if before is not None else None
    if before is not None and after is not None and after[1] > before[1]:
        # What the gateway says it spent (Server-Timing gw / rawgw_overhead_seconds), mean
        # over this point (warm-up included): to compare with the measured +p50 and CPU.
        res["self_reported_overhead_us"] = round((after[0] - before[0]) / (after[1] - before[1]) * 1e6, 1)
    return res


def sse_point(tmp: Path, t: Target, streams: int, events: int, interval_ms: float, cpus: list[int] | None) -> dict:
    args = ["sse", "--port", str(t.port), "-s", str(streams), "--events", str(events), "--interval-ms", str(interval_ms), "--timeout", "60"]
    return run_loadgen(tmp, args, cpus, events * interval_ms / 1000 + 120, t)


def med_runs(runs: list[dict], keys: tuple[str, ...]) -> dict:
    """Median of each numeric key over the repeats (errors summed), plus the runs."""
    good = [r for r in runs if "error" not in r]
    out: dict = {"runs": len(runs)}
    if not good:
        out["error"] = runs[0].get("error") if runs else "no run"
        return out
    for k in keys:
        vals = [r.get(k) for r in good if isinstance(r.get(k), (int, float))]
        out[k] = bl.median(vals) if vals else None
    out["errors"] = sum(r.get("errors", 0) for r in good)
    samples = [s for r in good for s in r.get("error_samples", [])]
    if samples:
        out["error_samples"] = samples[:3]
    if len(good) > 1:
        out["all"] = [{k: r.get(k) for k in keys} for r in good]
    return out


RPS_KEYS = ("requests", "ok", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_us_per_req", "cpu_us_per_req_sched", "cpu_sys_pct", "cpu_util_pct", "runq_wait_pct", "self_reported_overhead_us")
SSE_KEYS = (
    "exact", "exact_pct", "complete", "events", "events_expected", "ttfe_p50_ms", "ttfe_p99_ms", "delay_p50_ms",
    "delay_p99_ms", "delay_max_ms", "coalesced_pct", "cpu_us_per_event", "cpu_sys_pct", "cpu_util_pct", "runq_wait_pct",
)


def mem_point(tmp: Path, name: str, make, streams: int, rig: list[int] | None, warm_port_cb=None) -> dict:
    """Fresh target; warm it; RSS idle; open ``streams`` slow streams; RSS loaded; close."""
    t, reason = make()
    if t is None:
        return {"error": reason}
    try:
        run_loadgen(tmp, ["rps", "--port", str(t.port), "-c", "4", "-d", "0.3", "--warmup", "0"], rig, 30)
        run_loadgen(tmp, ["sse", "--port", str(t.port), "-s", "4", "--events", "5", "--interval-ms", "2"], rig, 30)
        time.sleep(0.5)
        pids = t.pids()
        idle = bl.rss_kib(pids)
        fds_idle = bl.fd_count(pids)
        hold = start("hold", [PY, str(BENCH / "loadgen.py"), "hold", "--port", str(t.port), "-s", str(streams), "--timeout", "150"], rig, tmp, stdin=True)
        try:
            m = hold.wait_for(r"^READY (.*)$", 180)
            if m is None:
                return {"error": f"streams did not open: {hold.stderr_tail()}", "idle_kib": idle}
            ready = json.loads(m.group(1))
            time.sleep(1.0)
            pids = t.pids()
            loaded = bl.rss_kib(pids)
            fds = bl.fd_count(pids)
            hold.send("CLOSE")
            hold.wait_for(r"^RESULT ", 30)
        finally:
            stop(hold)
        up = ready.get("up", 0)
        return {
            "streams": streams,
            "up": up,
            "failed": ready.get("failed"),
            "open_s": ready.get("open_s"),
            "idle_kib": idle,
            "loaded_kib": loaded,
            "fds_idle": fds_idle,
            "fds_loaded": fds,
            "bytes_per_stream": round((loaded - idle) * 1024 / up) if up else None,
        }
    finally:
        stop(t.proc)


def top_frames(raw: str, n: int = 15) -> dict:
    """Self and inclusive shares of functions from py-spy's raw (collapsed) output."""
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        # "func (path/file.py:123)" -> "func (path/file.py)": one row per function.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        selfc[frames[-1]] = selfc.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    if not total:
        return {"samples": 0}

    def top(d: dict[str, int]) -> list[list]:
        return [[f, round(100 * c / total, 1)] for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "self_pct": top(selfc), "inclusive_pct": top(incl)}


def profile_point(tmp: Path, t: Target, kind: str, seconds: float, rig: list[int] | None) -> dict:
    """py-spy record of the gateway under one load, outside the measured points."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    if kind == "rps":
        args = ["rps", "--port", str(t.port), "-c", "64", "-d", str(seconds + 2), "--warmup", "0"]
    else:
        args = ["sse", "--port", str(t.port), "-s", "500", "--events", str(int((seconds + 2) * 100)), "--interval-ms", "10"]
    lg = start("loadgen", [PY, str(BENCH / "loadgen.py"), *args], rig, tmp)
    try:
        time.sleep(1.0)
        out = tmp / f"profile-{kind}.txt"
        cmd = [exe, "record", "-p", str(t.proc.pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw", "-o", str(out), "--nonblocking"]  # type: ignore[union-attr]
        pin = (lambda: os.sched_setaffinity(0, set(rig))) if rig else None
        try:
            subprocess.run(cmd, capture_output=True, timeout=seconds + 30, preexec_fn=pin)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"py-spy failed: {exc}"}
        lg.wait_for(r"^RESULT ", seconds + 60)
        try:
            return {"load": " ".join(args[:1] + args[3:]), **top_frames(out.read_text())}
        except OSError:
            return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    finally:
        stop(lg)


# ---- report -----------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b in (None, 0):
        return None
    return a / b  # type: ignore[operator]


def evaluate(res: dict) -> list[dict]:
    """The issue's targets table, with what this run measured."""
    rows: list[dict] = []
    rps = res.get("rps", {})
    floor = (res.get("floor") or {}).get("us_per_request")

    def g(target: str, c: int, key: str):
        return ((rps.get(target) or {}).get(str(c)) or {}).get(key)

    cpu = g("rawgw", 64, "cpu_us_per_req")
    r = ratio(cpu, floor)
    rows.append({"target": "CPU per plain proxied request ≤ 2× the h11 floor", "measured": None if r is None else f"{cpu:.0f} µs = {r:.2f}× floor ({floor:.0f} µs)", "met": None if r is None else r <= 2})
    fa = g("fastapi", 64, "cpu_us_per_req")
    r = ratio(fa, cpu)
    rows.append({"target": "≥ 25× less CPU per request than FastAPI+httpx", "measured": None if r is None else f"{r:.1f}× less ({fa:.0f} vs {cpu:.0f} µs)", "met": None if r is None else r >= 25})
    r = ratio(g("rawgw", 64, "rps"), g("direct", 64, "rps"))
    rows.append({"target": "throughput at 64 connections ≥ 25% of direct", "measured": None if r is None else f"{100 * r:.1f}% ({g('rawgw', 64, 'rps'):.0f} / {g('direct', 64, 'rps'):.0f} rps)", "met": None if r is None else r >= 0.25})
    a, d = g("rawgw", 1, "p50_ms"), g("direct", 1, "p50_ms")
    added = None if a is None or d is None else a - d
    rows.append({"target": "added p50 latency at 1 connection ≤ 0.5 ms", "measured": None if added is None else f"+{added:.3f} ms ({a:.3f} vs {d:.3f})", "met": None if added is None else added <= 0.5})
    sse = res.get("sse", {})

    def s(target: str, n: int, key: str):
        return ((sse.get(target) or {}).get(str(n)) or {}).get(key)

    a, d = s("rawgw", 10, "delay_p99_ms"), s("direct", 10, "delay_p99_ms")
    added = None if a is None or d is None else a - d
    rows.append({"target": "SSE added per-event delay p99 ≤ 1 ms at 10 streams", "measured": None if added is None else f"+{added:.3f} ms ({a:.3f} vs {d:.3f})", "met": None if added is None else added <= 1})
    big = max((int(k) for k in (sse.get("rawgw") or {}) if k.isdigit()), default=None)
    if big is not None and big > 10:
        a, d = s("rawgw", big, "delay_p99_ms"), s("direct", big, "delay_p99_ms")
        r = ratio(a, d)
        rows.append({"target": f"SSE per-event delay p99 at {big} streams within 2× of direct", "measured": None if r is None else f"{r:.2f}× ({a:.1f} vs {d:.1f} ms)", "met": None if r is None else r <= 2})
    c = s("rawgw", 10, "coalesced_pct")
    rows.append({"target": "SSE 0% coalesced at 10 streams", "measured": None if c is None else f"{c:.2f}%", "met": None if c is None else c == 0})
    ex = [(n, s("rawgw", int(n), "exact_pct")) for n in (sse.get("rawgw") or {}) if n.isdigit()]
    if ex:
        rows.append({"target": "SSE 100% byte-exact", "measured": ", ".join(f"{v}% at {n}" for n, v in ex), "met": all(v == 100 for _, v in ex)})
    mem = (res.get("mem") or {}).get("rawgw") or {}
    per = [(n, m.get("bytes_per_stream")) for n, m in mem.items() if isinstance(m, dict) and m.get("bytes_per_stream") is not None]
    if per:
        rows.append({"target": "≤ 64 KiB RSS per open stream", "measured": ", ".join(f"{b / 1024:.1f} KiB at {n}" for n, b in per), "met": all(b <= 64 * 1024 for _, b in per)})
    rows.append({"target": "RSS flat (< 5% growth) over a 10-minute mixed soak", "measured": "not part of run.py: python bench/soak.py --duration 600", "met": None})
    return rows


def print_report(res: dict) -> None:
    out = []
    meta = res["meta"]
    out.append(f"rawgw bench — {meta['started']} — {meta['machine']['nproc']} CPUs ({meta['machine']['cpu_model']}), python {meta['machine']['python']}")
    out.append(f"command: {meta['command']}   pinning: {meta['pinning']}")
    if res.get("skipped"):
        for k, v in res["skipped"].items():
            out.append(f"skipped {k}: {v}")
    fl = res.get("floor")
    if fl:
        out.append(f"\nh11 floor: {fl.get('us_per_request')} µs CPU per proxied request (wall {fl.get('wall_us_per_request')} µs); SSE event relay {fl.get('sse_event_us')} µs")
    rps = res.get("rps") or {}
    if rps:
        out.append("\nRPS (small POST, 600 B JSON answer)")
        out.append(f"{'target':10s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'+p50 ms':>8s} {'CPU µs/req':>10s} {'sys %':>6s} {'CPU %':>6s} {'wait %':>6s} {'errors':>6s}")
        for name, points in rps.items():
            for c, r in points.items():
                if "error" in r:
                    out.append(f"{name:10s} {c:>5s} error: {r['error']}")
                    continue
                d = ((rps.get("direct") or {}).get(c) or {}).get("p50_ms")
                added = None if name == "direct" or d is None or r.get("p50_ms") is None else r["p50_ms"] - d
                out.append(
                    f"{name:10s} {c:>5s} {bl.fmt(r.get('rps')):>9s} {bl.fmt(r.get('p50_ms'), 3):>8s} {bl.fmt(r.get('p99_ms'), 3):>8s} "
                    f"{bl.fmt(added, 3):>8s} {bl.fmt(r.get('cpu_us_per_req'), 0):>10s} {bl.fmt(r.get('cpu_sys_pct'), 0):>6s} {bl.fmt(r.get('cpu_util_pct'), 0):>6s} {bl.fmt(r.get('runq_wait_pct'), 0):>6s} {r.get('errors', 0):>6}"
                )
    rg = rps.get("rawgw") or {}
    so = [(c, r.get("self_reported_overhead_us")) for c, r in rg.items() if r.get("self_reported_overhead_us") is not None]
    if so:
        out.append("rawgw self-reported overhead (rawgw_overhead_seconds mean): " + ", ".join(f"{v:.0f} µs at {c}" for c, v in so))
    acc = res.get("access")
    if acc and "error" not in acc:
        out.append(f"\naccess log on vs off at 64 connections: req/s ×{bl.fmt(acc.get('rps_ratio'), 3)}, CPU/request ×{bl.fmt(acc.get('cpu_ratio'), 3)}")
    elif acc:
        out.append(f"\naccess log: {acc.get('error')}")
    sse = res.get("sse") or {}
    if sse:
        out.append("\nSSE (events at the given interval; delay = receive − mock send stamp)")
        out.append(f"{'target':10s} {'streams':>7s} {'exact %':>7s} {'TTFE p50':>9s} {'+TTFE':>7s} {'delay p50':>9s} {'p99':>8s} {'+p99':>8s} {'coalesced':>9s} {'CPU %':>6s} {'wait %':>6s} {'µs/event':>8s}")
        for name, points in sse.items():
            for n, r in points.items():
                if "error" in r:
                    out.append(f"{name:10s} {n:>7s} error: {r['error']}")
                    continue
                dr = (sse.get("direct") or {}).get(n) or {}
                at = None if name == "direct" or r.get("ttfe_p50_ms") is None or dr.get("ttfe_p50_ms") is None else r["ttfe_p50_ms"] - dr["ttfe_p50_ms"]
                ap = None if name == "direct" or r.get("delay_p99_ms") is None or dr.get("delay_p99_ms") is None else r["delay_p99_ms"] - dr["delay_p99_ms"]
                out.append(
                    f"{name:10s} {n:>7s} {bl.fmt(r.get('exact_pct'), 1):>7s} {bl.fmt(r.get('ttfe_p50_ms'), 2):>9s} {bl.fmt(at, 2):>7s} "
                    f"{bl.fmt(r.get('delay_p50_ms'), 2):>9s} {bl.fmt(r.get('delay_p99_ms'), 2):>8s} {bl.fmt(ap, 2):>8s} "
                    f"{bl.fmt(r.get('coalesced_pct'), 2):>8s}% {bl.fmt(r.get('cpu_util_pct'), 0):>6s} {bl.fmt(r.get('runq_wait_pct'), 0):>6s} "
                    f"{bl.fmt(r.get('cpu_us_per_event'), 1):>8s}"
                )
    mem = res.get("mem") or {}
    if mem:
        out.append("\nMemory (RSS, open slow streams: one event per second)")
        out.append(f"{'target':10s} {'streams':>7s} {'up':>6s} {'idle MiB':>9s} {'loaded MiB':>10s} {'KiB/stream':>10s} {'fds':>6s}")
        for name, points in mem.items():
            for n, r in points.items():
                if "error" in r:
                    out.append(f"{name:10s} {n:>7s} error: {r['error']}")
                    continue
                out.append(
                    f"{name:10s} {n:>7s} {r.get('up', 0):>6} {r['idle_kib'] / 1024:>9.1f} {r['loaded_kib'] / 1024:>10.1f} "
                    f"{bl.fmt((r.get('bytes_per_stream') or 0) / 1024, 1):>10s} {r.get('fds_loaded', 0):>6}"
                )
    sc = res.get("scaling")
    if sc:
        out.append("\nScaling (rawgw --workers N, 64 connections)")
        for k, v in sc.items():
            if isinstance(v, dict) and "rps" in v:
                out.append(f"  workers {k}: {bl.fmt(v.get('rps'))} req/s, CPU {bl.fmt(v.get('cpu_us_per_req'))} µs/req")
            else:
                out.append(f"  workers {k}: {v if not isinstance(v, dict) else v.get('error')}")
    prof = res.get("profile") or {}
    for kind, pr in prof.items():
        if pr.get("self_pct"):
            out.append(f"\nProfile of rawgw under {pr.get('load')} (py-spy, {pr['samples']} samples): top self")
            for f, pct in pr["self_pct"][:12]:
                out.append(f"  {pct:5.1f}%  {f}")
        else:
            out.append(f"\nProfile {kind}: {pr.get('skipped') or pr.get('error')}")
    tg = res.get("targets") or []
    if tg:
        out.append("\nTargets (issue 6, section 2)")
        for row in tg:
            met = {True: "met", False: "NOT met", None: "-"}[row["met"]]
            out.append(f"  {met:8s} {row['target']}: {row['measured'] or 'not measured'}")
    print("\n".join(out), flush=True)


# ---- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="rawgw bench: direct vs rawgw vs peers, in one run", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few seconds, no peers, no scaling: checks numbers are produced and SSE is byte-exact")
    p.add_argument("--duration", type=float, help="seconds per RPS point (default 10; quick 1)")
    p.add_argument("--repeat", type=int, help="repeat RPS and SSE points, report medians (default 3; quick 1)")
    p.add_argument("--no-peers", action="store_true", help="skip nginx and FastAPI even when installed")
    p.add_argument("--only", help=f"comma list of sections: {','.join(SECTIONS)}")
    p.add_argument("--connections", help="RPS connection counts (default 1,64,256; quick 1,64)")
    p.add_argument("--streams", help="SSE concurrent streams (default 10,500; quick 10)")
    p.add_argument("--events", type=int, help="SSE events per stream (default 100; quick 20)")
    p.add_argument("--interval-ms", type=float, default=10.0, help="SSE event interval (default 10)")
    p.add_argument("--mem-streams", help="open slow streams for memory (default 1000,5000; quick 200)")
    p.add_argument("--profile", action="store_true", help="also py-spy record rawgw under 64-connection RPS and 500-stream SSE (extra load, not measured)")
    p.add_argument("--client", choices=("loadgen", "wrk"), default="loadgen", help="RPS load client: bench/loadgen.py (default) or wrk when installed")
    p.add_argument("--out", help="JSON result path (default bench/results/<UTC date-time>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    duration = args.duration if args.duration is not None else (1.0 if quick else 10.0)
    warmup = 0.2 if quick else 1.0
    repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
    conns = [int(x) for x in (args.connections or ("1,64" if quick else "1,64,256")).split(",")]
    streams = [int(x) for x in (args.streams or ("10" if quick else "10,500")).split(",")]
    events = args.events if args.events is not None else (20 if quick else 100)
    mem_streams = [int(x) for x in (args.mem_streams or ("200" if quick else "1000,5000")).split(",")]
    only = set(args.only.split(",")) if args.only else set(SECTIONS) - ({"scaling"} if quick else set())
    unknown = only - set(SECTIONS)
    if unknown:
        log(f"bench: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
        return 2
    peers_on = not (quick or args.no_peers)
    client = args.client
    if client == "wrk" and shutil.which("wrk") is None:
        log("bench: wrk not installed; RPS points use bench/loadgen.py")
        client = "loadgen"
    CLIENT["name"] = client

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: (cleanup(), os._exit(130)))
    nofile = bl.raise_nofile()
    machine = bl.machine_info()  # before this process pins itself to the rig's CPUs
    all_cpus = bl.cpus()
    if len(all_cpus) >= 2:
        gw_cpus, rig_cpus = all_cpus[:1], all_cpus[1:]
        pinning = f"gateway on CPU {gw_cpus[0]}, mock + load client on CPU {','.join(map(str, rig_cpus))}"
        os.sched_setaffinity(0, set(rig_cpus))
    else:
        gw_cpus = rig_cpus = None
        pinning = "none (1 CPU): gateway, mock and load client share it"
    tmp = Path(tempfile.mkdtemp(prefix="rawgw-bench-"))
    t_begin = time.monotonic()
    res: dict = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine,
            "load_avg_at_start": bl.guarded(lambda: Path("/proc/loadavg").read_text().split()[:3]),
            "pinning": pinning,
            "nofile": nofile,
            "quick": quick,
            "duration_s": duration,
            "warmup_s": warmup,
            "repeat": repeat,
            "sse": {"streams": streams, "events": events, "interval_ms": args.interval_ms},
            "mem_streams": mem_streams,
            "rps_client": client,
        },
        "skipped": {},
    }
    status = 0
    try:
        mock = start_mock(tmp, rig_cpus)
        targets: list[Target] = [mock]
        rawgw, reason = start_rawgw(tmp, "rawgw", rawgw_config(tmp, "rawgw", mock.port), gw_cpus)
        if rawgw is None:
            log(f"bench: rawgw did not start: {reason}")
            res["skipped"]["rawgw"] = reason
            status = 2
        else:
            targets.append(rawgw)
        peers: list[Target] = []
        if peers_on and only & {"rps", "sse", "mem"}:
            for name, fn in (("nginx", start_nginx), ("fastapi", start_fastapi)):
                t, reason = fn(tmp, mock.port, gw_cpus)
                if t is None:
                    res["skipped"][name] = reason
                    log(f"bench: skipping {name}: {reason}")
                else:
                    peers.append(t)
                    res["meta"][f"{name}_version"] = t.note
        elif not peers_on:
            res["skipped"]["peers"] = "--quick" if quick else "--no-peers"
        targets += peers

        if "floor" in only:
            log("bench: h11 floor")
            fl = start("floor", [PY, str(BENCH / "h11_floor.py"), "--json", "--n", "3000" if quick else "20000"], gw_cpus, tmp)
            m = fl.wait_for(r"^\{.*\}$", 120)
            res["floor"] = json.loads(m.group(0)) if m else {"error": fl.stderr_tail()}
            stop(fl)

        if "rps" in only:
            raw: dict[str, dict[int, list[dict]]] = {t.name: {c: [] for c in conns} for t in targets}
            for rep in range(repeat):
                for t in targets:
                    for c in conns:
                        log(f"bench: rps {t.name} c={c} ({rep + 1}/{repeat})")
                        raw[t.name][c].append(rps_point(tmp, t, c, duration, warmup, rig_cpus))
            res["rps"] = {name: {str(c): med_runs(runs, RPS_KEYS) for c, runs in pts.items()} for name, pts in raw.items()}

        if "access" in only and rawgw is not None:
            log("bench: access log on/off")
            gwa, reason = start_rawgw(tmp, "rawgw-access", rawgw_config(tmp, "rawgw-access", mock.port, access=True), gw_cpus)
            if gwa is None:
                res["access"] = {"error": f"rawgw with access log did not start: {reason}"}
            else:
                offs, ons = [], []
                for _ in range(repeat):
                    offs.append(rps_point(tmp, rawgw, 64, duration, warmup, rig_cpus))
                    ons.append(rps_point(tmp, gwa, 64, duration, warmup, rig_cpus))
                off, on = med_runs(offs, RPS_KEYS), med_runs(ons, RPS_KEYS)
                res["access"] = {
                    "off": off,
                    "on": on,
                    "rps_ratio": bl.rnd(ratio(on.get("rps"), off.get("rps")), 3),
                    "cpu_ratio": bl.rnd(ratio(on.get("cpu_us_per_req"), off.get("cpu_us_per_req")), 3),
                }
                stop(gwa.proc)

        if "sse" in only:
            raw_s: dict[str, dict[int, list[dict]]] = {t.name: {n: [] for n in streams} for t in targets}
            for rep in range(repeat):
                for t in targets:
                    for n in streams:
                        log(f"bench: sse {t.name} streams={n} ({rep + 1}/{repeat})")
                        raw_s[t.name][n].append(sse_point(tmp, t, n, events, args.interval_ms, rig_cpus))
            res["sse"] = {name: {str(n): med_runs(runs, SSE_KEYS) for n, runs in pts.items()} for name, pts in raw_s.items()}
            # Byte-exactness is judged on every run, not the median.
            for name, pts in raw_s.items():
                for n, runs in pts.items():
                    res["sse"][name][str(n)]["exact_pct_min"] = min((r.get("exact_pct", 0.0) for r in runs), default=0.0)

        if "mem" in only:
            res["mem"] = {}
            makers = {}
            if rawgw is not None:
                makers["rawgw"] = lambda n: (lambda: start_rawgw(tmp, "rawgw-mem", rawgw_config(tmp, "rawgw-mem", mock.port, max_upstream=n + 100), gw_cpus))
            for t in peers:
                if t.name == "nginx":
                    makers["nginx"] = lambda n: (lambda: start_nginx(tmp, mock.port, gw_cpus))
                elif t.name == "fastapi":
                    makers["fastapi"] = lambda n: (lambda: start_fastapi(tmp, mock.port, gw_cpus))
            for name, mk in makers.items():
                res["mem"][name] = {}
                for n in mem_streams:
                    log(f"bench: mem {name} streams={n}")
                    # A fresh process per point (the RPS/SSE instances stay up, idle).
                    res["mem"][name][str(n)] = mem_point(tmp, name, mk(n), n, rig_cpus)

        if "scaling" in only and rawgw is not None:
            res["scaling"] = {}
            for w in range(1, len(all_cpus) + 1):
                log(f"bench: scaling workers={w}")
                cfg = rawgw_config(tmp, f"rawgw-w{w}", mock.port)
                t, reason = start_rawgw(tmp, f"rawgw-w{w}", cfg, all_cpus[:w] if gw_cpus else None, workers=w)
                if t is None:
                    res["scaling"][str(w)] = {"error": f"--workers {w} failed: {reason}"}
                    break
                runs = [rps_point(tmp, t, 64, duration, warmup, rig_cpus) for _ in range(repeat)]
                res["scaling"][str(w)] = med_runs(runs, RPS_KEYS)
                stop(t.proc)

        if args.profile and rawgw is not None:
            res["profile"] = {}
            for kind in ("rps", "sse"):
                log(f"bench: profile rawgw under {kind}")
                res["profile"][kind] = profile_point(tmp, rawgw, kind, 5 if quick else 10, rig_cpus)

        res["targets"] = evaluate(res)
    finally:
        res["meta"]["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    # Verdict: numbers produced and SSE byte-exact through rawgw (never timing thresholds).
    problems = []
    rg = (res.get("rps") or {}).get("rawgw")
    if "rps" in only and "rawgw" not in res["skipped"] and (not rg or not any((p.get("ok") or 0) > 0 for p in rg.values())):
        problems.append("rawgw answered no request successfully")
    for n, r in ((res.get("sse") or {}).get("rawgw") or {}).items():
        if r.get("exact_pct_min", 0) < 100:
            problems.append(f"SSE through rawgw not byte-exact at {n} streams ({r.get('exact_pct_min')}%)")
    res["problems"] = problems
    out = Path(args.out) if args.out else BENCH / "results" / f"{bl.now_utc_stamp()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print_report(res)
    print(f"\nJSON: {out}  ({res['meta']['elapsed_s']} s)")
    for p in problems:
        print(f"FAIL: {p}")
    if status:
        return status
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
