"""Conversations on disk: the one place a conversation is persisted, so that a page reload, a STOP,
a crash or an expired upstream session leaves it complete and exportable.

Writes come from the media event loop and must never wait on the disk: `record_*` only put onto a
bounded queue, and one writer thread stores the raw events, folds server events into each
conversation's `Transcript`, and commits in small batches. Reads come from any thread (Streamlit
script threads) on a connection of their own, never the writer's; WAL lets them run during writes.

Secrets are never stored: values under keys named like api_key / authorization / *secret* /
password are replaced before anything reaches the disk. Nothing upstream should put a key into an
event or the settings; this is the second line of defense, so that one slip is not written down.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

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
BUSY_TIMEOUT_S = 10.0
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(r"api[-_]?key|authorization|secret|password", re.IGNORECASE)
_SPEAKERS = {"user": "You", "assistant": "AI"}
# Fixed column types, so that an empty table has the same ones as a full one.
_TRANSCRIPT_TYPES = {"speaker": "str", "text": "str", "status": "str", "latency_ms": "Int64", "item_id": "str",
                     "heard": "Int64"}
_EVENT_TYPES = {"direction": "str", "type": "str", "event_id": "str", "payload": "str"}
_USAGE_TYPES = {"response_id": "str", "model": "str", "input_text_tokens": "int64", "input_audio_tokens": "int64",
                "cached_text_tokens": "int64", "cached_audio_tokens": "int64", "output_text_tokens": "int64",
                "output_audio_tokens": "int64", "cost_usd": "float64"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    dialect TEXT NOT NULL,
    settings TEXT NOT NULL,
    visitor TEXT,
    title TEXT,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conversations_by_start ON conversations (started_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    at REAL NOT NULL,
    direction TEXT NOT NULL,
    type TEXT NOT NULL,
    event_id TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_conversation ON events (conversation_id, id);
CREATE TABLE IF NOT EXISTS items (
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    previous_item_id TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    final INTEGER NOT NULL,
    interrupted INTEGER NOT NULL,
    at REAL NOT NULL,
    latency_ms INTEGER,
    position INTEGER NOT NULL,
    heard INTEGER,
    PRIMARY KEY (conversation_id, item_id)
);
CREATE TABLE IF NOT EXISTS usage (
    conversation_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    input_text_tokens INTEGER NOT NULL,
    input_audio_tokens INTEGER NOT NULL,
    cached_text_tokens INTEGER NOT NULL,
    cached_audio_tokens INTEGER NOT NULL,
    output_text_tokens INTEGER NOT NULL,
    output_audio_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (conversation_id, response_id)
);
"""

_CONVERSATION_SQL = """
SELECT c.id, c.started_at, c.ended_at, c.end_reason, c.backend, c.model, c.dialect, c.settings,
       c.visitor, c.title,
       (SELECT i.text FROM items i WHERE i.conversation_id = c.id AND i.role IN ('user', 'assistant')
          AND trim(i.text) != '' ORDER BY i.position LIMIT 1) AS first_text,
       (SELECT COUNT(*) FROM items i
         WHERE i.conversation_id = c.id AND i.role IN ('user', 'assistant')) AS turns,
       (SELECT COALESCE(SUM(u.cost_usd), 0.0) FROM usage u WHERE u.conversation_id = c.id) AS cost_usd
FROM conversations c
"""

_UPSERT_ITEM = """
INSERT INTO items (conversation_id, item_id, previous_item_id, role, text, final, interrupted, at,
                   latency_ms, position, heard)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (conversation_id, item_id) DO UPDATE SET
    previous_item_id = excluded.previous_item_id, role = excluded.role, text = excluded.text,
    final = excluded.final, interrupted = excluded.interrupted, latency_ms = excluded.latency_ms,
    position = excluded.position, heard = excluded.heard
"""


