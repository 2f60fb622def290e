"""The database under the store and the limits, on SQLite and on a real PostgreSQL (`database` fixture):
schema migrations keep what the previous schema held, and several app server processes share one
database safely (history, one daily budget, each other's live conversations)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from koe.db import alembic_config, database_url, metadata, open_database
from koe.limits import SPENT, Ledger, start_of_day
from koe.store import RESTART_REASON, SessionStore

from app_server import USAGE_COST, AppServer

DATA = Path(__file__).with_name("data")
OLD_TABLES = ("conversations", "events", "items", "usage")


def write_previous_schema(database: str) -> None:
    """The store as Koe's code before Alembic wrote it (tests/data/store-0001.sql). On PostgreSQL,
    which that code never used, the same rows go into the baseline revision's tables."""
    dump = (DATA / "store-0001.sql").read_text()
    if "://" not in database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(database) as conn:
            conn.executescript(dump)
        return
    old = sqlite3.connect(":memory:")
    old.executescript(dump)
    engine = sa.create_engine(database_url(database))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        tables = sa.MetaData()
        tables.reflect(conn, only=OLD_TABLES)
        for name in OLD_TABLES:
            cursor = old.execute(f"SELECT * FROM {name}")
            columns = [d[0] for d in cursor.description]
            conn.execute(tables.tables[name].insert(), [dict(zip(columns, row)) for row in cursor])
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT MAX(id) FROM events))")
    engine.dispose()


def read_back(store: SessionStore, conversation_id: str) -> dict:
    """The conversation as tests/data/store-0001.json holds it (times as epoch seconds only)."""
    def records(frame):
        return json.loads(frame.drop(columns="time").to_json(orient="records"))

    return {"conversation": store.conversation(conversation_id),
            "transcript": json.loads(store.transcript(conversation_id).drop(columns="time").to_json(orient="records")),
            "events": records(store.events(conversation_id)), "usage": records(store.usage(conversation_id))}


def test_a_store_written_by_the_previous_schema_loses_nothing(database):
    write_previous_schema(database)
    # A visitor's conversation of the last hour and today's spend, as the previous schema held them:
    # the limits' new counters must start from them, or an upgrade would loosen the limits.
    now = time.time()
    old = sa.create_engine(database_url(database))
    with old.begin() as conn:
        conn.execute(sa.text("INSERT INTO conversations (id, started_at, backend, model, dialect, settings, visitor)"
                             " VALUES ('conv_recent', :at, 'openai', 'gpt-realtime', 'ga', '{}', 'v_recent')"),
                     {"at": now - 60})
        conn.execute(sa.text("INSERT INTO usage VALUES ('conv_recent', 'resp_recent', :at, 'gpt-realtime',"
                             " 0, 0, 0, 0, 0, 0, 0.25)"), {"at": now})
    old.dispose()
    expected = json.loads((DATA / "store-0001.json").read_text())

    store = SessionStore(database)
    try:
        for conversation_id, before in expected.items():
            if conversation_id == "totals":
                continue
            after = read_back(store, conversation_id)
            said = [row["text"] for row in before["transcript"] if row["text"].strip()]
            assert after["conversation"].pop("first_text") == (said[0] if said else None)  # a newer column
            if before["conversation"]["ended_at"] is None:  # its process is long gone: ended at its last event
                assert after["conversation"]["end_reason"] == RESTART_REASON  # (its events' times are older
                assert after["conversation"]["ended_at"] == before["conversation"]["started_at"]  # than its start)
                before["conversation"].update(end_reason=RESTART_REASON, ended_at=after["conversation"]["ended_at"])
            for old_row, row in zip(before["transcript"], after["transcript"]):  # newer columns start empty
                assert all(row.pop(column) is None for column in set(row) - set(old_row)), row
            assert after == before
        totals = expected["totals"]
        assert store.totals() == {**totals, "cost_usd": pytest.approx(totals["cost_usd"] + 0.25),
                                  "conversations": totals["conversations"] + 1}
        ledger = Ledger(store.engine)
        assert ledger.value(SPENT, start_of_day()) == pytest.approx(0.25)
        assert ledger.admit("v_recent", since=now - 3600, most=1, now=now) == 1  # the last hour's one counts
        # The upgraded store goes on writing: new events after the old ones, on an old conversation.
        first = next(iter(expected))
        store.record_event(first, "client", {"type": "response.cancel", "event_id": "event_after"})
        assert store.flush()
        assert store.events(first)["event_id"].tolist()[-1] == "event_after"
    finally:
        store.close()


