"""The session store, its transcript and pricing, on a real SQLite file."""

import csv
import io
import json
import logging
import sys
import time
from pathlib import Path

import pytest

from koe.pricing import LOCAL_MODEL_PRICE, PRICES, cost_usd, price_for
from koe.protocol import new_id, parse_server_event, server_event_name
from koe.store import RESTART_REASON, SessionStore
from koe.transcript import Transcript

T0 = 1_700_000_000.0  # event times, epoch seconds

# gpt-realtime: 1000 text in (200 of them cached), 500 audio in, 100 text out, 300 audio out.
USAGE = {
    "total_tokens": 1900,
    "input_tokens": 1500,
    "output_tokens": 400,
    "input_token_details": {"text_tokens": 1000, "audio_tokens": 500, "image_tokens": 0, "cached_tokens": 200,
                            "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 0}},
    "output_token_details": {"text_tokens": 100, "audio_tokens": 300},
}
# Per million: 800 × 4.00 + 200 × 0.40 + 500 × 32.00 + 100 × 16.00 + 300 × 64.00
#            = 3200 + 80 + 16000 + 1600 + 19200 = 40080 → $0.04008
USAGE_COST = 0.04008


def ev(kind: str, dialect: str = "ga", **fields) -> dict | None:
    """A server event as `dialect` names it; None where that dialect does not send it."""
    name = server_event_name(kind, dialect)
    return None if name is None else {"type": name, "event_id": new_id("event"), **fields}


def user_item(item_id: str) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}


def assistant_item(item_id: str, status: str = "in_progress", transcript: str | None = None) -> dict:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": "assistant",
            "content": content}


def reply_events(dialect: str, u: str, a: str, r: str, previous: str | None, t: float) -> list[tuple[dict, float]]:
    """One voice turn up to the assistant's first words, in the order PROTOCOL.md gives:
    the user's words come later, in `user_words`. Speech stops at t + 1; audio starts at t + 1.8."""
    where = {"response_id": r, "item_id": a, "output_index": 0, "content_index": 0}
    events = [
        (ev("input_audio_buffer.speech_started", dialect, audio_start_ms=0, item_id=u), t),
        (ev("input_audio_buffer.speech_stopped", dialect, audio_end_ms=1000, item_id=u), t + 1.0),
        (ev("input_audio_buffer.committed", dialect, item_id=u, previous_item_id=previous), t + 1.1),
        (ev("conversation.item.added", dialect, item=user_item(u), previous_item_id=previous), t + 1.1),
        (ev("conversation.item.done", dialect, item=user_item(u), previous_item_id=previous), t + 1.1),
        (ev("response.created", dialect, response={"id": r, "status": "in_progress", "output": []}), t + 1.2),
        (ev("response.output_item.added", dialect, response_id=r, output_index=0, item=assistant_item(a)), t + 1.3),
        (ev("conversation.item.added", dialect, item=assistant_item(a), previous_item_id=u), t + 1.3),
        (ev("output_audio_buffer.started", dialect, response_id=r), t + 1.8),
        (ev("response.output_audio_transcript.delta", dialect, delta="Hello", **where), t + 1.9),
        (ev("response.output_audio_transcript.delta", dialect, delta=" there", **where), t + 2.0),
    ]
    return [(e, at) for e, at in events if e is not None]


def user_words(dialect: str, u: str, text: str, t: float) -> list[tuple[dict, float]]:
    return [
        (ev("conversation.item.input_audio_transcription.delta", dialect, item_id=u, content_index=0,
            delta=text[:2]), t),
        (ev("conversation.item.input_audio_transcription.completed", dialect, item_id=u, content_index=0,
            transcript=text), t + 0.1),
    ]


def reply_done(dialect: str, a: str, r: str, text: str, t: float, status: str = "completed",
               usage: dict | None = None) -> list[tuple[dict, float]]:
    where = {"response_id": r, "item_id": a, "output_index": 0, "content_index": 0}
    response = {"id": r, "status": status, "output": [assistant_item(a, "completed", text)]}
    if usage is not None:
        response["usage"] = usage
    events = [
        (ev("response.output_audio_transcript.done", dialect, transcript=text, **where), t),
        (ev("conversation.item.done", dialect, item=assistant_item(a, "completed", text)), t),
        (ev("response.done", dialect, response=response), t + 0.1),
    ]
    return [(e, at) for e, at in events if e is not None]


