"""µs to send one response head through h11's server Connection vs rawgw's ServerConnection.

    python bench/h11_head.py

h11 rebuilds every response it sends in ``_clean_up_response_headers_for_sending``
without ``_parsed``: its header regexes run again over the whole head, and for a
chunked (SSE) answer ``set_comma_header`` runs them twice more. rawgw's
``ServerConnection`` takes the same decisions on the already-validated head
(tests/test_h11compat.py: byte-equal output). A 10-header head like a provider's,
Content-Length and chunked; each figure includes receiving the request (printed alone).
"""

from __future__ import annotations

import timeit

import h11

from rawgw.http.h11compat import ServerConnection, trusted_response

HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-request-id", b"req_" + b"a1b2c3" * 4),
    (b"openai-processing-ms", b"123"),
    (b"x-ratelimit-remaining-requests", b"99"),
    (b"x-ratelimit-remaining-tokens", b"149000"),
    (b"cf-ray", b"8a1b2c3d4e5f-SJC"),
    (b"alt-svc", b'h3=":443"; ma=86400'),
    (b"date", b"Fri, 04 Dec 2026 20:00:00 GMT"),
    (b"server", b"rawgw"),
]
REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"


def one(cls: type[h11.Connection], framing: tuple[bytes, bytes] | None) -> None:
    conn = cls(h11.SERVER)
    conn.receive_data(REQUEST)
    conn.next_event()
    conn.next_event()
    if framing is not None:
        conn.send(trusted_response(200, [*HEADERS, framing], b"OK"))


def main() -> None:
    n = 20000
    best = lambda f: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6  # noqa: E731
    base = best(lambda: one(h11.Connection, None))
    print(f"receive the request only: {base:.1f} µs")
    for label, framing in (("content-length", (b"content-length", b"600")), ("chunked", (b"transfer-encoding", b"chunked"))):
        plain = best(lambda framing=framing: one(h11.Connection, framing)) - base
        ours = best(lambda framing=framing: one(ServerConnection, framing)) - base
        print(f"{label:15s} head send: h11.Connection {plain:5.1f} µs   ServerConnection {ours:5.1f} µs   ({ours - plain:+.1f})")


if __name__ == "__main__":
    main()
