"""Garbage-collector settings for a serving process (issue 15).

With CPython's defaults (700, 10, 10) a gateway under load ran a young collection every
~37 requests and a full one every ~5,000, and each full collection walked every object
the process built at start-up (modules, config, router tables): 6.3 µs of GC per proxied
request at 64 connections (``python bench/gc_stats.py``, ``gc.callbacks`` in the
gateway). After start-up (and after each reload) the objects that exist are frozen —
left out of every later collection — and the young generation is larger: 1.1 µs.

Only the serving process opts in (``enable``); a library user's or a test runner's
collector is left as it was. Frozen objects are still freed by reference counting; a
reload unfreezes and collects first, so the old config's cycles do not pile up.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # CPython's default is 700

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True
    settle()
    t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(max(t0, YOUNG), t1, t2)


def settle() -> None:
    """Collect what start-up or a reload left behind, then freeze what survives."""
    if not _enabled:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