@pytest.fixture
def store(database):
    s = SessionStore(database)
    yield s
    s.close()


def new_conversation(store: SessionStore, **kw) -> str:
    args = {"backend": "openai", "model": "gpt-realtime", "dialect": "ga", "settings": {"voice": "marin"}} | kw
    return store.start_conversation(**args)


def record(store: SessionStore, conversation_id: str, events: list[tuple[dict, float]]) -> None:
    for event, at in events:
        store.record_event(conversation_id, "server", event, at)


def table(store: SessionStore, conversation_id: str) -> list[tuple]:
    assert store.flush()
    df = store.transcript(conversation_id)
    return list(zip(df["speaker"], df["text"], df["status"]))


# -- transcript order --------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_user_words_arriving_after_the_reply_stay_above_it(store, dialect) -> None:
    c = new_conversation(store, dialect=dialect)
    record(store, c, [(ev("session.created", dialect, session={}), T0)])
    record(store, c, reply_events(dialect, "item_U", "item_A", "resp_1", None, T0))
    assert table(store, c) == [("You", "", "partial"), ("AI", "Hello there", "partial")]

    record(store, c, user_words(dialect, "item_U", "Hi, who are you?", T0 + 2.1)[:1])
    assert table(store, c) == [("You", "Hi", "partial"), ("AI", "Hello there", "partial")]

    record(store, c, user_words(dialect, "item_U", "Hi, who are you?", T0 + 2.1)[1:])
    record(store, c, reply_done(dialect, "item_A", "resp_1", "Hello there.", T0 + 2.5))
    assert table(store, c) == [("You", "Hi, who are you?", "final"), ("AI", "Hello there.", "final")]
    assert list(store.transcript(c)["item_id"]) == ["item_U", "item_A"]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_second_turn_and_a_reply_placed_before_its_previous_item_is_known(store, dialect) -> None:
    c = new_conversation(store, dialect=dialect)
    record(store, c, reply_events(dialect, "item_U1", "item_A1", "resp_1", None, T0))
    record(store, c, reply_done(dialect, "item_A1", "resp_1", "First.", T0 + 3))
    record(store, c, reply_events(dialect, "item_U2", "item_A2", "resp_2", "item_A1", T0 + 10))
    record(store, c, user_words(dialect, "item_U2", "Second question", T0 + 13))
    record(store, c, user_words(dialect, "item_U1", "First question", T0 + 14))  # very late
    assert [t[1] for t in table(store, c)] == ["First question", "First.", "Second question", "Hello there"]


def test_new_upstream_session_goes_after_what_is_there_and_null_previous_does_not_move_rows() -> None:
    t = Transcript()
    for event, at in reply_events("ga", "item_U1", "item_A1", "resp_1", None, T0):
        t.apply(parse_server_event(event), at)
    # The local server's item.done omits previous_item_id: the placed reply must stay put.
    t.apply(parse_server_event(ev("conversation.item.done", item=assistant_item("item_A1", "completed", "Hi."))), T0)
    t.apply(parse_server_event(ev("session.created", session={})), T0 + 5)  # a new upstream session (voice change)
    for event, at in reply_events("ga", "item_U2", "item_A2", "resp_2", None, T0 + 6):
        t.apply(parse_server_event(event), at)
    assert [r.item_id for r in t.rows()] == ["item_U1", "item_A1", "item_U2", "item_A2"]
    assert [r.item_id for r in Transcript.from_rows(t.rows()).rows()] == [r.item_id for r in t.rows()]


def test_deletion_truncation_and_cancelled_reply(store) -> None:
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U1", "item_A1", "resp_1", None, T0))
    record(store, c, user_words("ga", "item_U1", "Tell me a story", T0 + 2))
    record(store, c, [(ev("conversation.item.truncated", item_id="item_A1", content_index=0, audio_end_ms=700),
                       T0 + 3)])
    record(store, c, reply_done("ga", "item_A1", "resp_1", "Hello there", T0 + 3, status="cancelled"))
    assert table(store, c) == [("You", "Tell me a story", "final"), ("AI", "Hello there", "interrupted")]

    record(store, c, [(ev("conversation.item.deleted", item_id="item_U1"), T0 + 4)])
    record(store, c, user_words("ga", "item_U1", "Tell me a story", T0 + 5))  # late: must not come back
    assert table(store, c) == [("AI", "Hello there", "interrupted")]


def test_transcription_failure_is_shown(store) -> None:
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    failed = ev("conversation.item.input_audio_transcription.failed", item_id="item_U", content_index=0,
                error={"type": "transcription_error", "code": "audio_unintelligible", "message": "unclear audio"})
    record(store, c, [(failed, T0 + 3)])
    assert table(store, c)[0] == ("You", "(transcription failed: unclear audio)", "final")


# -- latency -----------------------------------------------------------------------------------------
def test_latency_from_end_of_speech_and_relay_override(store) -> None:
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U1", "item_A1", "resp_1", None, T0))
    # Text-only reply: no audio buffer, the first text delta is the first sign (0.6 s after speech stopped).
    skipped = ("output_audio_buffer.started", "response.output_audio_transcript.delta")
    record(store, c, [(e, at) for e, at in reply_events("ga", "item_U2", "item_A2", "resp_2", "item_A1", T0 + 10)
                      if e["type"] not in skipped])
    record(store, c, [(ev("response.output_text.delta", response_id="resp_2", item_id="item_A2", delta="Yes"),
                       T0 + 11.6)])
    assert store.flush()
    df = store.transcript(c)
    assert df["latency_ms"].dtype == "Int64"
    assert df["latency_ms"].isna().tolist() == [True, False, True, False]
    assert df["latency_ms"].dropna().tolist() == [800, 600]

    store.set_latency(c, "item_A1", 950)
    assert store.flush()
    assert store.transcript(c)["latency_ms"].dropna().tolist() == [950, 600]


def test_reply_without_new_speech_gets_no_latency() -> None:
    t = Transcript()
    for event, at in reply_events("ga", "item_U", "item_A1", "resp_1", None, T0):
        t.apply(parse_server_event(event), at)
    delta = ev("response.output_text.delta", response_id="resp_2", item_id="item_A2", delta="More")
    t.apply(parse_server_event(delta), T0 + 30)  # a manual response.create, nobody spoke
    assert [r.latency_ms for r in t.rows()] == [None, 800, None]


def test_a_push_to_talk_turn_gets_its_latency_from_the_commit() -> None:
    """Manual turns have no speech_stopped: the commit (the button released) ends the user's speech."""
    t = Transcript()
    manual = [(e, at) for e, at in reply_events("ga", "item_U", "item_A", "resp_1", None, T0)
              if not e["type"].startswith("input_audio_buffer.speech_")]
    for event, at in manual:
        t.apply(parse_server_event(event), at)
    assert [r.latency_ms for r in t.rows()] == [None, 700]  # committed at +1.1 s, audio at +1.8 s


# -- usage and cost ----------------------------------------------------------------------------------
def test_prices() -> None:
    assert cost_usd("gpt-realtime", USAGE) == pytest.approx(USAGE_COST)
    assert cost_usd("gpt-realtime-2025-08-28", USAGE) == pytest.approx(USAGE_COST)  # dated snapshot
    assert price_for("gpt-realtime-mini-2025-10-06") == PRICES["gpt-realtime-mini"]
    assert price_for("gpt-4o-realtime-preview-2024-12-17").audio_out == 80.00
    assert price_for("some-local-model") == LOCAL_MODEL_PRICE
    assert cost_usd("some-local-model", USAGE) == 0.0
    assert cost_usd("gpt-realtime", None) == 0.0
    # No details: totals billed as text. 1000 × 4.00 + 100 × 16.00 = 5600 per million.
    assert cost_usd("gpt-realtime", {"input_tokens": 1000, "output_tokens": 100}) == pytest.approx(0.0056)


def test_totals_of_an_empty_store(store) -> None:
    # A first visit: nothing recorded yet, and the Events page's tables must still draw.
    table = store.daily_totals(days=7)
    assert table.empty and list(table.columns) == ["day", "conversations", "input_tokens", "output_tokens",
                                                   "cost_usd"]
    assert store.totals()["conversations"] == 0


