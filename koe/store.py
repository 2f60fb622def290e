"""Conversations in the database: the one place a conversation is persisted, so that a page reload,
a STOP, a crash or an expired upstream session leaves it complete and exportable.

Writes come from the media event loop and must never wait on the database: `record_*` only put onto
a bounded queue, and one writer thread stores the raw events, folds server events into each
conversation's `Transcript`, and commits in small batches. Reads come from any thread (Streamlit
script threads) on pooled connections, never the writer's; SQLite's WAL lets them run during writes.

The database is a SQLite file (the default) or PostgreSQL (`KOE_DATABASE_URL`), shared by several
processes or app servers (`koe.db`). Each store registers itself as an owner with a heartbeat and
stamps the conversations it starts; a conversation left without an end is marked ended only once
its owner is gone (closed, its process dead, or its heartbeat stale), so a second process on the
same database never ends the first one's live conversations.

Secrets are never stored: values under keys named like api_key / authorization / *secret* /
password are replaced before anything reaches the disk. Nothing upstream should put a key into an
event or the settings; this is the second line of defense, so that one slip is not written down.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Connection, Engine, case, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from koe.db import casefold, conversations, events, items, open_database, store_owners, upsert, usage, write_transaction
from koe.export import SETTINGS_EVENTS, Format, export
from koe.pricing import cost_usd, token_counts
from koe.protocol import new_id, parse_server_event
from koe.transcript import Row, Transcript

__all__ = ["LOCAL_BACKEND", "RESTART_REASON", "SessionStore"]

log = logging.getLogger("koe.store")

LOCAL_BACKEND = "local"  # conversations started with this backend cost nothing, whatever the model
RESTART_REASON = "interrupted (app restarted)"
QUEUE_SIZE = 10_000
BATCH_ITEMS = 200
BATCH_WINDOW_S = 0.1
FULL_QUEUE_WAIT_S = 0.5
CLOSE_WAIT_S = 10.0
HEARTBEAT_S = 5.0  # how often a store says it is alive
OWNER_GONE_AFTER_S = 60.0  # a heartbeat this old means its process is gone (hung or on a lost machine)
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(r"api[-_]?key|authorization|secret|password", re.IGNORECASE)
_SPEAKERS = {"user": "You", "assistant": "AI", "function_call": "Tool call", "function_call_output": "Tool result"}
# Fixed column types, so that an empty table has the same ones as a full one.
_TRANSCRIPT_TYPES = {"speaker": "str", "text": "str", "status": "str", "latency_ms": "Int64", "item_id": "str",
                     "heard": "Int64"}
_EVENT_TYPES = {"direction": "str", "type": "str", "event_id": "str", "payload": "str"}
_USAGE_TYPES = {"response_id": "str", "model": "str", "input_text_tokens": "int64", "input_audio_tokens": "int64",
                "cached_text_tokens": "int64", "cached_audio_tokens": "int64", "output_text_tokens": "int64",
                "output_audio_tokens": "int64", "cost_usd": "float64"}
_TOKENS = ("input_text_tokens", "input_audio_tokens", "cached_text_tokens", "cached_audio_tokens",
           "output_text_tokens", "output_audio_tokens")

_c, _i, _u = conversations.c, items.c, usage.c
_CONVERSATION = select(
    _c.id, _c.started_at, _c.ended_at, _c.end_reason, _c.backend, _c.model, _c.dialect, _c.settings, _c.visitor,
    _c.title,
    select(_i.text).where(_i.conversation_id == _c.id, _i.role.in_(("user", "assistant")), func.trim(_i.text) != "")
    .order_by(_i.position).limit(1).scalar_subquery().label("first_text"),
    select(func.count()).where(_i.conversation_id == _c.id, _i.role.in_(("user", "assistant")))
    .scalar_subquery().label("turns"),
    select(func.coalesce(func.sum(_u.cost_usd), 0.0)).where(_u.conversation_id == _c.id)
    .scalar_subquery().label("cost_usd"),
)
_ITEM_COLUMNS = ("previous_item_id", "role", "text", "final", "interrupted", "at", "latency_ms", "position", "heard")


def _redact(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _local_times(seconds: Any) -> pd.DatetimeIndex:
    """Epoch seconds → naive local datetimes, as a person reading the table expects."""
    return pd.DatetimeIndex([datetime.fromtimestamp(s) for s in seconds], dtype="datetime64[us]")


def _local_day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).date().isoformat()


def _status(final: bool, interrupted: bool) -> str:
    return "interrupted" if interrupted else "final" if final else "partial"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_LIVE_OWNERS: set[str] = set()  # the stores open in this process


def _alive_here(owner: str, pid: int) -> bool:
    """Whether a store on this machine lives: in this process, only the stores open here (a
    restarted container may reuse the pid); elsewhere, whether its process runs."""
    return owner in _LIVE_OWNERS if pid == os.getpid() else _pid_alive(pid)


@dataclass(frozen=True)
class _Owner:
    """This store, as other processes see it: `owner` is unique even when a pid is reused."""

    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}")
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def heartbeat(self, conn: Connection, now: float) -> None:
        """Say this store is alive (registering again if another process had given it up)."""
        if not conn.execute(update(store_owners).where(store_owners.c.owner == self.owner)
                            .values(heartbeat_at=now)).rowcount:
            conn.execute(insert(store_owners).values(owner=self.owner, host=self.host, pid=self.pid,
                                                     started_at=now, heartbeat_at=now))

    def sweep(self, conn: Connection, now: float) -> int:
        """End the open conversations whose owner is gone; returns how many."""
        gone = [row.owner for row in conn.execute(select(store_owners)) if row.owner != self.owner and (
            row.heartbeat_at < now - OWNER_GONE_AFTER_S
            or (row.host == self.host and not _alive_here(row.owner, row.pid)))]
        last_event = select(func.max(events.c.at)).where(events.c.conversation_id == _c.id).scalar_subquery()
        ended = conn.execute(
            update(conversations)
            .where(_c.ended_at.is_(None), or_(_c.owner.is_(None), _c.owner.in_(gone),
                                             _c.owner.not_in(select(store_owners.c.owner))))
            .values(end_reason=RESTART_REASON, version=_c.version + 1,
                    ended_at=case((func.coalesce(last_event, 0.0) > _c.started_at, last_event),
                                  else_=_c.started_at))).rowcount
        if gone:
            conn.execute(delete(store_owners).where(store_owners.c.owner.in_(gone)))
        return ended


# -- what the writer thread is asked to do ---------------------------------------------------------
@dataclass(frozen=True)
class _Event:
    conversation_id: str
    direction: str
    event: dict[str, Any]
    at: float


@dataclass(frozen=True)
class _Latency:
    conversation_id: str
    item_id: str
    ms: int


@dataclass(frozen=True)
class _End:
    conversation_id: str
    reason: str
    at: float


@dataclass(frozen=True)
class _Flush:
    """Set `done` once everything queued before it is committed; `stop` ends the writer after."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


