"""Instructions per proxied request under ``valgrind --tool=callgrind``: one repeatable number.

Wall and CPU time on a shared 2-CPU machine swing by 10-20 % between runs; instruction
counts do not (the same binary, inputs and environment give the same total, whatever else
the machine is doing). So a change to the request path is judged here by one number:

    python bench/callgrind.py                     # rawgw of this tree vs the h11 floor
    python bench/callgrind.py --tree /tmp/before  # another source tree (git worktree)
    python bench/callgrind.py --log               # with the access log on

How: the gateway runs under callgrind twice, serving N1 and then N2 requests (the bench
mock upstream, not under valgrind, answers); the difference of the two totals divided by
N2 - N1 is the cost of one request with start-up and shutdown cancelled out. The h11
floor (``h11_floor.one_request``: only the h11 work a gateway with h11 on both legs cannot
avoid) is counted the same way, in a child Python under callgrind, so the ratio
rawgw / floor is the figure issue 15 targets (<= 1.5). The load client sends sequential
keep-alive requests over ``--connections`` connections (default 4), so the count includes
the event loop's per-request work, not a concurrency-dependent batching effect.

Needs valgrind (Debian package ``valgrind``). Takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REQ_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def _request(port: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: rawgw-bench/1\r\n"
        b"Authorization: Bearer bench-key\r\nContent-Type: application/json\r\nAccept: */*\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(REQ_BODY), REQ_BODY)
    )


def _read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one Content-Length response off a keep-alive socket (the bench mock's answers)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("gateway closed the connection")
        buf += data
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    if m is None:
        raise RuntimeError("answer without Content-Length")
    need = len(head) + 4 + int(m.group(1))
    while len(buf) < need:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("gateway closed mid-body")
        buf += data
    del buf[:need]


def drive(port: int, total: int, conns: int) -> None:
    """``total`` requests, sequential per connection, ``conns`` connections in parallel."""
    req = _request(port)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                buf = bytearray()
                for _ in range(n):
                    s.sendall(req)
                    _read_response(s, buf)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    share = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in share if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _collected(log: Path) -> int:
    m = re.search(r"Collected : (\d+)", log.read_text())
    if m is None:
        raise RuntimeError(f"no callgrind total in {log}:\n{log.read_text()[-2000:]}")
    return int(m.group(1))


def _valgrind(out: Path, log: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--log-file={log}"]


def gateway_instructions(tree: str, cfg: Path, n: int, conns: int, tmp: Path, tag: str) -> int:
    log = tmp / f"gw-{tag}.log"
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    cmd = [*_valgrind(tmp / f"gw-{tag}.out", log), sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"]
    p = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()  # valgrind makes start-up slow: the readline waits for it
        m = re.search(r"http://[^:]+:(\d+)", line)
        if m is None:
            raise RuntimeError(f"gateway did not start: {line!r}")
        drive(int(m.group(1)), n, conns)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=300)
    return _collected(log)


FLOOR_CHILD = """
import sys
sys.path.insert(0, {bench!r})
import h11_floor
srv, cli = h11_floor._pair()
for _ in range({n}):
    h11_floor.one_request(srv, cli)
"""


def floor_instructions(n: int, tmp: Path, tag: str) -> int:
    log = tmp / f"floor-{tag}.log"
    code = FLOOR_CHILD.format(bench=str(BENCH), n=n)
    subprocess.run([*_valgrind(tmp / f"floor-{tag}.out", log), sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    return _collected(log)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(BENCH.parent), help="rawgw source tree to count (default: this one)")
    ap.add_argument("--n1", type=int, default=200)
    ap.add_argument("--n2", type=int, default=1200)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--log", action="store_true", help="access log on (to a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    mock = subprocess.Popen([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert mock.stdout is not None
        mport = int(re.search(r":(\d+)", mock.stdout.readline().split("http://")[1]).group(1))  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="rawgw-cg-") as d:
            tmp = Path(d)
            logging_toml = f'[logging]\ndir = "{tmp}/logs"\naccess = true\nerrors = true\n' if args.log else "[logging]\naccess = false\nerrors = false\n"
            cfg = tmp / "gateway.toml"
            cfg.write_text(
                f'[server]\nport = 0\n[[keys]]\nkey = "bench-key"\nname = "bench"\n[providers.mock]\ntype = "openai"\n'
                f'base_url = "http://127.0.0.1:{mport}/v1"\nkeys = ["sk-bench-upstream"]\nkey_format = "any"\n' + logging_toml
            )
            if "key_format" not in (Path(args.tree) / "rawgw" / "config.py").read_text():
                cfg.write_text(cfg.read_text().replace('key_format = "any"\n', ""))
            g1 = gateway_instructions(args.tree, cfg, args.n1, args.connections, tmp, "1")
            g2 = gateway_instructions(args.tree, cfg, args.n2, args.connections, tmp, "2")
            f1 = floor_instructions(args.n1, tmp, "1")
            f2 = floor_instructions(args.n2, tmp, "2")
    finally:
        mock.terminate()
    per = (g2 - g1) / (args.n2 - args.n1)
    floor = (f2 - f1) / (args.n2 - args.n1)
    res = {
        "tree": args.tree,
        "access_log": args.log,
        "requests": [args.n1, args.n2],
        "instructions_per_request": round(per),
        "h11_floor_instructions_per_request": round(floor),
        "ratio_to_floor": round(per / floor, 2),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"rawgw {res['instructions_per_request']:,} instructions/request   h11 floor {res['h11_floor_instructions_per_request']:,}   ratio {res['ratio_to_floor']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