def test_usage_rows_cost_and_totals(store) -> None:
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    record(store, c, reply_done("ga", "item_A", "resp_1", "Hello there.", T0 + 3, usage=USAGE))
    record(store, c, reply_done("ga", "item_B", "resp_2", "", T0 + 4, status="cancelled"))  # no usage
    local = new_conversation(store, backend="local")  # local backend: free, whatever the model says
    record(store, local, reply_done("ga", "item_L", "resp_L", "Hi.", T0 + 5, usage=USAGE))
    assert store.flush()

    usage = store.usage(c)
    assert len(usage) == 1
    row = usage.iloc[0]
    assert (row.response_id, row.model) == ("resp_1", "gpt-realtime")
    assert (row.input_text_tokens, row.input_audio_tokens, row.cached_text_tokens, row.cached_audio_tokens,
            row.output_text_tokens, row.output_audio_tokens) == (1000, 500, 200, 0, 100, 300)
    assert row.cost_usd == pytest.approx(USAGE_COST)
    assert store.conversation(c)["cost_usd"] == pytest.approx(USAGE_COST)
    assert store.usage(local).iloc[0].cost_usd == 0.0
    totals = store.totals()
    assert totals == {"input_tokens": 3000, "output_tokens": 800, "cost_usd": pytest.approx(USAGE_COST),
                      "conversations": 2}
    assert store.totals(since=T0 + 4.5)["input_tokens"] == 1500