def _redact(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _casefold(text: str | None) -> str | None:
    return text.casefold() if isinstance(text, str) else text


def _local_times(seconds: Any) -> pd.DatetimeIndex:
    """Epoch seconds → naive local datetimes, as a person reading the table expects."""
    return pd.DatetimeIndex([datetime.fromtimestamp(s) for s in seconds], dtype="datetime64[us]")


def _status(final: bool, interrupted: bool) -> str:
    return "interrupted" if interrupted else "final" if final else "partial"


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
    """The writer thread's state: its connection, and each conversation's transcript and the row
    positions last written. Only the writer thread touches it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.transcripts: dict[str, Transcript] = {}
        self.positions: dict[str, dict[str, int]] = {}  # conversation → item id → stored position
        self.meta: dict[str, tuple[str, str]] = {}  # conversation → (model, backend)

    def write(self, batch: list[_Op]) -> None:
        changed: dict[str, set[str]] = {}  # conversation → item ids changed (its version grows)
        for op in batch:
            try:
                self._apply(op, changed)
            except Exception:  # one bad event must not cost the rest of the batch
                log.exception("could not store %s", type(op).__name__)
        try:
            for conversation_id, item_ids in changed.items():
                self._write_items(conversation_id, item_ids)
            self.conn.executemany("UPDATE conversations SET version = version + 1 WHERE id = ?",
                                  [(c,) for c in changed])
            self.conn.commit()
        except sqlite3.Error:
            log.exception("could not commit %d store operations", len(batch))
            self.conn.rollback()
            for conversation_id in changed:  # rebuild from what the disk really holds
                self.transcripts.pop(conversation_id, None)
                self.positions.pop(conversation_id, None)

    def _apply(self, op: _Op, changed: dict[str, set[str]]) -> None:
        match op:
            case _Event():
                self._store_event(op, changed)
            case _Latency():
                item_ids = self._transcript(op.conversation_id).set_latency(op.item_id, op.ms)
                if item_ids:
                    changed.setdefault(op.conversation_id, set()).update(item_ids)
            case _End():
                cursor = self.conn.execute(
                    "UPDATE conversations SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
                    (op.at, op.reason, op.conversation_id))
                if cursor.rowcount:
                    # Rows still waiting for text will get none now: closed, and hidden when empty.
                    changed.setdefault(op.conversation_id, set()).update(
                        self._transcript(op.conversation_id).close_open_rows())

    def _store_event(self, op: _Event, changed: dict[str, set[str]]) -> None:
        payload = _redact(op.event)
        kind = payload.get("type")
        event_id = payload.get("event_id")
        self.conn.execute(
            "INSERT INTO events (conversation_id, at, direction, type, event_id, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (op.conversation_id, op.at, op.direction, kind if isinstance(kind, str) else "",
             event_id if isinstance(event_id, str) else None,
             json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)))
        item_ids = changed.setdefault(op.conversation_id, set())
        if op.direction == "app" and kind == "koe.reply_cut" and isinstance(payload.get("item_id"), str):
            heard = payload.get("heard_chars")
            item_ids |= self._transcript(op.conversation_id).cut(payload["item_id"], heard if isinstance(heard, int) else 0)
        if op.direction != "server":
            return
        item_ids |= self._transcript(op.conversation_id).apply(parse_server_event(payload), op.at)
        response = payload.get("response")
        if kind == "response.done" and isinstance(response, dict) and isinstance(response.get("usage"), dict):
            self._store_usage(op.conversation_id, response, op.at)

    def _store_usage(self, conversation_id: str, response: dict[str, Any], at: float) -> None:
        model, backend = self._meta(conversation_id)
        usage = response["usage"]
        t = token_counts(usage)
        cost = 0.0 if backend == LOCAL_BACKEND else cost_usd(model, usage)
        self.conn.execute(
            "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, str(response.get("id") or new_id("resp")), at, model, t.input_text, t.input_audio,
             t.cached_text, t.cached_audio, t.output_text, t.output_audio, cost))

    def _meta(self, conversation_id: str) -> tuple[str, str]:
        if conversation_id not in self.meta:
            found = self.conn.execute("SELECT model, backend FROM conversations WHERE id = ?",
                                      (conversation_id,)).fetchone()
            if found is None:
                return "", ""  # events of a conversation never started: stored, billed at zero
            self.meta[conversation_id] = found
        return self.meta[conversation_id]

    def _transcript(self, conversation_id: str) -> Transcript:
        """The conversation's transcript; rebuilt from its stored rows the first time it is needed."""
        if conversation_id not in self.transcripts:
            stored = self.conn.execute(
                "SELECT item_id, previous_item_id, role, text, final, interrupted, at, latency_ms, position, heard"
                " FROM items WHERE conversation_id = ? ORDER BY position", (conversation_id,)).fetchall()
            rows = [Row(item_id=r[0], previous_item_id=r[1], role=r[2], text=r[3], final=bool(r[4]),
                        interrupted=bool(r[5]), at=r[6], latency_ms=r[7], heard=r[9]) for r in stored]
            self.transcripts[conversation_id] = Transcript.from_rows(rows)
            self.positions[conversation_id] = {r[0]: r[8] for r in stored}
        return self.transcripts[conversation_id]

    def _write_items(self, conversation_id: str, item_ids: set[str]) -> None:
        """Upsert the changed rows and every row whose position moved; delete removed rows."""
        if conversation_id not in self.transcripts:
            return
        old = self.positions[conversation_id]
        rows = self.transcripts[conversation_id].rows()
        new = {row.item_id: index for index, row in enumerate(rows)}
        self.conn.executemany("DELETE FROM items WHERE conversation_id = ? AND item_id = ?",
                              [(conversation_id, i) for i in old.keys() - new.keys()])
        self.conn.executemany(_UPSERT_ITEM, [
            (conversation_id, r.item_id, r.previous_item_id, r.role, r.text, int(r.final), int(r.interrupted), r.at,
             r.latency_ms, index, r.heard)
            for index, r in enumerate(rows) if r.item_id in item_ids or old.get(r.item_id) != index])
        self.positions[conversation_id] = new


class SessionStore:
    """Conversations, their events, transcript rows and usage in one SQLite file.

    One store per file per process: opening a file marks every conversation it holds without an
    end as ended by a restart. `record_event` takes ownership of the event dict (do not mutate it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            if "heard" not in {row[1] for row in conn.execute("PRAGMA table_info(items)")}:
                conn.execute("ALTER TABLE items ADD COLUMN heard INTEGER")  # a file from before the column
            with conn:
                conn.execute(
                    "UPDATE conversations SET end_reason = ?, version = version + 1,"
                    " ended_at = MAX(started_at, COALESCE((SELECT MAX(e.at) FROM events e"
                    "                                      WHERE e.conversation_id = conversations.id), 0))"
                    " WHERE ended_at IS NULL", (RESTART_REASON,))
        self._queue: queue.Queue[_Op] = queue.Queue(maxsize=QUEUE_SIZE)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="koe-store-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # what is still queued at exit gets written

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across app crashes, fast commits
        conn.create_function("casefold", 1, _casefold, deterministic=True)
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection for one read: any thread may read, and never on the writer's connection."""
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            yield conn

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        writer = _Writer(self._connect())
        try:
            while True:
                batch = self._next_batch()
                writer.write(batch)
                for op in batch:
                    if isinstance(op, _Flush):
                        op.done.set()
                if any(isinstance(op, _Flush) and op.stop for op in batch):
                    return
        finally:
            writer.conn.close()

    def _next_batch(self) -> list[_Op]:
        """Wait for one operation, then gather more for up to BATCH_WINDOW_S or BATCH_ITEMS; a flush
        ends the batch at once so its caller is not kept waiting."""
        batch = [self._queue.get()]
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
            # Only a stalled disk gets here (10,000 operations behind). Waiting a moment stalls the
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
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO conversations (id, started_at, backend, model, dialect, settings, visitor, title)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, time.time(), backend, model, dialect,
                 json.dumps(_redact(settings), ensure_ascii=False, default=str), visitor, title))
        return conversation_id

    def record_event(self, conversation_id: str, direction: Literal["server", "client", "app"],
                     event: dict[str, Any], at: float | None = None) -> None:
        """Queue one event (never waits on the disk); `at` defaults to now, in epoch seconds."""
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
        """Write what is queued, then stop the writer. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        marker = _Flush(stop=True)
        self._queue.put(marker)
        marker.done.wait(BUSY_TIMEOUT_S)
        self._thread.join(BUSY_TIMEOUT_S)
        atexit.unregister(self.close)

    # -- reading -------------------------------------------------------------------------------------
    @staticmethod
    def _conversation_dict(row: sqlite3.Row) -> dict[str, Any]:
        found = dict(row)
        found["settings"] = json.loads(found["settings"])
        return found

    def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """Metadata (id, started_at, ended_at, end_reason, backend, model, dialect, settings, visitor,
        title, first_text (the first words said, or None), turns, cost_usd), or None."""
        with self._read() as conn:
            found = conn.execute(_CONVERSATION_SQL + " WHERE c.id = ?", (conversation_id,)).fetchone()
        return self._conversation_dict(found) if found is not None else None

    def conversations(self, *, search: str | None = None, visitor: str | None = None,
                      limit: int = 200) -> list[dict[str, Any]]:
        """Newest first; `search` matches transcript text or title, ignoring case."""
        where, params = [], []
        if search:
            where.append("(instr(casefold(COALESCE(c.title, '')), ?) OR EXISTS (SELECT 1 FROM items i"
                         " WHERE i.conversation_id = c.id AND instr(casefold(i.text), ?)))")
            params += [search.casefold()] * 2
        if visitor is not None:
            where.append("c.visitor = ?")
            params.append(visitor)
        sql = _CONVERSATION_SQL + (" WHERE " + " AND ".join(where) if where else "")
        with self._read() as conn:
            found = conn.execute(sql + " ORDER BY c.started_at DESC LIMIT ?", (*params, limit)).fetchall()
        return [self._conversation_dict(row) for row in found]

    def transcript(self, conversation_id: str) -> pd.DataFrame:
        """Columns time, speaker, text, status, latency_ms, item_id, heard (of a cut reply: how many
        characters of text were played; <NA>: all), in conversation order. Rows closed without any
        text (a reply stopped before it began, silence) are left out."""
        with self._read() as conn:
            found = conn.execute(
                "SELECT at, role, text, final, interrupted, latency_ms, item_id, heard FROM items"
                " WHERE conversation_id = ? ORDER BY position", (conversation_id,)).fetchall()
        found = [r for r in found if r["text"].strip() or not (r["final"] or r["interrupted"])]
        return pd.DataFrame({
            "time": _local_times(r["at"] for r in found),
            "speaker": [_SPEAKERS.get(r["role"], r["role"]) for r in found],
            "text": [r["text"] for r in found],
            "status": [_status(r["final"], r["interrupted"]) for r in found],
            "latency_ms": [r["latency_ms"] for r in found],
            "item_id": [r["item_id"] for r in found],
            "heard": [r["heard"] for r in found],
        }).astype(_TRANSCRIPT_TYPES)

    def events(self, conversation_id: str, *, types: list[str] | None = None, direction: str | None = None,
               limit: int = 5000) -> pd.DataFrame:
        """The latest `limit` events, oldest first: time, direction, type, event_id, payload (JSON)."""
        where, params = ["conversation_id = ?"], [conversation_id]
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params += types
        if direction is not None:
            where.append("direction = ?")
            params.append(direction)
        sql = ("SELECT * FROM (SELECT id, at AS time, direction, type, event_id, payload FROM events"
               f" WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id")
        with self._read() as conn:
            frame = pd.read_sql_query(sql, conn, params=(*params, limit), dtype=_EVENT_TYPES)
        frame["time"] = _local_times(frame["time"])
        return frame.drop(columns="id")

    def usage(self, conversation_id: str) -> pd.DataFrame:
        """One row per reply that reported usage: tokens by kind (input counts include cached) and cost."""
        with self._read() as conn:
            frame = pd.read_sql_query(
                "SELECT at AS time, response_id, model, input_text_tokens, input_audio_tokens, cached_text_tokens,"
                " cached_audio_tokens, output_text_tokens, output_audio_tokens, cost_usd FROM usage"
                " WHERE conversation_id = ? ORDER BY at", conn, params=(conversation_id,), dtype=_USAGE_TYPES)
        frame["time"] = _local_times(frame["time"])
        return frame

    def totals(self, since: float | None = None, visitor: str | None = None) -> dict[str, Any]:
        """input_tokens, output_tokens, cost_usd of replies since `since` (epoch seconds), and the
        number of conversations started since then; optionally one visitor's only."""
        where, params = ["1"], []
        if since is not None:
            where.append("{at} >= ?")
            params.append(since)
        if visitor is not None:
            where.append("c.visitor = ?")
            params.append(visitor)
        condition = " AND ".join(where)
        with self._read() as conn:
            tokens = conn.execute(
                "SELECT COALESCE(SUM(u.input_text_tokens + u.input_audio_tokens), 0),"
                " COALESCE(SUM(u.output_text_tokens + u.output_audio_tokens), 0), COALESCE(SUM(u.cost_usd), 0.0)"
                " FROM usage u JOIN conversations c ON c.id = u.conversation_id WHERE "
                + condition.format(at="u.at"), params).fetchone()
            count = conn.execute("SELECT COUNT(*) FROM conversations c WHERE " + condition.format(at="c.started_at"),
                                 params).fetchone()
        return {"input_tokens": tokens[0], "output_tokens": tokens[1], "cost_usd": tokens[2],
                "conversations": count[0]}

    def daily_totals(self, days: int = 7, visitor: str | None = None) -> pd.DataFrame:
        """Per local day, newest first, over the last `days` days: day, conversations, input_tokens,
        output_tokens, cost_usd; optionally one visitor's only."""
        since = (datetime.now().date() - timedelta(days=days - 1)).isoformat()
        mine = "" if visitor is None else " AND c.visitor = ?"
        params = (since,) if visitor is None else (since, visitor)
        with self._read() as conn:
            started = pd.read_sql_query(
                "SELECT date(c.started_at, 'unixepoch', 'localtime') AS day, COUNT(*) AS conversations"
                f" FROM conversations c WHERE day >= ?{mine} GROUP BY day", conn, params=params)
            spent = pd.read_sql_query(
                "SELECT date(u.at, 'unixepoch', 'localtime') AS day,"
                " SUM(u.input_text_tokens + u.input_audio_tokens) AS input_tokens,"
                " SUM(u.output_text_tokens + u.output_audio_tokens) AS output_tokens, SUM(u.cost_usd) AS cost_usd"
                f" FROM usage u JOIN conversations c ON c.id = u.conversation_id WHERE day >= ?{mine} GROUP BY day",
                conn, params=params)
        table = started.merge(spent, on="day", how="outer").fillna(0)
        return table.astype({"day": "str", "conversations": "int64", "input_tokens": "int64",
                             "output_tokens": "int64", "cost_usd": "float64"}).sort_values(
            "day", ascending=False, ignore_index=True)[["day", "conversations", "input_tokens", "output_tokens",
                                                         "cost_usd"]]

    def version(self, conversation_id: str) -> int:
        """Grows with every commit that touched the conversation: poll it, redraw on change."""
        with self._read() as conn:
            found = conn.execute("SELECT version FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return found[0] if found is not None else 0

    # -- exports -------------------------------------------------------------------------------------
    def export(self, conversation_id: str, fmt: Format) -> str:
        """The conversation as CSV, JSON or Markdown (koe.export formats it); KeyError if unknown."""
        meta = self.conversation(conversation_id)
        if meta is None:
            raise KeyError(conversation_id)
        return export(fmt, meta, self.transcript(conversation_id), self.usage(conversation_id),
                      self.events(conversation_id, types=list(SETTINGS_EVENTS)))
