"""The database behind the session store and the limits: one SQLAlchemy Core schema, SQLite by default
(a file in the data folder), PostgreSQL when `KOE_DATABASE_URL=postgresql://…` (psycopg 3), so that
several app servers share history, visitors and budgets. Alembic migrates the schema forward when a
process opens the database (`open_database`), serialized between processes that start together.

SQLite runs in WAL mode and Koe issues its own BEGIN (the SQLAlchemy recipe for pysqlite): plain
reads take no lock, and a `write_transaction` takes the write lock at BEGIN, so what it reads cannot
change before it writes. On PostgreSQL a `write_transaction` may serialize on an advisory lock key.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (BigInteger, Column, Double, Index, Integer, MetaData, Table, Text, create_engine, event,
                        inspect, text)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

__all__ = ["BUSY_TIMEOUT_S", "admissions", "casefold", "conversations", "database_url", "events", "items",
           "limit_counters", "metadata", "open_database", "store_owners", "upsert", "usage", "write_transaction"]

BUSY_TIMEOUT_S = 10.0
MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema SQLite files had before Alembic: stamped, then migrated forward

metadata = MetaData()

conversations = Table(
    "conversations", metadata,
    Column("id", Text, primary_key=True),
    Column("started_at", Double, nullable=False),  # epoch seconds, as every time below
    Column("ended_at", Double),
    Column("end_reason", Text),
    Column("backend", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("dialect", Text, nullable=False),
    Column("settings", Text, nullable=False),  # JSON, secrets redacted
    Column("visitor", Text),
    Column("title", Text),
    Column("version", Integer, nullable=False, server_default="0"),
    Column("owner", Text),  # the store (process) that records it: `store_owners.owner`
    Index("conversations_by_start", "started_at"),
    Index("conversations_open", "ended_at"),
)

events = Table(
    "events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("conversation_id", Text, nullable=False),
    Column("at", Double, nullable=False),
    Column("direction", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("event_id", Text),
    Column("payload", Text, nullable=False),
    Index("events_by_conversation", "conversation_id", "id"),
)

items = Table(
    "items", metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("item_id", Text, primary_key=True),
    Column("previous_item_id", Text),
    Column("role", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("final", Integer, nullable=False),
    Column("interrupted", Integer, nullable=False),
    Column("at", Double, nullable=False),
    Column("latency_ms", Integer),
    Column("position", Integer, nullable=False),
    Column("heard", Integer),  # a cut reply: characters of text the browser played (NULL: all of it)
)

usage = Table(
    "usage", metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("response_id", Text, primary_key=True),
    Column("at", Double, nullable=False),
    Column("model", Text, nullable=False),
    *(Column(name, Integer, nullable=False) for name in (
        "input_text_tokens", "input_audio_tokens", "cached_text_tokens", "cached_audio_tokens",
        "output_text_tokens", "output_audio_tokens")),
    Column("cost_usd", Double, nullable=False),
)

# One row per open SessionStore (a process): a conversation is orphaned once its owner is gone.
store_owners = Table(
    "store_owners", metadata,
    Column("owner", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
)

# The limits' counters, shared by every app server on the database.
admissions = Table(
    "admissions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("visitor", Text, nullable=False),
    Column("at", Double, nullable=False),
    Index("admissions_by_visitor", "visitor", "at"),
)

limit_counters = Table(
    "limit_counters", metadata,
    Column("name", Text, primary_key=True),  # e.g. "cost_usd"
    Column("period", Double, primary_key=True),  # the period's start, e.g. local midnight
    Column("value", Double, nullable=False),
)


class casefold(GenericFunction):  # noqa: N801  (SQL function names are lower case)
    """Text folded for caseless search: Python's casefold on SQLite (registered on each connection),
    `lower()` on PostgreSQL (by the database's locale: use a UTF-8 one)."""

    type = Text()
    inherit_cache = True


@compiles(casefold, "postgresql")
def _casefold_postgresql(element: casefold, compiler: Any, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


def _casefold_sqlite(value: str | None) -> str | None:
    return value.casefold() if isinstance(value, str) else value


def database_url(target: str | Path) -> URL:
    """A SQLAlchemy URL for a file path (SQLite) or a database URL; `postgresql://` and
    `postgres://` mean psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    if isinstance(target, Path) or "://" not in target:
        return URL.create("sqlite", database=str(target))
    if target.startswith("postgres://"):
        target = "postgresql://" + target.removeprefix("postgres://")
    url = make_url(target)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode (kept in the file, so set once). Switching needs the file to itself, and SQLite
    answers "database is locked" at once, without waiting its busy timeout, while another process holds it (two
    app servers opening a new database together: CI saw it once): try again until BUSY_TIMEOUT_S has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: URL) -> Engine:
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # Koe emits BEGIN itself (see `on_begin`)
        _use_wal(dbapi_connection)
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across app crashes
        dbapi_connection.create_function("casefold", 1, _casefold_sqlite, deterministic=True)

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("koe_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _lock_id(key: str) -> int:
    """A stable signed 64-bit id for a PostgreSQL advisory lock."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def write_transaction(engine: Engine, lock: str | None = None) -> Iterator[Connection]:
    """One transaction that writes, committed on exit (rolled back on an exception). SQLite: the
    database's write lock from BEGIN on. PostgreSQL: with `lock`, transactions naming the same
    `lock` run one at a time, across processes and machines (an advisory transaction lock)."""
    with engine.connect() as conn:
        conn.execution_options(koe_write=True)
        with conn.begin():
            if lock is not None and conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(lock)})
            yield conn


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], *, keys: list[str],
           update: list[str]) -> None:
    """Insert `rows`; where `keys` already exist, overwrite the `update` columns instead."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    conn.execute(statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in update}), rows)


def alembic_config(conn: Connection) -> AlembicConfig:
    """Alembic's settings for Koe's migrations, run on `conn` (inside the caller's transaction)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; one process at a time does it, the others wait and
    then find nothing to do. A file written before Alembic (tables, no version) is stamped as the
    baseline first. Raises alembic's errors, such as a database newer than this code."""
    with write_transaction(engine, lock="koe.migrate") as conn:
        tables = inspect(conn).get_table_names()
        config = alembic_config(conn)
        if "conversations" in tables and "alembic_version" not in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


def open_database(target: str | Path) -> Engine:
    """An engine on `target` (a SQLite file path or a database URL), its schema migrated to head."""
    url = database_url(target)
    engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine
