"""The listening socket's edges a user sees: the SPEC 2 line and a bind that fails."""

from __future__ import annotations

import os
import socket
import sys

from rawgw.http.netloc import authority


class ListenError(Exception):
    """The gateway cannot listen where it was asked; ``str()`` is the one line to print."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
            reason = exc.strerror or str(exc)
        else:
            # asyncio re-raises bind errors with a long message of its own: the errno's
            # text is what the user needs ("Address already in use").
            reason = os.strerror(exc.errno)
        super().__init__(f"rawgw: cannot listen on {authority(host, port)}: {reason}")
        self.errno = exc.errno


def reuseport_socket(host: str, port: int, listen: bool) -> socket.socket:
    """A SO_REUSEPORT socket bound to ``host:port``; a failure is a :class:`ListenError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(1024)
            sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from None
    return sock


def announce_listening(url: str, suffix: str = "") -> None:
    """Print ``rawgw listening on URL`` as ONE write(2) of a whole line.

    ``print()`` writes the text and the newline separately; with an unbuffered stdout
    (PYTHONUNBUFFERED, set in most container images) and stderr in the same pipe, a log
    line written by another thread could land between them and glue itself to the URL.
    A single write of less than PIPE_BUF bytes is atomic, so the line always stands alone.
    """
    line = f"rawgw listening on {url}{suffix}\n"
    out = sys.stdout
    try:
        out.flush()  # anything printed before goes first
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        out.write(line)  # not a real file (an in-process caller's stand-in)
        out.flush()
        return
    data = line.encode()
    while data:
        data = data[os.write(fd, data) :]
