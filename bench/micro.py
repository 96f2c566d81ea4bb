"""Micro-benchmarks behind the issue-15 decisions in bench/README.md ("measured and dropped").

    python bench/micro.py                        # rawgw from this checkout (or what is installed)
    PYTHONPATH=/tmp/before python bench/micro.py # another tree, for a before/after

Under uvloop, best of 5 each:
- a task that awaits one future vs the same future with a done-callback (the Task →
  callbacks lever);
- RequestRecord's frozen ``__init__`` vs the same fields in a non-frozen slotted dataclass;
- ``extract_usage`` on a 610 B chat completion with nested ``prompt_tokens_details``;
- ``set_nodelay`` on a connected transport (which the loop already made TCP_NODELAY);
- 500 concurrent ``create_connection`` to a loopback server (is connecting a burst's cost?).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import timeit

import uvloop

from rawgw.http.tcp import set_nodelay
from rawgw.observe.record import RequestRecord
from rawgw.observe.usage import extract_usage

ANSWER = (
    b'{"id":"chatcmpl-x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"'
    + b"hello " * 60
    + b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":60,"total_tokens":69,'
    b'"prompt_tokens_details":{"cached_tokens":0}}}'
)


def best(f, n: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6


async def task_vs_callback(n: int = 20000) -> tuple[float, float]:
    loop = asyncio.get_running_loop()

    async def waits(f: asyncio.Future[int]) -> None:
        await f

    results = []
    for use_task in (True, False):
        t = time.perf_counter()
        for _ in range(n):
            f = loop.create_future()
            if use_task:
                task = loop.create_task(waits(f))
            else:
                f.add_done_callback(lambda _f: None)
            await asyncio.sleep(0)
            f.set_result(1)
            if use_task:
                await task
            else:
                await asyncio.sleep(0)
        results.append((time.perf_counter() - t) / n * 1e6)
    return results[0], results[1]


async def sockets() -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        set_nodelay(transport)
    nodelay = (time.perf_counter() - t) / n * 1e6
    transport.close()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pairs = await asyncio.gather(*[loop.create_connection(asyncio.Protocol, "127.0.0.1", port) for _ in range(500)])
        times.append((time.perf_counter() - t) * 1000)
        for tr, _ in pairs:
            tr.close()
        await asyncio.sleep(0.1)
    server.close()
    return nodelay, min(times)


def main() -> None:
    import rawgw

    print(f"rawgw from {os.path.dirname(os.path.dirname(rawgw.__file__))}")
    task, callback = uvloop.run(task_vs_callback())
    print(f"task awaiting one future {task:.2f} µs   done-callback {callback:.2f} µs   ({task - callback:+.2f})")
    fields = {f.name: None for f in dataclasses.fields(RequestRecord)}
    plain = dataclasses.make_dataclass("Plain", list(fields), slots=True)
    print(
        f"RequestRecord ({len(fields)} fields) frozen __init__ {best(lambda: RequestRecord(**fields), 100000):.2f} µs"  # type: ignore[arg-type]
        f"   non-frozen {best(lambda: plain(**fields), 100000):.2f} µs"
    )
    print(f"extract_usage on a {len(ANSWER)} B answer {best(lambda: extract_usage(ANSWER), 50000):.2f} µs -> {extract_usage(ANSWER)}")
    nodelay, connects = uvloop.run(sockets())
    print(f"set_nodelay {nodelay:.2f} µs per connection   500 concurrent loopback connects {connects:.1f} ms (best of 3)")


if __name__ == "__main__":
    main()
