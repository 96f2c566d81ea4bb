"""Pre-forked workers sharing one port via SO_REUSEPORT, under a small supervisor.

The supervisor reserves the port (so ``--port 0`` gets one real port for all),
forks N workers that each bind their own SO_REUSEPORT socket (the kernel spreads
connections evenly), restarts a worker that dies, and passes SIGTERM/SIGINT/SIGHUP
on. It runs no event loop: signals are taken synchronously with sigtimedwait.

Without ``[state] url`` state is per worker: rate-limit buckets (each worker allows
rate/N), key cooldowns and breakers, the response cache and the model-list cache;
``/metrics`` sums every worker (rawgw.observe.siblings).
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

from rawgw.config import Config

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
RESTART_BACKOFF_S = 1.0


def _reuseport_socket(host: str, port: int, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
        sock.setblocking(False)
    return sock


def _worker_main(config: Config, path: str, host: str, port: int, workers: int, ready_fd: int, index: int = 0, siblings_dir: str | None = None) -> int:
    """Runs in the forked child."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    import logging

    from rawgw.logsetup import setup_logging
    from rawgw.serve import install_event_loop_policy, serve_forever

    # The parent's log thread did not survive fork: start this worker's own.
    setup_logging(logging.getLevelName(logging.getLogger().level).lower())

    install_event_loop_policy()
    sock = _reuseport_socket(host, port, listen=True)

    def announce(_server: object) -> None:
        try:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        except OSError:
            pass  # a restarted worker: nobody waits for it

    return asyncio.run(
        serve_forever(config, path, sock=sock, announce=announce, workers=workers, siblings_dir=siblings_dir, worker_index=index)
    )


def run_workers(config: Config, path: str, host: str, port: int, workers: int) -> int:
    reserve = _reuseport_socket(host, port, listen=False)
    # Each worker answers its metrics snapshot on a unix socket here, so that a scrape
    # reaching any of them sums them all (rawgw.observe.siblings). Private to this group.
    siblings_dir = tempfile.mkdtemp(prefix="rawgw-workers-")
    port = reserve.getsockname()[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                code = _worker_main(config, path, host, port, workers, w, index, siblings_dir)
            finally:
                os._exit(code)
        os.close(w)
        children[pid] = index
        return pid, r

    pipes = [spawn(i)[1] for i in range(workers)]
    deadline = time.monotonic() + 30
    waiting = set(pipes)
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(list(waiting), [], [], 0.5)
        for fd in readable:
            os.read(fd, 1)
            os.close(fd)
            waiting.discard(fd)
        if any(os.waitpid(pid, os.WNOHANG)[0] for pid in list(children)):
            print("rawgw: a worker failed to start", file=sys.stderr, flush=True)
            _stop_all(children, signal.SIGTERM)
            shutil.rmtree(siblings_dir, ignore_errors=True)
            return 1
    shown = f"[{host}]" if ":" in host else host
    print(f"rawgw listening on http://{shown}:{port}", flush=True)
    print(f"rawgw: {workers} workers share the port (SO_REUSEPORT)", file=sys.stderr, flush=True)
    stopping = False
    while children:
        info = signal.sigtimedwait(SIGNALS, 1.0)
        if info is None:
            continue
        if info.si_signo in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            _stop_all(children, signal.SIGTERM)
        elif info.si_signo == signal.SIGHUP:
            _stop_all(children, signal.SIGHUP)
        # reap whatever ended (SIGCHLD, or a stop)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            index = children.pop(pid, None)
            if index is not None and not stopping:
                print(f"rawgw: worker {index} (pid {pid}) exited with status {status}; restarting", file=sys.stderr, flush=True)
                if signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], RESTART_BACKOFF_S) is not None:
                    stopping = True
                    _stop_all(children, signal.SIGTERM)
                    continue
                _, fd = spawn(index)
                os.close(fd)
    reserve.close()
    shutil.rmtree(siblings_dir, ignore_errors=True)
    return 0


def _stop_all(children: dict[int, int], sig: int) -> None:
    for pid in list(children):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            children.pop(pid, None)
