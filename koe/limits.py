"""Limits that keep a shared demo affordable: per session (minutes, idle time, cost) and per server
(concurrent sessions, sessions per visitor per hour, cost per day).

The engine enforces them, not the UI: `Limiter.admit` refuses a session before it starts, and the
relay consults the `SessionGuard` it was given on every server event and on a timer, and ends the
call with the guard's reason. 0 turns a limit off.

The day's spend and each visitor's admissions are counted in the database (`Ledger`), so app servers
sharing one (PostgreSQL, `KOE_DATABASE_URL`) share one daily budget and one hourly quota per visitor;
each count is one transaction, so concurrent sessions lose no update. Concurrent sessions are a
machine's capacity and stay per process. The relay's loop never waits on the database: spends are
handed to a thread, and a session's checks read the day's spend as last counted (re-read every
few seconds, so another server's spending is seen).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from koe.db import admissions, limit_counters, write_transaction
from koe.pricing import cost_usd, token_counts

__all__ = ["LimitReached", "Ledger", "Limiter", "Limits", "SessionGuard", "start_of_day"]

log = logging.getLogger("koe.limits")

SPENT = "cost_usd"  # the ledger's counter of the day's spend, in USD
REFRESH_S = 3.0  # how often running sessions re-read the day's spend (other servers spend too)
SPEND_QUEUE = 1000


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


class Ledger:
    """The limits' counters in the database: admissions per visitor and named totals per period.
    Every method is one transaction and may wait on the database (never call it on a media loop).
    Raises SQLAlchemy's errors when the database is unreachable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def admit(self, visitor: str, *, since: float, most: int, now: float) -> int:
        """Record an admission of `visitor` at `now` unless `most` were recorded since `since`;
        returns how many there were before. Admissions of one visitor are counted one at a time,
        across processes, so concurrent ones cannot both take the last place."""
        with write_transaction(self.engine, lock=f"koe.admit:{visitor}") as conn:
            conn.execute(delete(admissions).where(admissions.c.visitor == visitor, admissions.c.at < since))
            before = conn.execute(select(func.count()).where(admissions.c.visitor == visitor,
                                                             admissions.c.at >= since)).scalar_one()
            if before < most:
                conn.execute(insert(admissions).values(visitor=visitor, at=now))
        return before

    def add(self, name: str, period: float, amount: float) -> float:
        """Add `amount` to the counter `name` of the period starting at `period`; returns its new total
        (everyone's). Atomic: an upsert that adds in the database, not a read then a write."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = dialect_insert(limit_counters).values(name=name, period=period, value=amount)
        statement = statement.on_conflict_do_update(
            index_elements=["name", "period"], set_={"value": limit_counters.c.value + statement.excluded.value})
        with write_transaction(self.engine) as conn:
            return conn.execute(statement.returning(limit_counters.c.value)).scalar_one()

    def value(self, name: str, period: float) -> float:
        """The counter's total for the period starting at `period` (0 if nothing was counted)."""
        with self.engine.connect() as conn:
            found = conn.execute(select(limit_counters.c.value).where(
                limit_counters.c.name == name, limit_counters.c.period == period)).scalar()
        return found or 0.0


