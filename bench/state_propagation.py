"""How fast shared state reaches another process (issue 12): the numbers the README quotes.

    python bench/state_propagation.py [--events 2000] [--rounds 20]

1. publish → callback: one StateClient publishes a key event (store + PUBLISH in one
   pipeline), a second client on its own connections gets it through its subscription;
   latency from the call to the callback, p50/p99 over ``--events``.
2. a provider 429 on gateway A → gateway B shows that key cooling: two ``rawgw serve``
   processes sharing one redis-server (started here), the bench mock upstream answering
   429 (``x-bench-status``); the time from A's answer to the first B
   ``/health/providers`` poll showing the key cooling (one HTTP poll included), over
   ``--rounds`` rounds (the key is brought back between rounds with the admin API).

Needs redis-server on PATH. Nothing is asserted: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from time import perf_counter

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from benchlib import percentile  # noqa: E402
from state_client import start_redis  # noqa: E402

from rawgw.state.client import StateClient  # noqa: E402
from rawgw.state.shared import SharedState  # noqa: E402
from rawgw.state.url import parse_state_url  # noqa: E402

ADMIN = "bench-admin-key-0123456789"


async def publish_to_callback(url: str, events: int) -> dict[str, float | None]:
    subscribed = asyncio.Event()
    pub_client = StateClient(parse_state_url(url), timeout_ms=2000)
    sub_client = StateClient(parse_state_url(url), timeout_ms=2000, on_subscribed=subscribed.set)
    for c in (pub_client, sub_client):
        c.start()
        await c.wait_up(5.0)
    pub, sub = SharedState(pub_client), SharedState(sub_client)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[float] | None = None

    def on_event(_event: object) -> None:
        if arrived is not None and not arrived.done():
            arrived.set_result(perf_counter())

    await sub.subscribe_key_events(on_event)
    await asyncio.wait_for(subscribed.wait(), 5)  # the pub/sub link confirmed the channel
    lat = []
    for i in range(events):
        arrived = loop.create_future()
        t0 = perf_counter()
        await pub.publish_key_event("bench", i % 4, "cooldown", time.time() + 60, 1)
        lat.append(await asyncio.wait_for(arrived, 5) - t0)
    await pub_client.close()
    await sub_client.close()
    lat.sort()
    return {"p50_us": _us(percentile(lat, 50)), "p99_us": _us(percentile(lat, 99))}


def _us(v: float | None) -> float | None:
    return None if v is None else round(v * 1e6, 1)


def _request(port: int, method: str, path: str, key: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers={"Authorization": f"Bearer {key}", **(headers or {})})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _key_state(port: int) -> str:
    _, body = _request(port, "GET", "/health/providers", ADMIN)
    return str(json.loads(body)["providers"]["mock"]["keys"][0]["state"])


def _start(cmd: list[str], cwd: str) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    m = re.search(r"http://[^:\s]+:(\d+)", p.stdout.readline())
    if m is None:
        p.kill()
        sys.exit(f"{cmd[1:3]} did not start")
    return p, int(m.group(1))


def _wait(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit("the gateways never agreed")
        time.sleep(0.005)


def gateway_propagation(url: str, rounds: int, tmp: str) -> dict[str, float | None]:
    mock, mport = _start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH))
    cfg = Path(tmp) / "gateway.toml"
    cfg.write_text(
        f'[server]\nport = 0\n[[keys]]\nkey = "{ADMIN}"\nname = "root"\nadmin = true\n'
        f'[providers.mock]\ntype = "openai"\nbase_url = "http://127.0.0.1:{mport}/v1"\nkeys = ["sk-bench-one"]\n'
        f'[logging]\naccess = false\nerrors = false\n[state]\nurl = "{url}"\n'
    )
    gws = [_start([sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"], str(BENCH.parent)) for _ in range(2)]
    (_, pa), (_, pb) = gws
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    reached = []
    try:
        for _ in range(rounds):
            _request(pa, "POST", "/admin/providers/mock/keys/0/enable", ADMIN)
            _wait(lambda: _key_state(pb) == "active")
            status, _ = _request(pa, "POST", "/v1/chat/completions", ADMIN, {"Content-Type": "application/json", "x-bench-status": "429"}, body)
            t_answer = perf_counter()
            assert status == 429, status
            while _key_state(pb) != "cooling":
                pass
            reached.append(perf_counter() - t_answer)
    finally:
        for p, _ in gws:
            p.send_signal(signal.SIGTERM)
        mock.terminate()
    reached.sort()
    return {"p50_ms": round((percentile(reached, 50) or 0) * 1e3, 2), "max_ms": round(reached[-1] * 1e3, 2), "rounds": rounds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rawgw-prop-") as tmp:
        redis, port = start_redis(tmp)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            events = asyncio.run(publish_to_callback(url, args.events))
            print(f"key event publish → callback in another connection: p50 {events['p50_us']} µs, p99 {events['p99_us']} µs ({args.events} events)")
            gw = gateway_propagation(url, args.rounds, tmp)
            print(f"429 on gateway A → B's /health/providers shows the key cooling: p50 {gw['p50_ms']} ms, max {gw['max_ms']} ms ({args.rounds} rounds)")
        finally:
            redis.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
