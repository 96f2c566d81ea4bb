"""Strictness h11 leaves to us (RFC 9112): refused forms that h11 would accept.

h11 is lenient where a proxy must not be: it unfolds obs-fold lines, accepts bare
LF line ends, control characters in field values, any Host value, chunk sizes of
up to 20 hex digits and any bytes after a chunk size. A gateway that forwards
what a back end might parse differently opens the door to request smuggling,
so these are refused before h11 sees the head (or, for chunk lines, alongside it:
``ChunkLines``). Nothing here touches h11 itself (no monkeypatch).

This ``ChunkLines`` is the client leg's check. On the upstream leg the provider's
chunk lines are read by ``rawgw.http.body`` (h11 reads only the heads there): it
accepts what h11 accepts (up to 20 hex digits, read as an exact Python int, any
extension), but forwards a size line as it came only when it is canonical — exactly
the ``%x`` of the size that h11 itself would write, no extension, no whitespace, no
leading zero — and rewrites every other line to that form. So a client never sees an
upstream framing byte the gateway would not have written itself, and a connection
with bytes left over after the response is never reused (upstream/connection.py
``_on_end``). tests/test_failures.py and tests/test_body_relay.py hold the proof.
"""

from __future__ import annotations

import re


def head_violation(head: bytes | bytearray, start: int = 0) -> str | None:
    """Why a (possibly partial) request head must be refused, or None.

    ``head`` runs from the start of the request line up to and including the
    blank line, or to what has arrived so far; bytes before ``start`` were
    checked by an earlier call (so a slow head is scanned once, not per read).
    """
    # "\r\n" pairs starting at start-1 or later are exactly the LFs at start or later.
    if head.count(b"\n", start) != head.count(b"\r\n", max(0, start - 1)):
        # RFC 9112 §2.2: a bare LF may be read as a line end by one parser and not another.
        return "bare LF line ending in request head"
    back = max(0, start - 2)
    if head.find(b"\r\n ", back) != -1 or head.find(b"\r\n\t", back) != -1:
        # RFC 9112 §5.2: obs-fold (and whitespace after the start line) is refused.
        return "obsolete line folding in request head"
    seg = head if start == 0 else head[start:]
    if has_control(seg):
        # RFC 9110 §5.5: a lenient upstream or middlebox may split a line on these.
        return "control character in request head"
    return None


# Control characters other than HTAB, CR and LF (CR and LF are checked as line ends).
_CTL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def has_control(data: bytes | bytearray) -> bool:
    """True when ``data`` (field values, a reason phrase) holds a refused control character.

    bytes.translate with a delete table: ~3x faster than a regex search."""
    return len(data.translate(None, _CTL_BYTES)) != len(data)


# RFC 9110 §4.2.3 / RFC 3986 §3.2.2: uri-host [ ":" port ]
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)


def valid_host(value: bytes) -> bool:
    """True for a Host value that is a uri-host with an optional port (RFC 9112 §3.2)."""
    if value in _good_hosts:  # clients send the same few: a set look-up, not a regex
        return True
    if _HOST.fullmatch(value) is None:
        return False
    if len(_good_hosts) < 256 and len(value) <= 255:
        _good_hosts.add(value)
    return True


_good_hosts: set[bytes] = set()


def chunked_not_final(head: bytes | bytearray) -> bool:
    """True when a head's Transfer-Encoding applies chunked anywhere but last, or twice.

    RFC 9112 §6.3: the message length then cannot be determined: 400, not the 501
    of a merely unknown coding. Only called for a head h11 already refused.
    """
    codings: list[bytes] = []
    for m in _TE.finditer(head):
        codings += [c.strip(b" \t").lower() for c in m.group(1).split(b",")]
    codings = [c for c in codings if c]
    return b"chunked" in codings[:-1]


_TE = re.compile(rb"(?im)^transfer-encoding[ \t]*:([^\r\n]*)")

# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS
# chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), name a token, value a token or
# quoted-string. At most 16 hex digits: more cannot be a real size and is a known
# smuggling vector (64-bit parsers truncate differently).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n"
)


class ChunkLines:
    """Follows a chunked request body's framing to check each chunk line.

    h11 accepts anything after a chunk size (``5;``, ``5;bad[=x``, ``5 ``). Only the
    size lines are looked at: chunk data is skipped by count, never copied or
    scanned, so the cost is per chunk line, not per byte. Ends at the last chunk
    (h11 parses the trailer section).
    """

    __slots__ = ("done", "limit", "line", "skip")

    def __init__(self, limit: int) -> None:
        self.skip = 0  # chunk data (plus its CRLF) still to pass
        self.line = b""  # a chunk line split across reads
        self.done = False
        self.limit = limit

    def feed(self, data: bytes | bytearray) -> str | None:
        """Why the body must be refused, or None."""
        pos = 0
        n = len(data)
        while not self.done:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
            if pos >= n:
                return None
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                return "chunk line too long" if len(self.line) > self.limit else None
            line = self.line + data[pos : end + 1] if self.line else data[pos : end + 1]
            self.line = b""
            pos = end + 1
            m = _CHUNK_LINE.fullmatch(line)
            if m is None:
                return "malformed chunk line"
            size = int(m.group(1), 16)
            if size == 0:
                self.done = True
            else:
                self.skip = size + 2
        return None
