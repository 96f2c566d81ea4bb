"""Strictness h11 leaves to us (RFC 9112): refused forms that h11 would accept.

h11 is lenient where a proxy must not be: it unfolds obs-fold lines, accepts bare
LF line ends and chunk sizes of up to 20 hex digits. A gateway that forwards
what a back end might parse differently opens the door to request smuggling,
so these are refused before h11 sees the head.
"""

from __future__ import annotations

import re

import h11._readers as _h11_readers

# RFC 9112 §7.1: chunk-size is 1*HEXDIG; more than 16 digits cannot be a real
# size and is a known smuggling vector (parsers truncate differently).
_pattern = _h11_readers.chunk_header_re.pattern
if b"{1,20}" in _pattern:
    _h11_readers.chunk_header_re = re.compile(_pattern.replace(b"{1,20}", b"{1,16}"))


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
    return None
