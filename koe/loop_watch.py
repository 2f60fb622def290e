"""How late an event loop runs what it was asked to run: the audio's view of a stalled loop.

streamlit-webrtc runs the browser's peer on Streamlit's own loop, which also serves every page
and fragment rerun: a loop that answers 150 ms late is a 150 ms gap in the audio sent to the
browser. A `LoopWatch` asks the loop to wake it every 20 ms and keeps how late each wake-up was.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass

log = logging.getLogger("koe.loop")

INTERVAL_S = 0.02  # one audio frame
WARN_MS = 100.0  # a stall this long is an audible gap: worth a log line
WARN_EVERY_S = 10.0  # at most one such line per 10 s, so a sick loop cannot flood the log


@dataclass(frozen=True)
class LoopLag:
    """How late the loop's wake-ups were over a recent window, in ms."""

    wakeups: int
    p50_ms: float
    p99_ms: float
    worst_ms: float


class LoopWatch:
    """Measures an event loop's lateness from inside it; read `lag()` from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window_s: float = 10.0, name: str = "the media loop") -> None:
        self._loop = loop
        self._name = name
        self._late: deque[tuple[float, float]] = deque()  # (when, ms late), oldest first
        self._window_s = window_s
        self._lock = threading.Lock()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._warned_at = -math.inf

    def start(self) -> LoopWatch:
        self._loop.call_soon_threadsafe(self._arm)
        return self

    def stop(self) -> None:
        def cancel() -> None:
            if self._handle is not None:
                self._handle.cancel()
        self._loop.call_soon_threadsafe(cancel)

    def lag(self) -> LoopLag:
        with self._lock:
            late = sorted(ms for _, ms in self._late)
        if not late:
            return LoopLag(0, 0.0, 0.0, 0.0)
        return LoopLag(len(late), late[len(late) // 2], late[min(len(late) - 1, int(len(late) * 0.99))], late[-1])

    def _arm(self) -> None:
        self._due = self._loop.time() + INTERVAL_S
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        late_ms = max(0.0, (now - self._due) * 1000)
        with self._lock:
            self._late.append((now, late_ms))
            while self._late[0][0] < now - self._window_s:
                self._late.popleft()
        if late_ms >= WARN_MS and now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s stalled for %.0f ms: the audio it carries had a gap that long", self._name, late_ms)
        self._arm()
