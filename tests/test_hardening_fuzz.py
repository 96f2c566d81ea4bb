"""Property-based fuzzing of the client leg (issue 7 §1 "Fuzz").

One gateway (and one mock upstream) per test; hypothesis drives the examples from a
worker thread while every byte goes over real sockets on the test's event loop. Each
example starts from a valid request (or a pipeline of them), mutates it — header lines
duplicated, dropped or added with random names/values, Content-Length / Transfer-Encoding
combinations, bytes inserted/deleted/replaced — and sends it split at random boundaries
with small delays. Properties:

* the answer is zero or more well-formed HTTP/1.1 responses (each complete, one Date,
  one ``Server: rawgw``, never TE with CL), then — after the client's FIN at the latest —
  a clean close; never a hang;
* the mock upstream only ever receives well-framed requests (a body of exactly the
  declared length, no TE+CL, no CR/LF/NUL in a field), and exactly one per answer the
  gateway says came from a provider (``X-Rawgw-Provider``): nothing refused is forwarded;
* the gateway never prints a traceback, and afterwards serves a normal request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass

from conftest import (
    CHAT_BODY,
    GW_KEY,
    StartGateway,
    base_config,
    chat_request,
    parse_responses,
    raw_connection,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mock_upstream import MockUpstream

SMALL_BODY = b'{"model":"m","messages":[{"role":"user","content":"fuzz"}]}'


def _head(request_line: str, headers: list[tuple[bytes, bytes]], ends: dict[int, bytes]) -> bytes:
    """Request line and header lines, each ended by CRLF unless ``ends`` says otherwise
    (a bare LF, or CRLF plus an obs-fold continuation)."""
    out = request_line.encode() + ends.get(-1, b"\r\n")
    for i, (k, v) in enumerate(headers):
        out += k + b": " + v + ends.get(i, b"\r\n")
    return out + b"\r\n"


def _chunked(body: bytes) -> bytes:
    a, b = body[:10], body[10:]
    return b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)


# (request line, header list, body, body is chunked)
TEMPLATES: list[tuple[str, list[tuple[bytes, bytes]], bytes, bool]] = [
    (
        "POST /v1/chat/completions HTTP/1.1",
        [(b"Host", b"127.0.0.1"), (b"Authorization", b"Bearer " + GW_KEY.encode()), (b"Content-Type", b"application/json")],
        CHAT_BODY,
        False,
    ),
    (
        "POST /v1/chat/completions HTTP/1.1",
        [(b"Host", b"127.0.0.1"), (b"x-api-key", GW_KEY.encode()), (b"Content-Type", b"application/json")],
        SMALL_BODY,
        True,
    ),
    ("GET /health HTTP/1.1", [(b"Host", b"127.0.0.1")], b"", False),
    (
        "POST /mock/chat/completions HTTP/1.1",
        [(b"Host", b"127.0.0.1"), (b"Authorization", b"Bearer " + GW_KEY.encode()), (b"Content-Type", b"application/json")],
        SMALL_BODY,
        True,
    ),
    (
        "POST /v1/embeddings HTTP/1.0",
        [(b"Host", b"127.0.0.1"), (b"Authorization", b"Bearer " + GW_KEY.encode()), (b"Content-Type", b"application/json")],
        b'{"model":"m","input":"x"}',
        False,
    ),
    (
        "POST /v1/chat/completions HTTP/1.1",
        [
            (b"Host", b"127.0.0.1"),
            (b"Authorization", b"Bearer " + GW_KEY.encode()),
            (b"Content-Type", b"application/json"),
            (b"Expect", b"100-continue"),
        ],
        SMALL_BODY,
        False,
    ),
]

FRAMING_NAMES = [
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"Content-Length ",
    b" Transfer-Encoding",
]
FRAMING_VALUES = [
    b"chunked", b"Chunked", b"chunked, chunked", b"chunked, identity", b"identity", b"xchunked", b"gzip, chunked",
    b"chunked;q=1", b"\tchunked", b"0", b"5", b"+5", b"-1", b"0x10", b"5, 5", b"5, 6", b"99999999999999999999",
    b"1e3", b" 7 ", b"",
]  # fmt: skip
NAMES = [
    b"X-A",
    b"Host",
    b"Connection",
    b"Expect",
    b"X-Request-ID",
    b"X-Rawgw-Timeout",
    b"Upgrade",
    b"TE",
    b"Trailer",
    b"Content-Type",
    b"Authorization",
]
VALUES = [
    b"close",
    b"keep-alive",
    b"100-continue",
    b"0.001",
    b"h2c",
    b"trailers",
    b"application/json",
    b"text/plain",
    b"a\x00b",
    b"a\rb",
    b"a\nb",
    b"\xff\xfe",
    b"x" * 300,
]
NOISE = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"0", b";", b",", b"a", b"\xff", b"\r\n\r\n", b"\x7f"]


@dataclass
class Case:
    data: bytes
    splits: list[int]
    delays: list[float]
    must_refuse: bool = False  # a head the gateway must refuse (400): never forwarded


@st.composite
def mutated_requests(draw: st.DrawFn) -> Case:
    parts = []
    n_parts = draw(st.sampled_from([1, 1, 2, 2, 3]))  # often a pipeline
    for k in range(n_parts):
        line, headers, body, chunked = draw(st.sampled_from(TEMPLATES))
        # the leading requests of a pipeline are often left valid, so that the
        # mutated one behind them is parsed in the same read
        mutate = k == n_parts - 1 or draw(st.booleans())
        headers = list(headers)
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
            wire_body = _chunked(body)
        else:
            headers.append((b"Content-Length", str(len(body)).encode()))
            wire_body = body
        ends: dict[int, bytes] = {}
        for _ in range(draw(st.integers(1, 3)) if mutate else 0):
            op = draw(st.sampled_from(["dup", "drop", "add", "framing", "random_header", "line_end"]))
            i = draw(st.integers(0, len(headers) - 1)) if headers else 0
            if op == "dup" and headers:
                headers.insert(i, headers[i])
            elif op == "drop" and headers:
                headers.pop(i)
            elif op == "add":
                headers.insert(i, (draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))))
            elif op == "framing":
                headers.insert(i, (draw(st.sampled_from(FRAMING_NAMES)), draw(st.sampled_from(FRAMING_VALUES))))
            elif op == "line_end":
                ends[draw(st.integers(-1, len(headers) - 1))] = draw(st.sampled_from([b"\n", b"\r\n \tfolded\r\n", b"\r\r\n", b"\n\r\n"]))
            else:
                name = draw(st.binary(min_size=0, max_size=12))
                value = draw(st.binary(min_size=0, max_size=24))
                headers.insert(i, (name, value))
        raw = _head(line, headers, ends) + wire_body
        parts.append(raw)
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        noise = draw(st.one_of(st.sampled_from(NOISE), st.binary(min_size=1, max_size=3)))
        if op == "insert":
            data[pos:pos] = noise
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            data[pos : pos + len(noise)] = noise
    return _split(draw, bytes(data))


LOCAL_FIRST = [
    b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n",  # 401: no key
    b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: a\r\nOrigin: http://x\r\nAccess-Control-Request-Method: POST\r\n\r\n",
]


@st.composite
def pipelined_after_local_answer(draw: st.DrawFn) -> Case:
    """A request the gateway answers at once, then a head-mutated request in the same
    read: the second must get the same strict parsing as a first one."""
    line, headers, body, _ = TEMPLATES[0]
    headers = [*headers, (b"Content-Length", str(len(body)).encode())]
    ends: dict[int, bytes] = {}
    op = draw(st.sampled_from(["line_end", "framing", "random_header", "add"]))
    i = draw(st.integers(0, len(headers) - 1))
    if op == "line_end":
        # bare LF, obs-fold, CR in a value: refused by SPEC 8 whatever came before
        ends[draw(st.integers(-1, len(headers) - 1))] = draw(st.sampled_from([b"\n", b"\r\n \tfolded\r\n", b"\r\r\n", b"\r\n\tx\r\n"]))
    elif op == "framing":
        headers.insert(i, (draw(st.sampled_from(FRAMING_NAMES)), draw(st.sampled_from(FRAMING_VALUES))))
    elif op == "add":
        headers.insert(i, (draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))))
    else:
        headers.insert(i, (draw(st.binary(min_size=0, max_size=12)), draw(st.binary(min_size=0, max_size=24))))
    data = draw(st.sampled_from(LOCAL_FIRST)) + _head(line, headers, ends) + body
    return Case(data, [], [], must_refuse=op == "line_end")


@st.composite
def random_bytes(draw: st.DrawFn) -> Case:
    prefix = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", b"G"]))
    return _split(draw, prefix + draw(st.binary(min_size=1, max_size=200)))


def _split(draw: st.DrawFn, data: bytes) -> Case:
    n = draw(st.integers(0, 4)) if len(data) > 1 else 0
    splits = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), min_size=n, max_size=n)))) if n else []
    delays = [draw(st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02])) for _ in splits]
    return Case(data, splits, delays)


# --------------------------------------------------------------------------- checking


def check_upstream_request(req: object) -> None:
    from mock_upstream import RecordedRequest

    assert isinstance(req, RecordedRequest)
    assert req.conn.parse_error is None, req.conn.parse_error
    assert req.version == b"HTTP/1.1", req.raw_head
    for name, value in req.headers:
        assert name and not any(ch in name for ch in b" \t\r\n\x00:"), req.raw_head
        assert not any(ch in value for ch in b"\r\n\x00"), req.raw_head
    assert b"\n" not in req.raw_head.replace(b"\r\n", b""), req.raw_head
    cls = req.header_values("content-length")
    tes = req.header_values("transfer-encoding")
    assert not (cls and tes), req.raw_head
    assert len(cls) <= 1 and len(req.header_values("host")) == 1, req.raw_head
    if cls:
        assert int(cls[0]) == len(req.body), req.raw_head
    if tes:
        assert tes == [b"chunked"], req.raw_head


async def run_case(port: int, mock: MockUpstream, case: Case, stats: Counter[str]) -> None:
    n_before = len(mock.requests)
    c = await raw_connection(port, timeout=5)
    try:
        bounds = [0, *case.splits, len(case.data)]
        delays = [*case.delays, 0.0]
        for (a, b), delay in zip(itertools.pairwise(bounds), delays):
            try:
                await c.send(case.data[a:b])
            except (ConnectionError, OSError):
                break
            if delay:
                await asyncio.sleep(delay)
        # read until the gateway goes quiet (or closes) ...
        while not c.eof:
            try:
                await c.read_some(timeout=0.12)
            except TimeoutError:
                break
        # ... then FIN: the gateway must close now (idle, in flight or mid-head alike)
        try:
            await c.shutdown_write()
        except OSError:
            pass  # already reset by the gateway
        t0 = time.monotonic()
        try:
            await c.read_until_close(timeout=3)
        except TimeoutError:
            raise AssertionError(f"no close within 3 s of the client's FIN; got {bytes(c.received)[:300]!r}") from None
        assert time.monotonic() - t0 < 3
    finally:
        c.writer.transport.abort()
    data = bytes(c.received)
    responses = parse_responses(data, eof=True) if data else []
    for r in responses:
        assert r.version == "HTTP/1.1", r.raw_head
        assert 100 <= r.status <= 599, r.raw_head
        assert r.complete, f"truncated response {r.raw_head!r}"
        if r.status >= 200:
            assert r.count("date") == 1 and r.values("server") == ["rawgw"], r.raw_head
            assert not (r.count("transfer-encoding") and r.count("content-length")), r.raw_head
        for line in r.raw_header_lines:
            assert b"\n" not in line and b"\r" not in line and b"\x00" not in line, r.raw_head
    if responses:
        assert responses[-1].rest == b"", f"bytes after the last response: {responses[-1].rest[:200]!r}"
    await asyncio.sleep(0.02)
    new = mock.requests[n_before:]
    for req in new:
        check_upstream_request(req)
    from_provider = [r for r in responses if r.count("x-rawgw-provider")]
    assert len(new) == len(from_provider), (
        f"upstream got {len(new)} request(s) but the client {len(from_provider)} provider answer(s); "
        f"statuses {[r.status for r in responses]}; forwarded {[q.raw_head for q in new]!r}"
    )
    if case.must_refuse:
        assert len(responses) == 2 and responses[-1].status == 400 and not new, (
            f"pipelined request with a refused head: statuses {[r.status for r in responses]}, forwarded {[q.raw_head for q in new]!r}"
        )
    for r in responses:
        stats[str(r.status)] += 1
    if c.reset:
        stats["reset"] += 1
    stats["closed_without_answer" if not responses else "answered"] += 1


def drive(
    loop: asyncio.AbstractEventLoop, port: int, mock: MockUpstream, strategy: st.SearchStrategy[Case], n: int, stats: Counter[str]
) -> None:
    """Runs in a worker thread: hypothesis generates, the event loop does the I/O."""

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],  # no shrinking: keeps a failing run bounded in time
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=strategy)
    def prop(case: Case) -> None:
        fut = asyncio.run_coroutine_threadsafe(run_case(port, mock, case, stats), loop)
        try:
            fut.result(timeout=10)
        except TimeoutError:
            fut.cancel()
            raise AssertionError(f"example hung: {case!r}") from None

    prop()


async def test_fuzzed_requests(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": 4096, "max_header_bytes": 4096, "header_timeout_s": 2}))
    loop = asyncio.get_running_loop()
    stats: Counter[str] = Counter()
    t0 = time.monotonic()
    await loop.run_in_executor(None, drive, loop, gw.port, mock_upstream, mutated_requests(), 80, stats)
    await loop.run_in_executor(None, drive, loop, gw.port, mock_upstream, pipelined_after_local_answer(), 30, stats)
    await loop.run_in_executor(None, drive, loop, gw.port, mock_upstream, random_bytes(), 30, stats)
    took = time.monotonic() - t0
    assert took < 25, took
    assert gw.proc.returncode is None
    assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-3000:]
    # the fuzz really exercised both sides: refusals and forwarded requests
    print(dict(stats))
    assert stats["400"] > 0 and stats["200"] > 0, stats
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request())
    assert r.status == 200