# -- persistence -------------------------------------------------------------------------------------
def test_everything_reads_back_from_a_new_store(database) -> None:
    first = SessionStore(database)
    c = new_conversation(first, title="Morning chat", visitor="v1")
    record(first, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    first.record_event(c, "client", {"type": "response.cancel", "event_id": "event_c1"}, T0 + 2.2)
    record(first, c, user_words("ga", "item_U", "Good morning", T0 + 2.3))
    record(first, c, reply_done("ga", "item_A", "resp_1", "Hello there.", T0 + 3, usage=USAGE))
    first.end_conversation(c, "stopped by the user")
    assert first.flush()
    before = (first.conversation(c), first.transcript(c), first.events(c), first.usage(c))

    second = SessionStore(database)
    try:
        after = (second.conversation(c), second.transcript(c), second.events(c), second.usage(c))
        assert after[0] == before[0]
        assert after[0]["end_reason"] == "stopped by the user"
        assert after[0]["settings"] == {"voice": "marin"}
        assert after[0]["turns"] == 2
        for a, b in zip(after[1:], before[1:]):
            assert a.equals(b)
        assert list(after[1]["text"]) == ["Good morning", "Hello there."]
        client = second.events(c, direction="client")
        assert list(client["type"]) == ["response.cancel"]
        assert list(second.events(c, types=["response.done", "response.created"])["type"]) == \
            ["response.created", "response.done"]
        assert len(after[2]) == len(reply_events("ga", "u", "a", "r", None, T0)) + 2 + 3 + 1
        # The second store carries on the same conversation where the first left it.
        record(second, c, [(ev("conversation.item.truncated", item_id="item_A", content_index=0, audio_end_ms=5),
                            T0 + 9)])
        assert table(second, c) == [("You", "Good morning", "final"), ("AI", "Hello there.", "interrupted")]
    finally:
        first.close()
        second.close()


def test_conversations_left_open_by_a_closed_store_are_marked_ended(database) -> None:
    first = SessionStore(database)
    open_one = new_conversation(first)
    ended = new_conversation(first)
    now = time.time()
    record(first, open_one, reply_events("ga", "item_U", "item_A", "resp_1", None, now))
    first.end_conversation(ended, "stopped by the user")
    first.close()  # no end for `open_one`: its store is gone

    second = SessionStore(database)
    try:
        found = second.conversation(open_one)
        assert found["end_reason"] == RESTART_REASON
        assert found["ended_at"] == pytest.approx(now + 2.0)  # the last thing it recorded
        assert second.conversation(ended)["end_reason"] == "stopped by the user"
    finally:
        second.close()


def test_end_is_idempotent(store) -> None:
    c = new_conversation(store)
    store.end_conversation(c, "stopped by the user")
    store.end_conversation(c, "session_expired")
    assert store.flush()
    assert store.conversation(c)["end_reason"] == "stopped by the user"


# -- listing and search ------------------------------------------------------------------------------
def test_search_and_listing(store) -> None:
    kyoto = new_conversation(store, visitor="v1")
    record(store, kyoto, user_words("ga", "item_U", "What is the weather in KYŌTO?", T0))
    planning = new_conversation(store, title="Weekly Planning", visitor="v2")
    record(store, planning, user_words("ga", "item_P", "Let's plan 100% of it", T0))
    assert store.flush()

    assert [c["id"] for c in store.conversations()] == [planning, kyoto]  # newest first
    assert [c["id"] for c in store.conversations(search="kyōto")] == [kyoto]
    assert [c["id"] for c in store.conversations(search="planning")] == [planning]
    assert [c["id"] for c in store.conversations(search="100%")] == [planning]
    assert store.conversations(search="nowhere") == []
    assert [c["id"] for c in store.conversations(visitor="v1")] == [kyoto]
    listed = store.conversations(limit=1)[0]
    assert {"started_at", "ended_at", "end_reason", "model", "backend", "turns", "cost_usd"} <= listed.keys()
    assert store.totals(visitor="v2")["conversations"] == 1
    assert store.conversation("conv_missing") is None


# -- exports -----------------------------------------------------------------------------------------
def test_exports(store) -> None:
    c = new_conversation(store, title="Greetings")
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    record(store, c, user_words("ga", "item_U", "Hi, who are you?", T0 + 2.1))
    record(store, c, reply_done("ga", "item_A", "resp_1", "Hello there, I'm Koe.", T0 + 3, usage=USAGE))
    store.end_conversation(c, "stopped by the user")
    assert store.flush()

    rows = list(csv.DictReader(io.StringIO(store.export(c, "csv"))))
    assert [(r["speaker"], r["text"], r["status"]) for r in rows] == \
        [("You", "Hi, who are you?", "final"), ("AI", "Hello there, I'm Koe.", "final")]
    assert rows[1]["latency_ms"] == "800" and rows[0]["latency_ms"] == ""

    data = json.loads(store.export(c, "json"))
    assert data["conversation"]["title"] == "Greetings"
    assert [r["text"] for r in data["transcript"]] == ["Hi, who are you?", "Hello there, I'm Koe."]
    assert data["transcript"][0]["latency_ms"] is None
    assert data["usage"][0]["cost_usd"] == pytest.approx(USAGE_COST)

    md = store.export(c, "markdown")
    assert md.startswith("# Greetings")
    assert "**You:** Hi, who are you?" in md and "**AI:** Hello there, I'm Koe." in md
    assert "gpt-realtime" in md and "stopped by the user" in md

    with pytest.raises(KeyError):
        store.export("conv_missing", "csv")


# -- change counter, secrets, throughput -------------------------------------------------------------
def test_version_grows_on_change_only(store) -> None:
    c, other = new_conversation(store), new_conversation(store)
    empty = store.transcript(c)
    assert empty.empty and list(empty.columns) == ["time", "speaker", "text", "status", "latency_ms", "item_id", "heard"]
    v0 = store.version(c)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    assert store.flush()
    v1 = store.version(c)
    assert v1 > v0
    assert store.flush() and store.version(c) == v1  # nothing new
    record(store, other, user_words("ga", "item_X", "elsewhere", T0))
    assert store.flush() and store.version(c) == v1  # another conversation's news
    store.set_latency(c, "item_A", 800)  # the same figure again: no change
    assert store.flush() and store.version(c) == v1
    store.end_conversation(c, "stopped by the user")
    assert store.flush() and store.version(c) > v1
    v2 = store.version(c)
    store.end_conversation(c, "again")
    assert store.flush() and store.version(c) == v2


def test_secrets_never_reach_the_disk(tmp_path) -> None:
    path = tmp_path / "koe.sqlite"
    store = SessionStore(path)
    c = new_conversation(store, settings={"voice": "marin", "api_key": "sk-SETTINGSSECRET"})
    store.record_event(c, "client", {"type": "session.update", "session": {
        "OpenAI_API_Key": "sk-EVENTSECRET", "headers": [{"Authorization": "Bearer sk-HEADERSECRET"}]}}, T0)
    store.record_event(c, "server", {"type": "session.created", "session": {
        "client_secret": {"value": "ek_EPHEMERALSECRET", "expires_at": 1}, "voice": "marin"}}, T0)
    assert store.flush()
    payloads = " ".join(store.events(c)["payload"])
    assert "voice" in payloads and "[redacted]" in payloads
    store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"marin" in on_disk
    for secret in (b"SETTINGSSECRET", b"EVENTSECRET", b"HEADERSECRET", b"EPHEMERALSECRET"):
        assert secret not in on_disk


def test_recording_never_waits_on_the_disk(store, caplog) -> None:
    c = new_conversation(store)
    blocker = store.engine.connect()  # another connection holds the write lock: the writer must wait
    if blocker.dialect.name == "sqlite":
        blocker.execution_options(koe_write=True).begin()  # BEGIN IMMEDIATE: the database's write lock
    else:
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE events IN EXCLUSIVE MODE")  # writes wait, reads do not
    try:
        with caplog.at_level(logging.ERROR, logger="koe.store"):
            for i in range(3000):
                store.record_event(c, "server", {"type": "response.output_text.delta", "event_id": f"event_{i}",
                                                 "response_id": "resp_1", "item_id": "item_A", "delta": "x"}, T0 + i)
        # Every call returned although nothing could be committed yet.
        assert store.events(c).empty
    finally:
        blocker.rollback()
        blocker.close()
    assert store.flush(timeout_s=30)
    assert len(store.events(c)) == 3000
    assert store.transcript(c)["text"].tolist() == ["x" * 3000]
    assert not caplog.records


# -- what was heard (issue 11) ------------------------------------------------------------------------
def test_a_cut_reply_keeps_what_was_heard_and_later_text_does_not_undo_the_cut(store) -> None:
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    store.record_event(c, "app", {"type": "koe.reply_cut", "item_id": "item_A", "audio_end_ms": 400,
                                  "heard_chars": 5}, T0 + 2.2)
    record(store, c, reply_done("ga", "item_A", "resp_1", "Hello there, traveller.", T0 + 2.5, status="cancelled"))
    assert store.flush()
    row = store.transcript(c).iloc[1]
    assert (row["text"], row["status"], row["heard"]) == ("Hello there, traveller.", "interrupted", 5)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the page's components, at the repo root
    from components.live import transcript_markdown  # the page strikes the unheard tail through
    assert "| Hello ~~there, traveller.~~ |" in transcript_markdown(store.transcript(c))


def test_a_copied_history_reuses_the_item_ids_and_adds_no_rows(store) -> None:
    """A voice change seeds a new upstream session with the conversation under the same item ids."""
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    record(store, c, user_words("ga", "item_U", "Hi, who are you?", T0 + 2.1))
    record(store, c, reply_done("ga", "item_A", "resp_1", "Hello there.", T0 + 2.5))
    record(store, c, [(ev("session.created", session={}), T0 + 5)])
    for previous, item in ((None, user_item("item_U")), ("item_U", assistant_item("item_A", "completed", "Hello there."))):
        record(store, c, [(ev("conversation.item.added", item=item, previous_item_id=previous), T0 + 5.1),
                          (ev("conversation.item.done", item=item, previous_item_id=previous), T0 + 5.1)])
    assert table(store, c) == [("You", "Hi, who are you?", "final"), ("AI", "Hello there.", "final")]


def test_rows_left_without_text_are_closed_and_hidden(store) -> None:
    """STOP before the reply, silence: rows that never got words are not shown or exported."""
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0)[:8])  # no words either side
    assert table(store, c) == [("You", "", "partial"), ("AI", "", "partial")]
    store.end_conversation(c, "stopped by the user")
    assert table(store, c) == []
    assert "**You:**" not in store.export(c, "markdown")


