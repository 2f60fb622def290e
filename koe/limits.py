"""Limits that keep a shared demo affordable: per session (minutes, idle time, cost) and per server
(concurrent sessions, sessions per visitor per hour, cost per day).

The engine enforces them, not the UI: `Limiter.admit` refuses a session before it starts, and the
relay consults the `SessionGuard` it was given on every server event and on a timer, and ends the
call with the guard's reason. 0 turns a limit off. Figures are per process: several app servers
behind a load balancer each apply them to their own sessions (see the README).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from koe.pricing import cost_usd, token_counts

__all__ = ["LimitReached", "Limiter", "Limits", "SessionGuard", "start_of_day"]


class Limits(BaseModel):
    """Public-demo defaults; each can be set by its environment variable or secret (0 = no limit)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, hide_input_in_errors=True)

    max_session_minutes: float = Field(10.0, ge=0, validation_alias="KOE_MAX_SESSION_MINUTES")
    idle_timeout_s: float = Field(120.0, ge=0, validation_alias="KOE_IDLE_TIMEOUT_S")
    max_concurrent_sessions: int = Field(4, ge=0, validation_alias="KOE_MAX_CONCURRENT_SESSIONS")
    max_sessions_per_hour: int = Field(6, ge=0, validation_alias="KOE_MAX_SESSIONS_PER_HOUR")
    max_session_cost_usd: float = Field(0.50, ge=0, validation_alias="KOE_MAX_SESSION_COST_USD")
    max_daily_cost_usd: float = Field(5.00, ge=0, validation_alias="KOE_MAX_DAILY_COST_USD")


class LimitReached(Exception):
    """A session may not start; the message says why, in words for the visitor."""


def start_of_day(now: float | None = None) -> float:
    """Local midnight, in epoch seconds: the daily budget resets then."""
    day = datetime.fromtimestamp(time.time() if now is None else now).date()
    return datetime(day.year, day.month, day.day).timestamp()


# What counts as the user being there: their speech, and the AI finishing a reply to them.
_ACTIVITY = {"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "response.created", "output_audio_buffer.stopped"}


class SessionGuard:
    """One admitted session's clock, idle timer and spend. Thread-safe enough for its use: the relay
    loop writes, UI threads only read the figures."""

    def __init__(self, limiter: Limiter, *, model: str, billed: bool, clock: Callable[[], float]) -> None:
        self.limits = limiter.limits
        self.model, self.billed = model, billed
        self.input_tokens = self.output_tokens = 0
        self.cost_usd = 0.0
        self._limiter, self._clock = limiter, clock
        self.started = self._last_activity = clock()
        self._released = False
        self._ended: float | None = None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the start; stops counting once the session is released."""
        return (self._ended if self._ended is not None else self._clock()) - self.started

    def ends_in(self) -> tuple[float, str] | None:
        """(seconds, why) until the nearer time limit ends the session (session minutes or idle
        time), or None without time limits or once released."""
        if self._ended is not None:
            return None
        limits, now = self.limits, self._clock()
        candidates = []
        if limits.max_session_minutes:
            candidates.append((self.started + limits.max_session_minutes * 60 - now,
                               f"the {limits.max_session_minutes:g}-minute limit"))
        if limits.idle_timeout_s:
            candidates.append((self._last_activity + limits.idle_timeout_s - now, "no speech (idle timeout)"))
        return min(candidates) if candidates else None

    def observe(self, event: dict[str, Any]) -> str | None:
        """Feed one server event; returns the reason to end the session now, or None."""
        kind = event.get("type")
        if kind in _ACTIVITY:
            self._last_activity = self._clock()
        response = event.get("response")
        if kind == "response.done" and isinstance(response, dict) and isinstance(response.get("usage"), dict):
            usage = response["usage"]
            counts = token_counts(usage)
            self.input_tokens += counts.input_tokens
            self.output_tokens += counts.output_tokens
            cost = cost_usd(self.model, usage) if self.billed else 0.0
            self.cost_usd += cost
            self._limiter.spend(cost)
            return self.check()
        return None

    def check(self) -> str | None:
        """The reason this session must end now (time, idleness, cost), or None."""
        limits, now = self.limits, self._clock()
        if limits.max_session_minutes and now - self.started >= limits.max_session_minutes * 60:
            return f"the session reached its {limits.max_session_minutes:g}-minute limit"
        if limits.idle_timeout_s and now - self._last_activity >= limits.idle_timeout_s:
            return f"no speech for {limits.idle_timeout_s:g} seconds (idle timeout)"
        if limits.max_session_cost_usd and self.cost_usd >= limits.max_session_cost_usd:
            return f"the session reached its ${limits.max_session_cost_usd:.2f} cost cap"
        if limits.max_daily_cost_usd and self._limiter.spent_today >= limits.max_daily_cost_usd:
            return f"today's ${limits.max_daily_cost_usd:.2f} budget for this demo is spent"
        return None

    def release(self) -> None:
        """Give the concurrency slot back (idempotent)."""
        if not self._released:
            self._released = True
            self._ended = self._clock()
            self._limiter.release()


class Limiter:
    """Process-wide admission and the day's spend.

    `sessions_since(visitor, since)` counts a visitor's sessions started since then and
    `spent_since(since)` the stored spend (the session store's `totals`); the day's spend is read
    once per day and grown by each reply after that, so no reply is counted twice.
    """

    def __init__(self, limits: Limits, *, sessions_since: Callable[[str, float], int],
                 spent_since: Callable[[float], float], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._sessions_since, self._spent_since = sessions_since, spent_since
        self._clock, self._wall_clock = clock, wall_clock
        self._lock = threading.Lock()
        self._active = 0
        self._day: float | None = None
        self._spent = 0.0

    @property
    def active(self) -> int:
        return self._active

    @property
    def spent_today(self) -> float:
        with self._lock:
            return self._roll_day()

    def _roll_day(self) -> float:
        day = start_of_day(self._wall_clock())
        if day != self._day:
            self._day, self._spent = day, self._spent_since(day)
        return self._spent

    def spend(self, usd: float) -> None:
        with self._lock:
            self._roll_day()
            self._spent += usd

    def admit(self, visitor: str, *, model: str, billed: bool, exempt: bool = False) -> SessionGuard:
        """A guard for a new session, or LimitReached. `exempt` (the owner) skips the hourly quota."""
        limits = self.limits
        with self._lock:
            if limits.max_daily_cost_usd and self._roll_day() >= limits.max_daily_cost_usd:
                raise LimitReached(f"today's ${limits.max_daily_cost_usd:.2f} budget for this demo is spent: "
                                   "try again tomorrow")
            if limits.max_concurrent_sessions and self._active >= limits.max_concurrent_sessions:
                raise LimitReached(f"all {self._active} conversation slots of this server are in use: "
                                   "try again in a few minutes")
            if not exempt and limits.max_sessions_per_hour:
                started = self._sessions_since(visitor, self._wall_clock() - 3600)
                if started >= limits.max_sessions_per_hour:
                    raise LimitReached(f"you have started {started} conversations in the last hour, the most "
                                       "allowed: try again later")
            self._active += 1
        return SessionGuard(self, model=model, billed=billed, clock=self._clock)

    def release(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)
