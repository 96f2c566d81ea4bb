"""rawgw.http.h11compat uses h11 private API; these fail loudly if h11 changes it."""

from __future__ import annotations

import h11
import pytest

from rawgw.http.h11compat import plain_headers, trusted_request, trusted_response


def test_parsed_flag_skips_header_validation() -> None:
    # A value h11 would refuse when validating proves the flag still skips validation.
    bad = [(b"x y", b"v")]  # a space is not a token character
    with pytest.raises(h11.LocalProtocolError):
        h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"h")] + bad)
    req = trusted_request(b"GET", b"/", [(b"host", b"h")] + bad)
    assert req.headers[1] == (b"x y", b"v")
    resp = trusted_response(200, bad, b"OK")
    assert resp.reason == b"OK" and resp.status_code == 200


def test_parsed_request_still_checks_framing() -> None:
    with pytest.raises(h11.LocalProtocolError):
        trusted_request(b"POST", b"/", [(b"host", b"h"), (b"content-length", b"1"), (b"content-length", b"2")])


def test_full_items_is_the_backing_list() -> None:
    req = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"h"), (b"X-A", b"1")])
    items = getattr(req.headers, "_full_items", None)
    assert items is not None, "h11 dropped Headers._full_items: plain_headers falls back to slow iteration"
    assert [tuple(i) for i in items] == [(b"Host", b"host", b"h"), (b"X-A", b"x-a", b"1")]
    assert plain_headers(req.headers) == [(b"host", b"h"), (b"x-a", b"1")]