class Limiter:
    """Admission and the day's spend: concurrency per process, the rest counted in the `ledger`.

    `admit` and `refresh` wait on the database (script threads); `spend`, `spent_today` and the
    guards' checks never do (the relay's loop): a thread of the limiter's own writes the spends.
    """

    def __init__(self, limits: Limits, ledger: Ledger, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, refresh_s: float = REFRESH_S) -> None:
        self.limits, self.ledger = limits, ledger
        self._clock, self._wall_clock, self._refresh_s = clock, wall_clock, refresh_s
        self._lock = threading.Lock()
        self._counting = threading.Condition(self._lock)  # notified as queued spends get counted
        self._active = 0
        self._day, self._spent = start_of_day(wall_clock()), 0.0  # the day's spend as last counted
        self._pending, self._pending_usd = 0, 0.0  # spends queued, not yet counted in the ledger
        self._spends: queue.Queue[tuple[float, float] | None] = queue.Queue(SPEND_QUEUE)
        self._thread = threading.Thread(target=self._run, name="koe-ledger", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        return self._active

    @property
    def spent_today(self) -> float:
        """Today's spend on every server sharing the database, as last counted (never waits)."""
        with self._lock:
            return self._spent if self._day == start_of_day(self._wall_clock()) else 0.0

    def _counted(self, day: float, total: float | None, settled: float | None = None) -> None:
        """The ledger's `total` for `day` (None: no figure), plus what is still queued here; `settled`:
        the queued spend this answer was for (counted, or lost with an error)."""
        with self._counting:
            if settled is not None:
                self._pending -= 1
                self._pending_usd -= settled
                self._counting.notify_all()
            if total is not None and day >= self._day:
                self._day, self._spent = day, total + self._pending_usd

    def refresh(self) -> float:
        """Read today's spend from the database now; returns it."""
        day = start_of_day(self._wall_clock())
        total = self.ledger.value(SPENT, day)
        self._counted(day, total)
        return total

    def spend(self, usd: float) -> None:
        """Count a reply's cost (never waits: the limiter's thread adds it to the ledger)."""
        day = start_of_day(self._wall_clock())
        with self._lock:
            if day == self._day:
                self._spent += usd
            self._pending += 1
            self._pending_usd += usd
        try:
            self._spends.put_nowait((day, usd))
        except queue.Full:  # only a database stalled for a thousand replies gets here
            log.error("the limits' ledger is stalled: $%.4f not counted", usd)
            self._counted(day, None, settled=usd)

    def _run(self) -> None:
        item: tuple[float, float] | tuple[()] | None
        while True:
            try:
                item = self._spends.get(timeout=self._refresh_s)
            except queue.Empty:
                item = ()
            if item is None:
                return
            total = None
            try:
                if item:
                    total = self.ledger.add(SPENT, item[0], item[1])
                else:  # other servers spend too; and the owner's meter shows the day's figure
                    self.refresh()
            except SQLAlchemyError as exc:
                log.error("the limits' ledger could not count: %s", type(exc).__name__)
            finally:
                if item:
                    self._counted(item[0], total, settled=item[1])

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every spend so far is counted in the ledger; False if that took over `timeout_s`."""
        with self._counting:
            return self._counting.wait_for(lambda: self._pending <= 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Count what is queued, then stop the limiter's thread. Idempotent."""
        if self._thread.is_alive():
            self._spends.put(None)
            self._thread.join(timeout_s)

    def admit(self, visitor: str, *, model: str, billed: bool, exempt: bool = False) -> SessionGuard:
        """A guard for a new session, or LimitReached. `exempt` (the owner) skips the hourly quota.
        Waits on the database (the day's spend, the visitor's admissions)."""
        limits = self.limits
        with self._lock:
            if limits.max_concurrent_sessions and self._active >= limits.max_concurrent_sessions:
                raise LimitReached(f"all {self._active} conversation slots of this server are in use: "
                                   "try again in a few minutes")
            self._active += 1  # held while the database decides; given back if it refuses
        try:
            self.flush()  # this server's own spends first, then everyone's
            if limits.max_daily_cost_usd and self.refresh() >= limits.max_daily_cost_usd:
                raise LimitReached(f"today's ${limits.max_daily_cost_usd:.2f} budget for this demo is spent: "
                                   "try again tomorrow")
            if not exempt and limits.max_sessions_per_hour:
                now = self._wall_clock()
                started = self.ledger.admit(visitor, since=now - 3600, most=limits.max_sessions_per_hour, now=now)
                if started >= limits.max_sessions_per_hour:
                    raise LimitReached(f"you have started {started} conversations in the last hour, the most "
                                       "allowed: try again later")
        except SQLAlchemyError as exc:  # fail closed: a budget that cannot be checked is not spent
            self.release()
            log.error("the limits could not be checked: %s", type(exc).__name__)
            raise LimitReached("this demo's limits cannot be checked right now (its database is unreachable): "
                               "try again in a minute") from None
        except BaseException:
            self.release()
            raise
        return SessionGuard(self, model=model, billed=billed, clock=self._clock)

    def release(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)