_Op = _Event | _Latency | _End | _Flush


class _Writer:
    """The writer thread's state: each conversation's transcript and the row positions last written.
    Only the writer thread touches it; `conn` is the transaction of the batch being written."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        self.transcripts: dict[str, Transcript] = {}
        self.positions: dict[str, dict[str, int]] = {}  # conversation → item id → stored position
        self.meta: dict[str, tuple[str, str]] = {}  # conversation → (model, backend)

    def write(self, batch: list[_Op]) -> None:
        """Commit `batch` in one transaction. If the database refuses it, each operation is tried
        alone, so that one bad value costs only itself; an unreachable database costs the batch."""
        ops = [op for op in batch if not isinstance(op, _Flush)]
        if not ops:
            return
        try:
            with write_transaction(self.engine) as self.conn:
                self._write(ops)
        except SQLAlchemyError as exc:
            log.error("could not commit %d store operations: %s", len(ops), type(exc).__name__)
            for conversation_id in {op.conversation_id for op in ops}:  # rebuild from what is stored
                self.transcripts.pop(conversation_id, None)
                self.positions.pop(conversation_id, None)
            if len(ops) > 1 and not isinstance(exc, OperationalError):
                for op in ops:
                    self.write([op])
        finally:
            self.conn = None

    def _write(self, ops: list[_Op]) -> None:
        changed: dict[str, set[str]] = {}  # conversation → item ids changed (its version grows)
        for op in ops:
            try:
                self._apply(op, changed)
            except SQLAlchemyError:
                raise
            except Exception:  # one bad event must not cost the rest of the batch
                log.exception("could not store %s", type(op).__name__)
        for conversation_id, item_ids in changed.items():
            self._write_items(conversation_id, item_ids)
        if changed:
            self.conn.execute(update(conversations).where(_c.id.in_(list(changed))).values(version=_c.version + 1))

    def _apply(self, op: _Op, changed: dict[str, set[str]]) -> None:
        match op:
            case _Event():
                self._store_event(op, changed)
            case _Latency():
                item_ids = self._transcript(op.conversation_id).set_latency(op.item_id, op.ms)
                if item_ids:
                    changed.setdefault(op.conversation_id, set()).update(item_ids)
            case _End():
                ended = self.conn.execute(
                    update(conversations).where(_c.id == op.conversation_id, _c.ended_at.is_(None))
                    .values(ended_at=op.at, end_reason=op.reason)).rowcount
                if ended:
                    # Rows still waiting for text will get none now: closed, and hidden when empty.
                    changed.setdefault(op.conversation_id, set()).update(
                        self._transcript(op.conversation_id).close_open_rows())

    def _store_event(self, op: _Event, changed: dict[str, set[str]]) -> None:
        payload = _redact(op.event)
        kind = payload.get("type")
        event_id = payload.get("event_id")
        self.conn.execute(insert(events).values(
            conversation_id=op.conversation_id, at=op.at, direction=op.direction,
            type=kind if isinstance(kind, str) else "", event_id=event_id if isinstance(event_id, str) else None,
            payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)))
        item_ids = changed.setdefault(op.conversation_id, set())
        if op.direction == "app" and kind == "koe.reply_cut" and isinstance(payload.get("item_id"), str):
            heard = payload.get("heard_chars")
            item_ids |= self._transcript(op.conversation_id).cut(payload["item_id"],
                                                                  heard if isinstance(heard, int) else 0)
        if op.direction != "server":
            return
        item_ids |= self._transcript(op.conversation_id).apply(parse_server_event(payload), op.at)
        response = payload.get("response")
        if kind == "response.done" and isinstance(response, dict) and isinstance(response.get("usage"), dict):
            self._store_usage(op.conversation_id, response, op.at)

    def _store_usage(self, conversation_id: str, response: dict[str, Any], at: float) -> None:
        model, backend = self._meta(conversation_id)
        usage_ = response["usage"]
        t = token_counts(usage_)
        cost = 0.0 if backend == LOCAL_BACKEND else cost_usd(model, usage_)
        row = dict(zip(_TOKENS, (t.input_text, t.input_audio, t.cached_text, t.cached_audio, t.output_text,
                                 t.output_audio)))
        upsert(self.conn, usage, [{"conversation_id": conversation_id,
                                   "response_id": str(response.get("id") or new_id("resp")),
                                   "at": at, "model": model, **row, "cost_usd": cost}],
               keys=["conversation_id", "response_id"], update=["at", "model", *_TOKENS, "cost_usd"])

    def _meta(self, conversation_id: str) -> tuple[str, str]:
        if conversation_id not in self.meta:
            found = self.conn.execute(select(_c.model, _c.backend).where(_c.id == conversation_id)).first()
            if found is None:
                return "", ""  # events of a conversation never started: stored, billed at zero
            self.meta[conversation_id] = tuple(found)
        return self.meta[conversation_id]

    def _transcript(self, conversation_id: str) -> Transcript:
        """The conversation's transcript; rebuilt from its stored rows the first time it is needed."""
        if conversation_id not in self.transcripts:
            stored = self.conn.execute(
                select(_i.item_id, *(items.c[name] for name in _ITEM_COLUMNS))
                .where(_i.conversation_id == conversation_id).order_by(_i.position)).all()
            rows = [Row(item_id=r.item_id, previous_item_id=r.previous_item_id, role=r.role, text=r.text,
                        final=bool(r.final), interrupted=bool(r.interrupted), at=r.at, latency_ms=r.latency_ms,
                        heard=r.heard)
                    for r in stored]
            self.transcripts[conversation_id] = Transcript.from_rows(rows)
            self.positions[conversation_id] = {r.item_id: r.position for r in stored}
        return self.transcripts[conversation_id]

    def _write_items(self, conversation_id: str, item_ids: set[str]) -> None:
        """Upsert the changed rows and every row whose position moved; delete removed rows."""
        if conversation_id not in self.transcripts:
            return
        old = self.positions[conversation_id]
        rows = self.transcripts[conversation_id].rows()
        new = {row.item_id: index for index, row in enumerate(rows)}
        removed = list(old.keys() - new.keys())
        if removed:
            self.conn.execute(delete(items).where(_i.conversation_id == conversation_id, _i.item_id.in_(removed)))
        upsert(self.conn, items, [
            {"conversation_id": conversation_id, "item_id": r.item_id, "previous_item_id": r.previous_item_id,
             "role": r.role, "text": r.text, "final": int(r.final), "interrupted": int(r.interrupted), "at": r.at,
             "latency_ms": r.latency_ms, "position": index, "heard": r.heard}
            for index, r in enumerate(rows) if r.item_id in item_ids or old.get(r.item_id) != index],
            keys=["conversation_id", "item_id"],
            update=["previous_item_id", "role", "text", "final", "interrupted", "latency_ms", "position", "heard"])
        self.positions[conversation_id] = new


