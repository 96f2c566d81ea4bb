"""The upstream response body after its head: framing followed by counting and scanning.

h11 parses the response head and decides the framing (``h11compat.response_framing``);
after that the body bytes never go through h11's parser. This module follows the
framing incrementally so the relay can forward the upstream's bytes as they came:

- Content-Length: bytes are counted; the read that completes the body ends it. Bytes
  past the announced length are never forwarded and make the connection unpoolable.
- chunked: only the chunk-size lines are looked at (data is skipped by count, never
  scanned or copied). A read whose lines are all canonical — ``b"%x\r\n" % size``,
  what h11 itself writes — is forwarded to a chunked client as the very same object;
  only what must change is re-framed: a size line with a chunk extension, trailing
  whitespace or leading zeros (rewritten to the canonical form), a size line split
  across reads (held until complete), and the last chunk with its trailer section
  (always sent as ``0 CRLF CRLF``: trailers are dropped, as h11 did).
- close-delimited (no length, no chunked): everything until EOF is the body.
- no body (HEAD, 204, 304): any byte is one too many.

A malformed size line, data not followed by CRLF, a trailer section that is not field
lines, or EOF before the end raises ``BodyError``: the relay then truncates the client
response visibly. ``payload`` receives the body's content (de-chunked) for accounting,
usage, caching and clients whose framing differs; whole reads are passed as they are,
parts of a read as memoryviews (no copies).
"""

from __future__ import annotations

import re
from collections.abc import Callable

Payload = Callable[[bytes | memoryview], None]
Raw = bytes | list[bytes]

LENGTH = 0
CHUNKED = 1
CLOSE = 2
NONE = 3

# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF. What h11 accepts (up to 20 hex digits,
# any bytes after ";", trailing OWS); the size is read as an exact Python int.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")
# RFC 9112 §7.1.2: a trailer field is a field line (RFC 9110 §5.5: no control characters).
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n")
_LAST = b"0\r\n\r\n"


class BodyError(Exception):
    """The upstream body's framing is broken: the response cannot be completed.

    ``raw``: the valid part of the read before the break, for a raw-forwarding client
    (what h11 would have delivered as Data before failing).
    """

    raw: list[bytes] | None = None


def _broken(message: str, data: bytes, out: list[bytes] | None, mark: int, pos: int) -> BodyError:
    exc = BodyError(message)
    if out is not None or mark < pos:
        exc.raw = [*(out or ()), data[mark:pos]] if mark < pos else out
    return exc