def test_the_migrated_schema_is_the_one_the_code_uses(database):
    engine = open_database(database)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        engine.dispose()


# -- several app server processes on one database ---------------------------------------------------------
def test_two_app_servers_share_history_and_one_daily_budget(database):
    """Two processes open a new database at once (one migrates, the other waits), then share it."""
    limits = {"max_daily_cost_usd": 0.10, "max_sessions_per_hour": 1, "max_concurrent_sessions": 0}
    a, b = AppServer(database, **limits), AppServer(database, **limits)
    try:
        a.ready(), b.ready()
        from_a = a("talk", "v_a", "Hello from A")
        # One hourly quota per visitor, counted across servers.
        assert b("talk", "v_a", "Hello again").startswith("refused: you have started 1 conversations")
        from_b = b("talk", "v_b", "Hello from B")
        assert from_a.startswith("conv_") and from_b.startswith("conv_")
        a("settle"), b("settle")
        # One history: each server lists and reads the other's conversation.
        assert set(a("history")) == set(b("history")) == {from_a, from_b}
        assert b("said", from_a) == ["Hello from A", "Noted."]
        assert a("conversation", from_b)["visitor"] == "v_b"
        # One daily budget: A's third reply crosses it; B refuses a new session and ends its running one.
        assert a("talk", "v_c", "Once more").startswith("conv_")
        a("settle"), b("settle")
        assert a("spent_today") == b("spent_today") == pytest.approx(3 * USAGE_COST)
        assert b("talk", "v_d", "Hi").startswith("refused: today's $0.10 budget for this demo is spent")
        assert b("check", from_b) == "today's $0.10 budget for this demo is spent"
        # Spends from both at once: none lost.
        a.send("spend_many", 200, 0.001), b.send("spend_many", 200, 0.001)
        a._reply(), b._reply()
        a("settle"), b("settle")
        assert b("spent_today") == pytest.approx(3 * USAGE_COST + 0.4)
    finally:
        a.stop(), b.stop()


def test_a_second_process_keeps_the_first_ones_conversations(database):
    """Issue 10: a process opening the database ends only the conversations of processes that are gone."""
    a = AppServer(database, max_sessions_per_hour=0).ready()
    b = c = None
    try:
        live = a("talk", "v_a", "Still talking")
        a("settle")
        b = AppServer(database, max_sessions_per_hour=0).ready()
        assert b("conversation", live)["ended_at"] is None  # A is alive: its call goes on
        a("end", live, "stopped by the user")
        a("settle")
        assert b("conversation", live)["end_reason"] == "stopped by the user"  # and its own end reason stays

        left_open = a("talk", "v_a", "Then the process dies")
        mine = b("talk", "v_b", "B goes on")
        a("settle"), b("settle")
        a.process.kill()  # no close, no goodbye: as a crash
        a.process.join(10)
        c = AppServer(database, max_sessions_per_hour=0).ready()
        ended = c("conversation", left_open)
        assert ended["end_reason"] == RESTART_REASON and ended["ended_at"] is not None
        assert c("conversation", live)["end_reason"] == "stopped by the user"
        assert c("conversation", mine)["ended_at"] is None  # B is alive
        assert b("said", mine) == ["B goes on", "Noted."]
    finally:
        for server in (a, b, c):
            if server is not None:
                server.stop()


def test_the_app_keeps_its_history_where_the_settings_say(database, monkeypatch):
    """The History page through the app's own wiring (components/runtime.py): `KOE_DATABASE_URL` for
    PostgreSQL, else SQLite in `KOE_DATA_DIR`."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root))  # the pages import `components` from the repository root
    for name in ("KOE_ACCESS_CODE", "KOE_ADMIN_CODE", "OPENAI_API_KEY", "KOE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    if "://" in database:
        monkeypatch.setenv("KOE_DATABASE_URL", database)
    else:
        monkeypatch.setenv("KOE_DATA_DIR", str(Path(database).parent))
    store = SessionStore(database)
    conversation = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={},
                                            visitor="v_someone")
    store.record_event(conversation, "server", {
        "type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "content_index": 0,
        "transcript": "stored where the settings say"})
    store.end_conversation(conversation, "stopped by the user")
    store.close()
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(root / "pages" / "1_History.py"), default_timeout=30).run()  # no codes: the owner
        shown = "\n".join(str(e.value) for kind in ("markdown", "text", "caption") for e in getattr(at, kind))
        assert not at.exception and "stored where the settings say" in shown
    finally:
        from components import runtime

        runtime.store().close()  # the page's store (cached for the process), before its database goes
        st.cache_resource.clear()