class SessionStore:
    """Conversations, their events, transcript rows and usage in a SQLite file or a database URL.

    `target` is a file path (SQLite) or a URL such as `postgresql://user:pass@host/db`; its schema is
    migrated forward on open. Opening a store ends the open conversations of stores that are gone,
    never those of a live one. `record_event` takes ownership of the event dict (do not mutate it).
    """

    def __init__(self, target: str | Path) -> None:
        is_url = isinstance(target, str) and "://" in target
        self.path: Path | None = None if is_url else Path(target)  # the SQLite file, if that is the database
        self._engine = open_database(target)
        self._owner = _Owner()
        _LIVE_OWNERS.add(self._owner.owner)
        with write_transaction(self._engine, lock="koe.store_owners") as conn:
            now = time.time()
            self._owner.heartbeat(conn, now)
            swept = self._owner.sweep(conn, now)
        if swept:
            log.info("marked %d conversations of stopped processes as ended", swept)
        self._queue: queue.Queue[_Op] = queue.Queue(maxsize=QUEUE_SIZE)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="koe-store-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # what is still queued at exit gets written

    @property
    def engine(self) -> Engine:
        """The database (other parts, such as the limits' ledger, share it)."""
        return self._engine

    @property
    def owner(self) -> str:
        """This store's owner id, stamped on the conversations it starts."""
        return self._owner.owner

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for one read: any thread may read, and never on the writer's connection."""
        with self._engine.connect() as conn:
            yield conn

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        writer = _Writer(self._engine)
        next_beat = time.monotonic() + HEARTBEAT_S
        while True:
            batch = self._next_batch(max(0.0, next_beat - time.monotonic()))
            writer.write(batch)
            for op in batch:
                if isinstance(op, _Flush):
                    op.done.set()
            if any(isinstance(op, _Flush) and op.stop for op in batch):
                _LIVE_OWNERS.discard(self._owner.owner)
                self._unregister()
                return
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                self._beat()

    def _beat(self) -> None:
        """Heartbeat, and end what stores that have gone since left open."""
        try:
            with write_transaction(self._engine, lock="koe.store_owners") as conn:
                now = time.time()
                self._owner.heartbeat(conn, now)
                self._owner.sweep(conn, now)
        except SQLAlchemyError as exc:
            log.warning("session store heartbeat failed: %s", type(exc).__name__)

    def _unregister(self) -> None:
        """A closed store is gone: what it left open may be ended by the next sweep."""
        try:
            with write_transaction(self._engine, lock="koe.store_owners") as conn:
                conn.execute(delete(store_owners).where(store_owners.c.owner == self._owner.owner))
        except SQLAlchemyError as exc:
            log.warning("session store could not unregister: %s", type(exc).__name__)

    def _next_batch(self, wait_s: float) -> list[_Op]:
        """Wait up to `wait_s` for one operation, then gather more for up to BATCH_WINDOW_S or
        BATCH_ITEMS; a flush ends the batch at once so its caller is not kept waiting."""
        try:
            batch = [self._queue.get(timeout=wait_s)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + BATCH_WINDOW_S
        while len(batch) < BATCH_ITEMS and not isinstance(batch[-1], _Flush):
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _put(self, op: _Op) -> None:
        if self._closed:
            log.error("session store is closed: %s for %s not stored", type(op).__name__,
                      getattr(op, "conversation_id", "?"))
            return
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            # Only a stalled database gets here (10,000 operations behind). Waiting a moment stalls the
            # caller, perhaps the media loop, but keeps the data; waiting longer would freeze the
            # call itself, so after FULL_QUEUE_WAIT_S the operation is dropped, loudly.
            log.error("session store queue is full: the writer is stalled")
            try:
                self._queue.put(op, timeout=FULL_QUEUE_WAIT_S)
            except queue.Full:
                log.error("session store dropped %s for %s", type(op).__name__, getattr(op, "conversation_id", "?"))

    # -- writing -------------------------------------------------------------------------------------
    def start_conversation(self, *, backend: str, model: str, dialect: str, settings: dict[str, Any],
                           visitor: str | None = None, title: str | None = None) -> str:
        """A new conversation's id; written at once (not queued), so any reader sees it on return."""
        conversation_id = new_id("conv")
        with write_transaction(self._engine) as conn:
            conn.execute(insert(conversations).values(
                id=conversation_id, started_at=time.time(), backend=backend, model=model, dialect=dialect,
                settings=json.dumps(_redact(settings), ensure_ascii=False, default=str), visitor=visitor,
                title=title, owner=self._owner.owner))
        return conversation_id

    def record_event(self, conversation_id: str, direction: Literal["server", "client", "app"],
                     event: dict[str, Any], at: float | None = None) -> None:
        """Queue one event (never waits on the database); `at` defaults to now, in epoch seconds."""
        self._put(_Event(conversation_id, direction, event, time.time() if at is None else at))

    def set_latency(self, conversation_id: str, item_id: str, ms: int) -> None:
        """The relay's measured reply latency for an assistant item; replaces the estimate."""
        self._put(_Latency(conversation_id, item_id, ms))

    def end_conversation(self, conversation_id: str, reason: str) -> None:
        """Queued after the conversation's events; the first end wins."""
        self._put(_End(conversation_id, reason, time.time()))

    def flush(self, timeout_s: float = 5) -> bool:
        """Wait until everything queued so far is committed; False if that took over `timeout_s`."""
        if self._closed:
            return True
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def close(self) -> None:
        """Write what is queued, then stop the writer and give up ownership. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        marker = _Flush(stop=True)
        self._queue.put(marker)
        marker.done.wait(CLOSE_WAIT_S)
        self._thread.join(CLOSE_WAIT_S)
        self._engine.dispose()
        atexit.unregister(self.close)

    # -- reading -------------------------------------------------------------------------------------
    @staticmethod
    def _conversation_dict(row: Any) -> dict[str, Any]:
        found = dict(row._mapping)
        found["settings"] = json.loads(found["settings"])
        return found

    def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """Metadata (id, started_at, ended_at, end_reason, backend, model, dialect, settings, visitor,
        title, first_text (the first words said, or None), turns, cost_usd), or None."""
        with self._read() as conn:
            found = conn.execute(_CONVERSATION.where(_c.id == conversation_id)).first()
        return self._conversation_dict(found) if found is not None else None

    def conversations(self, *, search: str | None = None, visitor: str | None = None,
                      limit: int = 200) -> list[dict[str, Any]]:
        """Newest first; `search` matches transcript text or title, ignoring case."""
        query = _CONVERSATION
        if search:
            needle = search.casefold()
            query = query.where(or_(
                casefold(func.coalesce(_c.title, "")).contains(needle, autoescape=True),
                exists().where(_i.conversation_id == _c.id, casefold(_i.text).contains(needle, autoescape=True))))
        if visitor is not None:
            query = query.where(_c.visitor == visitor)
        with self._read() as conn:
            found = conn.execute(query.order_by(_c.started_at.desc()).limit(limit)).all()
        return [self._conversation_dict(row) for row in found]

    def transcript(self, conversation_id: str) -> pd.DataFrame:
        """Columns time, speaker, text, status, latency_ms, item_id, heard (of a cut reply: how many
        characters of text were played; <NA>: all), in conversation order. Rows closed without any
        text (a reply stopped before it began, silence) are left out."""
        with self._read() as conn:
            found = conn.execute(
                select(_i.at, _i.role, _i.text, _i.final, _i.interrupted, _i.latency_ms, _i.item_id, _i.heard)
                .where(_i.conversation_id == conversation_id).order_by(_i.position)).all()
        found = [r for r in found if r.text.strip() or not (r.final or r.interrupted)]
        return pd.DataFrame({
            "time": _local_times(r.at for r in found),
            "speaker": [_SPEAKERS.get(r.role, r.role) for r in found],
            "text": [r.text for r in found],
            "status": [_status(r.final, r.interrupted) for r in found],
            "latency_ms": [r.latency_ms for r in found],
            "item_id": [r.item_id for r in found],
            "heard": [r.heard for r in found],
        }).astype(_TRANSCRIPT_TYPES)

    def events(self, conversation_id: str, *, types: list[str] | None = None, direction: str | None = None,
               limit: int = 5000) -> pd.DataFrame:
        """The latest `limit` events, oldest first: time, direction, type, event_id, payload (JSON)."""
        e = events.c
        latest = select(e.id, e.at, e.direction, e.type, e.event_id, e.payload).where(
            e.conversation_id == conversation_id)
        if types:
            latest = latest.where(e.type.in_(types))
        if direction is not None:
            latest = latest.where(e.direction == direction)
        latest = latest.order_by(e.id.desc()).limit(limit).subquery()
        with self._read() as conn:
            found = conn.execute(select(latest).order_by(latest.c.id)).all()
        frame = pd.DataFrame([tuple(r)[1:] for r in found], columns=["time", *_EVENT_TYPES], dtype=object)
        frame = frame.astype(_EVENT_TYPES)
        frame["time"] = _local_times(frame["time"])
        return frame

    def usage(self, conversation_id: str) -> pd.DataFrame:
        """One row per reply that reported usage: tokens by kind (input counts include cached) and cost."""
        with self._read() as conn:
            found = conn.execute(select(_u.at, _u.response_id, _u.model, *(usage.c[t] for t in _TOKENS), _u.cost_usd)
                                 .where(_u.conversation_id == conversation_id).order_by(_u.at)).all()
        frame = pd.DataFrame([tuple(r) for r in found], columns=["time", *_USAGE_TYPES], dtype=object)
        frame = frame.astype(_USAGE_TYPES)
        frame["time"] = _local_times(frame["time"])
        return frame

    def totals(self, since: float | None = None, visitor: str | None = None) -> dict[str, Any]:
        """input_tokens, output_tokens, cost_usd of replies since `since` (epoch seconds), and the
        number of conversations started since then; optionally one visitor's only."""
        spent = select(func.coalesce(func.sum(_u.input_text_tokens + _u.input_audio_tokens), 0),
                       func.coalesce(func.sum(_u.output_text_tokens + _u.output_audio_tokens), 0),
                       func.coalesce(func.sum(_u.cost_usd), 0.0)).select_from(usage.join(conversations,
                                                                                          _c.id == _u.conversation_id))
        started = select(func.count()).select_from(conversations)
        if since is not None:
            spent, started = spent.where(_u.at >= since), started.where(_c.started_at >= since)
        if visitor is not None:
            spent, started = spent.where(_c.visitor == visitor), started.where(_c.visitor == visitor)
        with self._read() as conn:
            tokens = conn.execute(spent).one()
            count = conn.execute(started).scalar_one()
        return {"input_tokens": int(tokens[0]), "output_tokens": int(tokens[1]), "cost_usd": float(tokens[2]),
                "conversations": count}

    def daily_totals(self, days: int = 7, visitor: str | None = None) -> pd.DataFrame:
        """Per local day, newest first, over the last `days` days: day, conversations, input_tokens,
        output_tokens, cost_usd; optionally one visitor's only."""
        first = datetime.now().date() - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day).timestamp()
        started = select(_c.started_at).where(_c.started_at >= since)
        spent = (select(_u.at, _u.input_text_tokens + _u.input_audio_tokens,
                        _u.output_text_tokens + _u.output_audio_tokens, _u.cost_usd)
                 .select_from(usage.join(conversations, _c.id == _u.conversation_id)).where(_u.at >= since))
        if visitor is not None:
            started, spent = started.where(_c.visitor == visitor), spent.where(_c.visitor == visitor)
        with self._read() as conn:
            starts = conn.execute(started).scalars().all()
            replies = conn.execute(spent).all()
        # "day" typed as text from the start: an empty frame would otherwise guess float64 and refuse the merge.
        per_day = pd.DataFrame({"day": pd.Series([_local_day(s) for s in starts], dtype="str"), "conversations": 1})
        per_day = per_day.groupby("day", as_index=False).sum()
        spend = pd.DataFrame([(_local_day(r[0]), *r[1:]) for r in replies],
                             columns=["day", "input_tokens", "output_tokens", "cost_usd"]).astype({"day": "str"})
        spend = spend.groupby("day", as_index=False).sum()
        table = per_day.merge(spend, on="day", how="outer").fillna(0)
        return table.astype({"day": "str", "conversations": "int64", "input_tokens": "int64",
                             "output_tokens": "int64", "cost_usd": "float64"}).sort_values(
            "day", ascending=False, ignore_index=True)[["day", "conversations", "input_tokens", "output_tokens",
                                                         "cost_usd"]]

    def version(self, conversation_id: str) -> int:
        """Grows with every commit that touched the conversation: poll it, redraw on change."""
        with self._read() as conn:
            found = conn.execute(select(_c.version).where(_c.id == conversation_id)).scalar()
        return found if found is not None else 0

    # -- exports -------------------------------------------------------------------------------------
    def export(self, conversation_id: str, fmt: Format) -> str:
        """The conversation as CSV, JSON or Markdown (koe.export formats it); KeyError if unknown."""
        meta = self.conversation(conversation_id)
        if meta is None:
            raise KeyError(conversation_id)
        return export(fmt, meta, self.transcript(conversation_id), self.usage(conversation_id),
                      self.events(conversation_id, types=list(SETTINGS_EVENTS)))