class ResponseBody:
    """Incremental follower of one response body's framing (see the module docstring)."""

    __slots__ = ("done", "extra", "kind", "limit", "line", "raw", "remaining", "state", "trailer")

    def __init__(self, kind: int, length: int, raw: bool, limit: int) -> None:
        self.kind = kind
        self.remaining = length  # LENGTH: bytes still due; CHUNKED: chunk data still due
        self.raw = raw  # build the chunked bytes a chunked client gets (else payload only)
        self.limit = limit  # bound on a size line and on the trailer section
        self.done = kind == NONE or (kind == LENGTH and length == 0)
        self.extra = False  # bytes came after the end: never pool the connection
        self.line = b""  # CHUNKED: a size line (or trailer section) split across reads
        # CHUNKED: 0 size line due, 1 CR due, 2 LF due (after chunk data), 3 trailer section
        self.state = 0
        self.trailer = 0  # bytes of the trailer section so far

    def feed(self, data: bytes, payload: Payload) -> Raw | None:
        """One read: call ``payload`` with its content; return the bytes to forward raw.

        The return value is what a client with the same framing gets (``data`` itself
        unless something had to be re-framed); None when there is nothing to forward.
        Raises BodyError on broken framing.
        """
        kind = self.kind
        if self.done:
            if data:
                self.extra = True
            return None
        if kind == LENGTH:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                payload(data)
                return data
            if n > self.remaining:
                # RFC 9112 §6.3: bytes past Content-Length are not this response's body.
                self.extra = True
                data = data[: self.remaining]
            self.remaining = 0
            self.done = True
            payload(data)
            return data
        if kind == CLOSE:
            payload(data)
            return data
        return self._chunked(data, payload)

    def eof(self) -> None:
        """The upstream closed: the end of a close-delimited body, else a truncation."""
        if self.done:
            return
        if self.kind == CLOSE:
            self.done = True
            return
        if self.kind == LENGTH:
            raise BodyError("upstream closed the connection before the end of the body (Content-Length)")
        raise BodyError("upstream closed the connection before the last chunk")

    def _chunked(self, data: bytes, payload: Payload) -> Raw | None:
        n = len(data)
        pos = 0
        build = self.raw
        # Raw pieces, once anything was re-framed; a held size line re-frames at once.
        out: list[bytes] | None = [] if build and self.line else None
        mark = 0  # start of the raw region of ``data`` not yet put in ``out``
        view: memoryview | None = None
        while pos < n:
            if self.remaining:
                take = n - pos if n - pos < self.remaining else self.remaining
                if take == n:
                    payload(data)
                else:
                    if view is None:
                        view = memoryview(data)
                    payload(view[pos : pos + take])
                self.remaining -= take
                pos += take
                if self.remaining:
                    break
                self.state = 1
                if pos >= n:
                    break
            state = self.state
            if state == 1 or state == 2:
                # RFC 9112 §7.1: chunk-data CRLF (h11 refuses anything else here too).
                if state == 1:
                    if data[pos] != 13:
                        raise _broken("malformed chunked body: chunk data not followed by CRLF", data, out if build else None, mark, pos)
                    pos += 1
                    self.state = 2
                    if pos >= n:
                        break
                if data[pos] != 10:
                    raise _broken("malformed chunked body: chunk data not followed by CRLF", data, out if build else None, mark, pos)
                pos += 1
                self.state = 0
                continue
            if state == 3:
                try:
                    pos = self._trailer(data, pos)
                except BodyError as exc:
                    exc.raw = out if build else None  # what came before the last chunk
                    raise
                if build:
                    if out is None:
                        out = []
                    if self.done:
                        out.append(_LAST)
                if self.done and pos < n:
                    self.extra = True
                mark = n  # nothing after the last chunk's line passes raw
                break
            end = data.find(b"\n", pos)
            if end < 0:
                # A size line split across reads: held back until it is complete.
                if len(self.line) + n - pos > self.limit:
                    raise _broken("malformed chunked body: chunk size line too long", data, out if build else None, mark, pos)
                if build:
                    if out is None:
                        out = []
                    if mark < pos:
                        out.append(data[mark:pos])
                self.line += data[pos:]
                mark = n
                break
            held = self.line
            line = held + data[pos : end + 1] if held else data[pos : end + 1]
            m = _SIZE_LINE.fullmatch(line)
            if m is None:
                raise _broken("malformed chunked body: bad chunk size line", data, out if build else None, mark, pos)
            self.line = b""
            size = int(m.group(1), 16)
            start = pos
            pos = end + 1
            # canonical: the size's own "%x" and CRLF, nothing else (no leading zero)
            plain = not held and m.end(1) == len(line) - 2 and (line[0] != 0x30 or m.end(1) == 1)
            if size == 0:
                if plain and data[pos : pos + 2] == b"\r\n":
                    # The usual end, "0\r\n\r\n" in one read: passes as it is.
                    pos += 2
                    self.done = True
                    if pos < n:
                        self.extra = True
                        if build:
                            if out is None:
                                out = []
                            out.append(data[mark:pos])
                        mark = n
                    break
                # Anything else (extension, trailers, a split) becomes exactly "0\r\n\r\n".
                if build:
                    if out is None:
                        out = []
                    if mark < start:
                        out.append(data[mark:start])
                mark = n
                self.state = 3
                continue
            self.remaining = size
            if not plain:
                # Re-framed: a held line, or one with an extension / trailing whitespace.
                if build:
                    if out is None:
                        out = []
                    if mark < start:
                        out.append(data[mark:start])
                    out.append(b"%x\r\n" % size)
                mark = pos
        if not build:
            return None
        if out is None:
            return data
        if mark < n:
            out.append(data[mark:])
        return out or None

    def _trailer(self, data: bytes, pos: int) -> int:
        """Consume trailer lines from ``pos``; returns the position after what was used.

        The section is validated and dropped (as h11 did before); ``self.line`` holds an
        incomplete line across reads.
        """
        n = len(data)
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                self.trailer += n - pos
                if self.trailer > self.limit:
                    raise BodyError("malformed chunked body: trailer section too long")
                return n
            line = self.line + data[pos : end + 1] if self.line else data[pos : end + 1]
            self.trailer += end + 1 - pos
            self.line = b""
            pos = end + 1
            if line == b"\r\n":
                self.done = True
                return pos
            if _TRAILER_LINE.fullmatch(line) is None:
                raise BodyError("malformed chunked body: bad trailer line")
            if self.trailer > self.limit:
                raise BodyError("malformed chunked body: trailer section too long")
