"""How many conversations the local backend takes at once, so that a caller beyond its capacity is
refused at once (429, OpenAI's error shape, `Retry-After`) instead of making every running call slow
and choppy.

Capacity comes from `--max-calls` / `$KOE_LOCAL_MAX_CALLS`, else CALLS_PER_CORE conversations per core this
process may use (the models run on the CPU). 0 = no limit.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from koe.local.scheduler import cores

__all__ = ["CALLS_PER_CORE", "MAX_CALLS_ENV", "Admission", "busy_message", "default_max_calls"]

MAX_CALLS_ENV = "KOE_LOCAL_MAX_CALLS"
# bench/load.py on 2 quiet cores, the default reply model: 4 callers at once kept end of speech -> first reply
# audio at p50 1.15 s (1.7x one caller's), 6 reached 2.2 s and 8 doubled it; so 2 a core, the 1.5 s goal.
CALLS_PER_CORE = 2
TYPICAL_CALL_S = 60.0  # how long a call lasts until some have ended here
RETRY_BOUNDS_S = (5, 120)


def default_max_calls(environ: dict[str, str] | None = None) -> int:
    """$KOE_LOCAL_MAX_CALLS if set (ValueError unless an integer ≥ 0), else CALLS_PER_CORE times the cores
    this process may use (its CPU affinity, so a container's limit counts)."""
    raw = (os.environ if environ is None else environ).get(MAX_CALLS_ENV, "").strip()
    if raw:
        value = int(raw)
        if value < 0:
            raise ValueError(f"{MAX_CALLS_ENV} must be 0 (no limit) or more")
        return value
    return CALLS_PER_CORE * cores()


def busy_message(max_calls: int, wait_s: int) -> str:
    """What a caller refused for want of a slot reads: every one of `max_calls` is taken, try again in `wait_s`."""
    return f"The local backend is busy: all {max_calls} conversation slots are in use. Try again in {wait_s} s."


class Admission:
    """The running conversations' slots. Not thread-safe: the server's event loop alone uses it.

    `enter(key)` takes a slot for a new call or WebSocket session (False when full); `leave(key)` gives
    it back (idempotent). `retry_after_s()` estimates when a slot frees: a typical call's length (the
    median of the last ones to end here) less the age of the oldest running call.
    """

    def __init__(self, max_calls: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_calls < 0:
            raise ValueError("max_calls must be 0 (no limit) or more")
        self.max_calls = max_calls
        self._clock = clock
        self._running: dict[Hashable, float] = {}  # key → when it started
        self._lengths: deque[float] = deque(maxlen=20)  # seconds, of the calls that ended last

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def full(self) -> bool:
        return bool(self.max_calls) and len(self._running) >= self.max_calls

    def enter(self, key: Hashable) -> bool:
        if self.full:
            return False
        self._running[key] = self._clock()
        return True

    def leave(self, key: Hashable) -> None:
        started = self._running.pop(key, None)
        if started is not None:
            self._lengths.append(self._clock() - started)

    def retry_after_s(self) -> int:
        typical = statistics.median(self._lengths) if self._lengths else TYPICAL_CALL_S
        oldest = self._clock() - min(self._running.values(), default=self._clock())
        low, high = RETRY_BOUNDS_S
        return int(min(high, max(low, typical - oldest)))

    def load(self) -> dict[str, Any]:
        """What /healthz reports: running calls, capacity (0 = none set), the share in use, and whether full."""
        return {"calls": self.running, "max_calls": self.max_calls,
                "load": round(self.running / self.max_calls, 3) if self.max_calls else 0.0, "full": self.full}
