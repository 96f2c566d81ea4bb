"""rawgw.http.body: the upstream body's framing followed without h11 (pure, no sockets)."""

from __future__ import annotations

import random

import h11
import pytest

from rawgw.http.body import CHUNKED, CLOSE, LENGTH, NONE, BodyError, ResponseBody


def run(body: ResponseBody, reads: list[bytes]) -> tuple[bytes, bytes]:
    """Feed ``reads``; (payload, raw output) joined."""
    payload: list[bytes] = []
    raw: list[bytes] = []
    for r in reads:
        out = body.feed(r, lambda p: payload.append(bytes(p)))
        if isinstance(out, list):
            raw.extend(out)
        elif out is not None:
            raw.append(out)
    return b"".join(payload), b"".join(raw)


def dechunk_with_h11(raw: bytes) -> bytes:
    """What a strict client (h11) reads from our raw output: it must be valid chunked."""
    c = h11.Connection(h11.CLIENT)
    c.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    c.send(h11.EndOfMessage())
    c.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + raw)
    out = b""
    while True:
        ev = c.next_event()
        if isinstance(ev, h11.Data):
            out += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            assert c.trailing_data == (b"", False)
            return out
        elif ev is h11.NEED_DATA:
            raise AssertionError("raw output is not a complete chunked body")


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def encode(chunks: list[bytes], rng: random.Random, fancy: bool) -> bytes:
    out = b""
    for c in chunks:
        ext = rng.choice([b"", b";a=b", b';q="x y"', b"  "]) if fancy else b""
        out += b"%x%s\r\n%s\r\n" % (len(c), ext, c)
    last = rng.choice([b"0\r\n\r\n", b"0;e\r\n\r\n", b"0\r\nX-T: 1\r\nY: two\r\n\r\n"]) if fancy else b"0\r\n\r\n"
    return out + last


def test_plain_reads_pass_as_the_same_object() -> None:
    body = ResponseBody(CHUNKED, 0, True, 1024)
    read = b"5\r\nhello\r\n"
    seen: list[object] = []
    assert body.feed(read, seen.append) is read
    assert seen == [read[3:8]] and isinstance(seen[0], memoryview)
    end = b"0\r\n\r\n"
    assert body.feed(end, seen.append) is end
    assert body.done and not body.extra


@pytest.mark.parametrize("seed", range(300))
def test_random_chunked_bodies_split_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    chunks = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(0, 5))]
    fancy = seed % 2 == 1
    wire = encode(chunks, rng, fancy)
    body = ResponseBody(CHUNKED, 0, True, 1024)
    payload, raw = run(body, splits(wire, rng))
    assert body.done and not body.extra
    assert payload == b"".join(chunks)
    assert dechunk_with_h11(raw) == payload
    if not fancy:
        assert raw == wire  # nothing re-framed: exactly the upstream's bytes
    else:
        assert b";" not in raw.split(b"\r\n")[0]


def test_non_canonical_size_lines_are_rewritten() -> None:
    """Only the size line h11 itself would write passes: no leading zeros."""
    body = ResponseBody(CHUNKED, 0, True, 1024)
    payload, raw = run(body, [b"0005\r\nhello\r\n00000000000000000003\r\nabc\r\n00\r\n\r\n"])
    assert (payload, raw, body.done) == (b"helloabc", b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n", True)


def test_payload_only_mode_builds_no_raw() -> None:
    body = ResponseBody(CHUNKED, 0, False, 1024)
    payload, raw = run(body, [b"3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"])
    assert (payload, raw, body.done) == (b"abc", b"", True)


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nabc\r\n",  # not hex
        b"3\r\nabcX\r\n",  # data not followed by CRLF
        b"3\r\nabc\rX",
        b"3\nabc\r\n",  # bare LF size line
        b"111111111111111111111\r\n",  # 21 hex digits (h11 reads up to 20)
        b"3 ;x\r\nabc\r\n",  # whitespace before the extension (h11 refuses it too)
        b"0\r\nno colon\r\n\r\n",  # a trailer that is not a field line
        b"0\r\nX: a\x01b\r\n\r\n",
    ],
)
def test_malformed_chunked_framing_raises(wire: bytes) -> None:
    body = ResponseBody(CHUNKED, 0, True, 1024)
    with pytest.raises(BodyError):
        for i in range(len(wire)):  # byte by byte: every state boundary
            body.feed(wire[i : i + 1], lambda p: None)


def test_long_size_line_and_trailer_section_are_bounded() -> None:
    with pytest.raises(BodyError):
        ResponseBody(CHUNKED, 0, True, 64).feed(b"5;" + b"x" * 100, lambda p: None)
    body = ResponseBody(CHUNKED, 0, True, 64)
    with pytest.raises(BodyError):
        body.feed(b"0\r\n" + b"X: y\r\n" * 20, lambda p: None)


def test_bytes_after_the_last_chunk_are_extra_and_not_forwarded() -> None:
    body = ResponseBody(CHUNKED, 0, True, 1024)
    payload, raw = run(body, [b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"])
    assert (payload, raw, body.done, body.extra) == (b"hi", b"2\r\nhi\r\n0\r\n\r\n", True, True)
    body = ResponseBody(CHUNKED, 0, True, 1024)
    payload, raw = run(body, [b"2\r\nhi\r\n0\r\nT: 1\r\n\r\nX", b"more"])
    assert (raw, body.extra) == (b"2\r\nhi\r\n0\r\n\r\n", True)


def test_eof_before_the_end_is_an_error() -> None:
    for kind, length, wire in [(CHUNKED, 0, b"2\r\nhi\r\n"), (LENGTH, 10, b"12345")]:
        body = ResponseBody(kind, length, True, 1024)
        body.feed(wire, lambda p: None)
        with pytest.raises(BodyError):
            body.eof()


def test_content_length_counts_and_cuts_the_excess() -> None:
    body = ResponseBody(LENGTH, 5, True, 1024)
    a = b"abc"
    assert body.feed(a, lambda p: None) is a and not body.done
    payload, raw = run(body, [b"deXYZ"])
    assert (payload, raw, body.done, body.extra) == (b"de", b"de", True, True)


def test_close_delimited_ends_at_eof_and_no_body_takes_nothing() -> None:
    body = ResponseBody(CLOSE, 0, True, 1024)
    assert run(body, [b"a", b"b"]) == (b"ab", b"ab")
    body.eof()
    assert body.done
    body = ResponseBody(NONE, 0, True, 1024)
    assert body.done
    assert body.feed(b"x", lambda p: None) is None and body.extra


def test_a_break_keeps_the_valid_part_of_the_read() -> None:
    body = ResponseBody(CHUNKED, 0, True, 1024)
    with pytest.raises(BodyError) as info:
        body.feed(b"2\r\nhi\r\nzz\r\nSECRT\r\n", lambda p: None)
    assert b"".join(info.value.raw or []) == b"2\r\nhi\r\n"