def test_a_cut_reply_keeps_its_words_when_the_server_keeps_only_whole_clauses(store) -> None:
    """Koe's local backend cuts its own transcript at the last clause it played whole."""
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    store.record_event(c, "app", {"type": "koe.reply_cut", "item_id": "item_A", "audio_end_ms": 400,
                                  "heard_chars": 5}, T0 + 2.2)
    record(store, c, reply_done("ga", "item_A", "resp_1", "", T0 + 2.5, status="cancelled"))
    assert table(store, c)[1] == ("AI", "Hello there", "interrupted")


def test_a_cut_reply_keeps_its_words_when_the_truncated_transcript_comes_before_the_cut(store) -> None:
    """Push to talk over a reply: the server truncates and closes the reply (its transcript cut to the
    clauses played whole: none) before the relay records how much was heard."""
    c = new_conversation(store)
    record(store, c, reply_events("ga", "item_U", "item_A", "resp_1", None, T0))
    record(store, c, [(ev("conversation.item.truncated", item_id="item_A", content_index=0, audio_end_ms=400),
                       T0 + 2.2)])
    record(store, c, reply_done("ga", "item_A", "resp_1", "", T0 + 2.2, status="cancelled"))
    store.record_event(c, "app", {"type": "koe.reply_cut", "item_id": "item_A", "audio_end_ms": 400,
                                  "heard_chars": 5}, T0 + 2.3)
    assert table(store, c)[1] == ("AI", "Hello there", "interrupted")
    assert store.transcript(c).iloc[1]["heard"] == 5
