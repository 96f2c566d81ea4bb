"""Shared helpers of the bench scripts: processes, /proc readers, statistics, HTTP parsing.

Only the standard library (plus uvloop where a script asks for it): the bench suite must
run on a fresh machine with nothing but rawgw's own dependencies installed.
"""

from __future__ import annotations

import os
import platform
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- limits, CPUs, machine -------------------------------------------------


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": cpus(),
        "cpu_model": cpu_model(),
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


# ---- /proc ------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 4096:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def tree(pid: int) -> list[int]:
    return [pid, *children(pid)]


def cpu_split(pids: Iterable[int]) -> tuple[float, float]:
    """(utime, stime) in seconds of the given processes, from /proc/PID/stat."""
    user = system = 0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15.
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime (seconds) of the given processes, from /proc/PID/stat."""
    user, system = cpu_split(pids)
    return user + system


def sched_times(pids: Iterable[int]) -> tuple[float, float]:
    """(on-CPU, waiting-on-a-runqueue) seconds summed over every thread of ``pids``.

    From /proc/PID/task/*/schedstat (ns). The wait figure tells a gateway that is short of
    CPU because something else runs on its CPU (a shared machine) from one that is idle.
    """
    run = wait = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                f = Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()
                run += int(f[0])
                wait += int(f[1])
            except (OSError, ValueError, IndexError):
                continue
    return run / 1e9, wait / 1e9


def cpu_seconds_precise(pids: Iterable[int]) -> float:
    """On-CPU time (seconds) summed over every thread, from /proc/PID/task/*/schedstat (ns)."""
    return sched_times(pids)[0]


def rss_kib(pids: Iterable[int]) -> int:
    """VmRSS (KiB) summed over the given processes, from /proc/PID/status."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def fd_count(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def _socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def tcp_connections(pids: Iterable[int], remote_port: int | None = None, local_port: int | None = None) -> int:
    """ESTABLISHED TCP sockets owned by ``pids`` to ``remote_port`` (or from ``local_port``)."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "01" or f[9] not in inodes:
                continue
            if remote_port is not None and int(f[2].rsplit(":", 1)[1], 16) != remote_port:
                continue
            if local_port is not None and int(f[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            n += 1
    return n


# ---- statistics ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def median(values: Iterable[float | None]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ---- processes -----------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the child gets SIGTERM if the bench process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Proc:
    """A child process whose stdout lines are read by a thread into a queue."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        cpus: Sequence[int] | None = None,
        env: dict | None = None,
        cwd: str | Path | None = None,
        stderr_path: str | Path | None = None,
        stdin: bool = False,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_path = str(stderr_path) if stderr_path else None
        self._stderr = open(self.stderr_path, "wb") if self.stderr_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        pin = set(cpus) if cpus else None

        def pre() -> None:
            os.setsid()  # its own process group: we can end it and its children, and nothing else
            _die_with_parent()
            if pin:
                os.sched_setaffinity(0, pin)

        self.p = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=env,
            cwd=str(cwd) if cwd else None,
            preexec_fn=pre,
        )
        self.pid = self.p.pid
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None at EOF / after ``timeout`` seconds."""
        try:
            return self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            line = self.readline(left)
            if line is None:
                if self.p.poll() is not None or left <= 0:
                    return None
                continue
            m = rx.search(line)
            if m:
                return m

    def send(self, line: str) -> None:
        if self.p.stdin is not None:
            try:
                self.p.stdin.write(line.encode() + b"\n")
                self.p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def alive(self) -> bool:
        return self.p.poll() is None

    def stderr_tail(self, n: int = 5) -> str:
        if not self.stderr_path:
            return ""
        try:
            lines = Path(self.stderr_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM this process group, then SIGKILL after ``timeout``."""
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    self.p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        else:
            # The leader is gone; make sure no child of its group outlives it.
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except OSError:
                pass
        if self._stderr not in (None, subprocess.DEVNULL):
            try:
                self._stderr.close()  # type: ignore[union-attr]
            except OSError:
                pass
        return self.p.returncode


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_DIR) + (os.pathsep + pp if pp else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# ---- minimal HTTP/1.1 response parsing (load clients) ------------------------------


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder; no trailers expected."""

    __slots__ = ("buf", "done", "need", "state")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = 0  # bytes of chunk data left
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer
        self.done = False

    def feed(self, data: bytes, out: list[bytes]) -> int:
        """Append decoded pieces to ``out``; return how many bytes of ``data`` were used."""
        buf = self.buf
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            st = self.state
            if st == 1:
                take = min(self.need, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self.need -= take
                if self.need == 0:
                    self.state = 2
                continue
            # Line states: collect up to CRLF.
            idx = data.find(b"\n", pos)
            if idx < 0:
                buf += data[pos:]
                if len(buf) > 4096:
                    raise ValueError("chunk line too long")
                return n
            buf += data[pos : idx + 1]
            pos = idx + 1
            line = bytes(buf).rstrip(b"\r\n")
            buf.clear()
            if st == 0:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    self.state = 3
                else:
                    self.need = size
                    self.state = 1
            elif st == 2:
                if line:
                    raise ValueError("missing CRLF after chunk data")
                self.state = 0
            else:  # trailer section: ends at an empty line
                if not line:
                    self.done = True
        return pos


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """Status code and lowercase-name header dict of a response head (without CRLFCRLF)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        v = value.strip()
        if key in headers:
            headers[key] = headers[key] + b", " + v
        else:
            headers[key] = v
    return status, headers


def install_uvloop() -> str:
    try:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


def now_utc_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())


def fmt(value: float | int | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}{unit}"
    return f"{value:,.{digits}f}{unit}"


def guarded(fn: Callable[[], object], default: object = None) -> object:
    try:
        return fn()
    except Exception:
        return default
