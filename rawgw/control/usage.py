"""Requests and tokens per key, provider and model over the last hour / day (GET /admin/usage).

The recorder's counters are totals since start; the admin page wants recent windows. This
keeps one small table per wall-clock minute (at most 24 h of them), fed from each finished
proxied ``RequestRecord``: adding is a dict update, a summary sums at most 1440 tables.
In memory, per process (each worker reports its own traffic).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

BUCKET_S: Final = 60.0
KEEP_S: Final = 86400.0

Cell = list[int]  # [requests, prompt tokens, completion tokens]
Slot = tuple[str, str, str]  # (key name, provider, model)


class UsageWindow:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.buckets: deque[tuple[int, dict[Slot, Cell]]] = deque()

    def add(self, key: str, provider: str, model: str, prompt: int, completion: int) -> None:
        minute = int(self.clock() // BUCKET_S)
        b = self.buckets
        if not b or b[-1][0] != minute:
            b.append((minute, {}))
            while b and b[0][0] <= minute - KEEP_S / BUCKET_S:
                b.popleft()
        cell = b[-1][1].get((key, provider, model))
        if cell is None:
            b[-1][1][(key, provider, model)] = [1, prompt, completion]
        else:
            cell[0] += 1
            cell[1] += prompt
            cell[2] += completion

    def summary(self, window_s: float) -> dict[str, Any]:
        """``{"keys": {name: counts}, "providers": {...}, "models": {...}}`` over the window,
        counts being ``requests``, ``prompt_tokens``, ``completion_tokens``, ``tokens``."""
        since = (self.clock() - window_s) // BUCKET_S
        out: dict[str, dict[str, dict[str, int]]] = {"keys": {}, "providers": {}, "models": {}}
        for minute, table in self.buckets:
            if minute <= since:
                continue
            for (key, provider, model), (n, p, c) in table.items():
                for section, name in (("keys", key), ("providers", provider), ("models", model)):
                    row = out[section].setdefault(name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0})
                    row["requests"] += n
                    row["prompt_tokens"] += p
                    row["completion_tokens"] += c
                    row["tokens"] += p + c
        return out
