"""Pre-forked workers sharing one port via SO_REUSEPORT, under a small supervisor.

The supervisor reserves the port (so ``--port 0`` gets one real port for all),
forks N workers that each bind their own SO_REUSEPORT socket (the kernel spreads
connections evenly), restarts a worker that dies, and passes SIGTERM/SIGINT/SIGHUP
on. It runs no event loop: signals are taken synchronously with sigtimedwait.

That only works while no thread of the supervisor can take a signal itself: the kernel
hands a process-directed signal to any thread that does not block it, and there the
default action applies (SIGCHLD discarded, so a dead worker is never reaped and the
supervisor waits forever; SIGTERM or SIGHUP kill the supervisor and orphan the
workers). So the signals are blocked before anything else, and the supervisor starts
no thread at all (its console log is written synchronously).

Without ``[state] url`` state is per worker: rate-limit buckets (each worker allows
rate/N), key cooldowns and breakers, the response cache and the model-list cache.
``/metrics`` sums every worker: each answers a snapshot on a unix socket in a directory
the supervisor makes (rawgw.observe.siblings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time

from rawgw.config import Config, ConfigError
from rawgw.http.netloc import authority
from rawgw.listen import ListenError, announce_listening, reuseport_socket
from rawgw.logsetup import setup_plain_logging

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A worker that dies sooner than this after its start is restarted this long after
# that start (a crash loop costs one fork a second, not a busy loop).
RESTART_BACKOFF_S = 1.0
# After SIGTERM, a worker still running shutdown_grace_s + this later is SIGKILLed.
KILL_AFTER_S = 5.0
STARTUP_TIMEOUT_S = 30.0

log = logging.getLogger("rawgw")


def _worker_main(
    config: Config,
    path: str,
    host: str,
    port: int,
    workers: int,
    ready_fd: int,
    log_level: str,
    index: int = 0,
    siblings_dir: str | None = None,
) -> int:
    """Runs in the forked child, with SIGNALS still blocked (inherited from the supervisor).

    They stay blocked until serve_forever has installed its handlers: a SIGTERM or
    SIGHUP that arrives while the worker starts waits for them, instead of killing the
    worker by the default action (or being lost).
    """
    from rawgw.logsetup import setup_logging
    from rawgw.serve import install_event_loop_policy, serve_forever

    setup_logging(log_level)  # its thread inherits the blocked mask: signals reach the main thread
    install_event_loop_policy()
    try:
        sock = reuseport_socket(host, port, listen=True)
    except ListenError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2

    def announce(_server: object) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # handlers in place: let them in
        try:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        except OSError:
            pass  # a restarted worker: nobody waits for it

    return asyncio.run(
        serve_forever(
            config, path, sock=sock, announce=announce, workers=workers, log_warnings=False, siblings_dir=siblings_dir, worker_index=index
        )
    )


def run_workers(config: Config, path: str, host: str, port: int, workers: int, log_level: str = "info") -> int:
    """The supervisor; raises :class:`ListenError` when the port cannot be reserved."""
    # First, before any thread or child exists (see the module docstring).
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    setup_plain_logging(log_level)
    reserve = reuseport_socket(host, port, listen=False)
    # Each worker answers its metrics snapshot on a unix socket here, so that a scrape
    # reaching any of them sums them all (rawgw.observe.siblings). Private to this group.
    siblings_dir = tempfile.mkdtemp(prefix="rawgw-workers-")
    try:
        return _Supervisor(config, path, host, reserve.getsockname()[1], workers, log_level, siblings_dir).run()
    finally:
        reserve.close()
        shutil.rmtree(siblings_dir, ignore_errors=True)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Supervisor:
    def __init__(self, config: Config, path: str, host: str, port: int, workers: int, log_level: str, siblings_dir: str | None = None) -> None:
        self.siblings_dir = siblings_dir
        self.config = config  # the last good config: what a restarted worker starts with
        self.path = path
        self.host = host
        self.port = port
        self.workers = workers
        self.log_level = log_level
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
        self.restarts: list[tuple[float, int]] = []  # (when, worker index)
        self.stopping = False
        self.kill_at: float | None = None

    def spawn(self, index: int) -> int:
        """Fork worker ``index``; returns the read end of its ready pipe."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                code = _worker_main(self.config, self.path, self.host, self.port, self.workers, w, self.log_level, index, self.siblings_dir)
            finally:
                os._exit(code)
        os.close(w)
        self.children[pid] = (index, time.monotonic())
        return r

    def run(self) -> int:
        failed = self.start_all()
        if failed is not None:
            self.on_signal(signal.SIGTERM)
            self.wait_all()
            return failed
        if not set(signal.sigpending()) & set(STOP_SIGNALS):  # asked to stop while starting: no line
            announce_listening(f"http://{authority(self.host, self.port)}")
            print(f"rawgw: {self.workers} workers share the port (SO_REUSEPORT)", file=sys.stderr, flush=True)
            for warning in self.config.warnings:  # once here, not once per worker
                log.warning("%s", warning)
        self.wait_all()
        return 0

    def start_all(self) -> int | None:
        """Fork every worker and wait until each listens; the exit code if one failed.

        A SIGTERM/SIGINT meanwhile stays pending (blocked) and is taken by wait_all."""
        pipes = {self.spawn(i) for i in range(self.workers)}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pipes:
            if time.monotonic() > deadline:
                print("rawgw: workers did not start in time", file=sys.stderr, flush=True)
                return 1
            if set(signal.sigpending()) & set(STOP_SIGNALS):
                break
            readable, _, _ = select.select(list(pipes), [], [], 0.05)
            for fd in readable:
                os.read(fd, 1)
                os.close(fd)
                pipes.discard(fd)
            for pid in list(self.children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    del self.children[pid]
                    print(f"rawgw: a worker failed to start (it {_describe(status)})", file=sys.stderr, flush=True)
                    code = os.waitstatus_to_exitcode(status)
                    for fd in pipes:
                        os.close(fd)
                    return 2 if code == 2 else 1
        for fd in pipes:
            os.close(fd)
        return None

    def wait_all(self) -> None:
        """Until every worker has exited: take signals, reap, restart, escalate."""
        while self.children or (self.restarts and not self.stopping):
            now = time.monotonic()
            timeout = 1.0
            if self.restarts and not self.stopping:
                timeout = min(timeout, max(0.0, self.restarts[0][0] - now))
            if self.kill_at is not None:
                timeout = min(timeout, max(0.0, self.kill_at - now))
            info = signal.sigtimedwait(SIGNALS, timeout)
            if info is not None:
                self.on_signal(info.si_signo)
            # Reap on every wake-up, not only on SIGCHLD: several exits coalesce into one
            # SIGCHLD, and one missed would leave a dead worker waited for forever.
            self.reap()
            now = time.monotonic()
            while self.restarts and not self.stopping and self.restarts[0][0] <= now:
                _, index = self.restarts.pop(0)
                os.close(self.spawn(index))
            if self.kill_at is not None and now >= self.kill_at and self.children:
                print("rawgw: workers still running after the shutdown grace; killing them", file=sys.stderr, flush=True)
                self.stop(signal.SIGKILL)
                self.kill_at = None

    def on_signal(self, signo: int) -> None:
        if signo in STOP_SIGNALS:
            if not self.stopping:
                self.stopping = True
                self.restarts.clear()
                self.kill_at = time.monotonic() + self.config.server.shutdown_grace_s + KILL_AFTER_S
            self.stop(signal.SIGTERM)
        elif signo == signal.SIGHUP:
            self.reload()
            self.stop(signal.SIGHUP)

    def reload(self) -> None:
        """Keep the last good config for restarted workers; the workers report errors."""
        from rawgw.configfile import load_config

        try:
            self.config = load_config(self.path)
        except ConfigError:
            pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None or self.stopping:
                continue
            index, started = entry
            when = max(time.monotonic(), started + RESTART_BACKOFF_S)
            print(f"rawgw: worker {index} (pid {pid}) {_describe(status)}; restarting", file=sys.stderr, flush=True)
            self.restarts.append((when, index))
            self.restarts.sort()

    def stop(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # already dead: reap() collects it
