"""This process's CPU, memory and file descriptors, read from /proc at scrape time.

The names and meanings are Prometheus' standard ``process_*`` collector's, so existing
dashboards and alerts work unchanged. Each worker reports itself: ``process_cpu_seconds_total``
is a counter and the rest are gauges, so a sum over workers is meaningful (except
``process_start_time_seconds`` and ``process_max_fds``, which are per process by nature).

One scrape reads two small procfs files and lists /proc/self/fd: the kernel answers
from memory, so this never waits on a disk. Off Linux every value is None and the
families are left out, as prometheus_client does.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = resource.getpagesize()
_start_time: float | None = None


@dataclass(frozen=True, slots=True)
class ProcessStats:
    cpu_seconds: float
    resident_memory_bytes: int
    virtual_memory_bytes: int
    open_fds: int
    max_fds: int
    start_time: float


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def read() -> ProcessStats | None:
    global _start_time
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # proc(5): fields after the parenthesised comm (which may hold spaces or ')').
        fields = stat[stat.rindex(b")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        start_ticks, vsize, rss_pages = int(fields[19]), int(fields[20]), int(fields[21])
        if _start_time is None:
            _start_time = _boot_time() + start_ticks / _TICKS
        open_fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ProcessStats(
        cpu_seconds=(utime + stime) / _TICKS,
        resident_memory_bytes=rss_pages * _PAGE,
        virtual_memory_bytes=vsize,
        open_fds=open_fds,
        max_fds=soft,
        start_time=_start_time,
    )


def render(out: list[str], p: ProcessStats | None) -> None:
    """Append the text-format families of ``p`` (from ``read()``; nothing when None)."""
    if p is None:
        return
    for name, kind, help_text, value in (
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", repr(p.cpu_seconds)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", str(p.resident_memory_bytes)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", str(p.virtual_memory_bytes)),
        ("process_open_fds", "gauge", "Number of open file descriptors.", str(p.open_fds)),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", str(p.max_fds)),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", repr(p.start_time)),
    ):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name} {value}")
