"""Limits end sessions cleanly, in the engine: admission, session minutes, idle time, cost, concurrency.

The counting tests run on SQLite and on PostgreSQL (the `database` fixture), several servers and
threads at once. The relay tests run real peers against the local server (as tests/test_relay.py
does) with short limits; the session store shows each ended conversation keeps its transcript and
says why it ended.
"""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from koe.db import admissions, limit_counters, open_database
from koe.limits import SPENT, LimitReached, Ledger, Limiter, Limits, start_of_day
from koe.relay import Relay
from koe.store import SessionStore

from test_relay import SETTINGS, FakeBrowser, loop_thread, wait_until  # noqa: F401  (loop_thread is a fixture)


@pytest.fixture
def ledger(database):
    engine = open_database(database)
    yield Ledger(engine)
    engine.dispose()


@pytest.fixture
def limiter(ledger):
    """limiter(limits, spent=USD already spent today, sessions=admissions of visitor "a" this hour)."""
    made = []

    def make(limits: Limits, *, spent: float = 0.0, sessions: int = 0) -> Limiter:
        if spent:
            ledger.add(SPENT, start_of_day(), spent)
        if sessions:
            with ledger.engine.begin() as conn:
                conn.execute(admissions.insert(), [{"visitor": "a", "at": time.time() - 60}] * sessions)
        made.append(Limiter(limits, ledger))
        return made[-1]

    yield make
    for gate in made:
        gate.close()


# -- admission and arithmetic, no peers ----------------------------------------------------------------
def test_admission_refuses_beyond_concurrency_and_gives_slots_back(limiter):
    gate = limiter(Limits(max_concurrent_sessions=2))
    first, second = gate.admit("a", model="gpt-realtime", billed=True), gate.admit("b", model="gpt-realtime", billed=True)
    with pytest.raises(LimitReached, match="all 2 conversation slots"):
        gate.admit("c", model="gpt-realtime", billed=True)
    first.release()
    first.release()  # idempotent: one slot back, not two
    assert gate.active == 1
    gate.admit("c", model="gpt-realtime", billed=True)
    second.release()


def test_admission_refuses_a_visitor_over_the_hourly_quota_but_not_the_owner(limiter):
    gate = limiter(Limits(max_sessions_per_hour=3), sessions=3)
    with pytest.raises(LimitReached, match="3 conversations in the last hour"):
        gate.admit("a", model="gpt-realtime", billed=True)
    gate.admit("owner", model="gpt-realtime", billed=True, exempt=True)


def test_admission_refuses_once_the_daily_budget_is_spent(limiter):
    with pytest.raises(LimitReached, match=r"\$5.00 budget"):
        limiter(Limits(), spent=5.0).admit("a", model="gpt-realtime", billed=True)


def test_zero_turns_a_limit_off(limiter):
    gate = limiter(Limits(max_concurrent_sessions=0, max_sessions_per_hour=0, max_daily_cost_usd=0), spent=1e9,
                   sessions=1000)
    guards = [gate.admit("a", model="gpt-realtime", billed=True) for _ in range(50)]
    assert gate.active == 50 and guards[0].check() is None


def test_cost_comes_from_response_done_usage_and_local_sessions_are_free(limiter):
    usage = {"input_tokens": 1000, "output_tokens": 1000, "input_token_details": {"audio_tokens": 1000},
             "output_token_details": {"audio_tokens": 1000}}
    done = {"type": "response.done", "response": {"id": "resp_1", "usage": usage}}
    gate = limiter(Limits(max_session_cost_usd=0.10))
    billed = gate.admit("a", model="gpt-realtime", billed=True)
    assert billed.observe(done) is None  # 1000 audio tokens in at $32/M, 1000 out at $64/M: $0.096
    assert billed.cost_usd == pytest.approx(0.096) and gate.spent_today == pytest.approx(0.096)
    assert billed.input_tokens == 1000 and billed.output_tokens == 1000
    assert billed.observe(done) == "the session reached its $0.10 cost cap"
    free = gate.admit("b", model="gpt-realtime", billed=False)
    assert free.observe(done) is None and free.cost_usd == 0


def test_the_day_rolls_over(ledger):
    now = [start_of_day() + 23.9 * 3600]
    gate = Limiter(Limits(max_daily_cost_usd=1.0), ledger, wall_clock=lambda: now[0])
    try:
        gate.spend(1.0)
        assert gate.spent_today == 1.0  # at once, before the ledger has counted it
        with pytest.raises(LimitReached):
            gate.admit("a", model="gpt-realtime", billed=True)
        now[0] += 3600  # the next day: nothing spent since its midnight
        assert gate.spent_today == 0.0
        gate.admit("a", model="gpt-realtime", billed=True)
    finally:
        gate.close()


def test_spending_never_waits_on_the_database(ledger):
    """The relay's loop spends: with the counter locked by another transaction, every spend returns,
    and the guards see it at once; the ledger counts them all once the lock is gone."""
    gate = Limiter(Limits(max_daily_cost_usd=1.0), ledger)
    ledger.add(SPENT, start_of_day(), 0.5)  # the counter's row exists: lock it
    assert gate.refresh() == 0.5
    blocker = ledger.engine.connect()
    blocker.execution_options(koe_write=True).begin()  # SQLite: the database's write lock
    blocker.execute(limit_counters.update().values(value=limit_counters.c.value))  # PostgreSQL: the row's
    try:
        for _ in range(100):
            gate.spend(0.001)
        assert gate.spent_today == pytest.approx(0.6)  # counted here before the database has it
        assert not gate.flush(timeout_s=0.5)  # the ledger is still waiting for the lock
        assert gate.spent_today == pytest.approx(0.6)
    finally:
        blocker.rollback()
        blocker.close()
    try:
        assert gate.flush(timeout_s=30)
        assert gate.refresh() == pytest.approx(0.6)
    finally:
        gate.close()


def test_concurrent_servers_share_the_budget_and_each_visitors_quota(database):
    """Two app servers (engines) with eight threads each, all at once: no spend is lost, and one
    visitor gets exactly the hourly quota however the admissions interleave."""
    servers = [Limiter(Limits(max_sessions_per_hour=6, max_concurrent_sessions=0, max_daily_cost_usd=1000),
                       Ledger(open_database(database))) for _ in range(2)]
    admitted, refused, start = [], [], threading.Barrier(16)

    def visitor_and_replies(gate: Limiter) -> None:
        start.wait()
        try:
            admitted.append(gate.admit("v_shared", model="gpt-realtime", billed=True))
        except LimitReached as exc:
            refused.append(str(exc))
        for _ in range(25):
            gate.ledger.add(SPENT, start_of_day(), 0.01)

    threads = [threading.Thread(target=visitor_and_replies, args=(gate,)) for gate in servers for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(admitted) == 6 and len(refused) == 10
        assert all("6 conversations in the last hour" in reason for reason in refused)
        assert [gate.refresh() for gate in servers] == [pytest.approx(4.00)] * 2  # 16 × 25 × $0.01
    finally:
        for gate in servers:
            gate.close()
            gate.ledger.engine.dispose()


# -- real sessions through the relay -------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    store = SessionStore(tmp_path / "koe.sqlite3")
    yield store
    store.close()


@pytest.fixture
def sqlite_limiter(store):
    """Limiters counting in the store's SQLite database (the relay tests need no second database)."""
    made = []

    def make(limits: Limits, *, spent: float = 0.0) -> Limiter:
        made.append(Limiter(limits, Ledger(store.engine)))
        if spent:
            made[-1].ledger.add(SPENT, start_of_day(), spent)
        return made[-1]

    yield make
    for gate in made:
        gate.close()


def recorded(relay: Relay, store: SessionStore, visitor: str = "v_test") -> str:
    """Wire the relay to a new stored conversation, as the app does."""
    conversation_id = store.start_conversation(backend="openai", model=relay.settings.model, dialect="ga",
                                               settings={}, visitor=visitor)
    relay.on_event = functools.partial(store.record_event, conversation_id)
    relay.ended = []
    relay.on_end = lambda reason: (relay.ended.append(reason), store.end_conversation(conversation_id, reason))
    return conversation_id


async def talk_until_the_limit(relay: Relay, timeout_s: float, said: np.ndarray | None = None) -> None:
    """A browser on the relay says `said` (else only silence) until a limit ends the call; then all closes."""
    browser = FakeBrowser(relay)
    try:
        if said is not None:
            browser.say(said)
        await wait_until(lambda: relay.ended, timeout_s, "the limit to end the session")
    finally:
        await browser.close()
        relay.stop()


async def test_session_minutes_end_the_call_and_keep_the_transcript(backend, speech, loop_thread, store, sqlite_limiter):
    gate = sqlite_limiter(Limits(max_session_minutes=0.15, idle_timeout_s=0))  # 9 s
    relay = Relay(backend, SETTINGS, loop_thread)
    conversation_id = recorded(relay, store)
    relay.start(gate.admit("v_test", model=SETTINGS.model, billed=False)).result(timeout=30)
    assert relay.status.state == "live" and gate.active == 1
    await talk_until_the_limit(relay, 40, said=speech("Hello there, how are you?"))
    assert relay.status.message == "Ended: the session reached its 0.15-minute limit."
    assert gate.active == 0
    store.flush()
    meta = store.conversation(conversation_id)
    assert meta["end_reason"] == "the session reached its 0.15-minute limit"
    transcript = store.transcript(conversation_id)
    assert "how are you" in " ".join(transcript["text"]).lower()
    assert "koe.limit_reached" in set(store.events(conversation_id)["type"])


async def test_idle_timeout_ends_a_silent_session(backend, loop_thread, store, sqlite_limiter):
    gate = sqlite_limiter(Limits(idle_timeout_s=1.5))
    relay = Relay(backend, SETTINGS, loop_thread)
    conversation_id = recorded(relay, store)
    started = time.monotonic()
    relay.start(gate.admit("v_test", model=SETTINGS.model, billed=False)).result(timeout=30)
    await talk_until_the_limit(relay, 15)  # only silence
    assert 1.5 <= time.monotonic() - started < 10
    assert "idle timeout" in relay.status.message and gate.active == 0
    store.flush()
    assert "idle timeout" in store.conversation(conversation_id)["end_reason"]


async def test_the_session_cost_cap_ends_the_call_after_the_reply_that_crossed_it(backend, speech, loop_thread, store, sqlite_limiter):
    gate = sqlite_limiter(Limits(max_session_cost_usd=0.0001, idle_timeout_s=0))
    relay = Relay(backend, SETTINGS, loop_thread)  # the local server, billed at gpt-realtime's prices
    conversation_id = recorded(relay, store)
    relay.start(gate.admit("v_test", model="gpt-realtime", billed=True)).result(timeout=30)
    await talk_until_the_limit(relay, 60, said=speech("Please count from one to five."))
    assert relay.status.message == "Ended: the session reached its $0.00 cost cap."
    assert relay.guard.cost_usd >= 0.0001 and gate.spent_today == pytest.approx(relay.guard.cost_usd)
    store.flush()
    rows = store.transcript(conversation_id)
    assert (rows["speaker"] == "AI").any()  # the reply that crossed the cap is kept
    assert store.usage(conversation_id)["cost_usd"].sum() == pytest.approx(relay.guard.cost_usd)


async def test_the_daily_budget_ends_running_sessions(backend, speech, loop_thread, store, sqlite_limiter):
    gate = sqlite_limiter(Limits(max_daily_cost_usd=1.0, idle_timeout_s=0), spent=0.99999)
    relay = Relay(backend, SETTINGS, loop_thread)
    recorded(relay, store)
    relay.start(gate.admit("v_test", model="gpt-realtime", billed=True)).result(timeout=30)
    await talk_until_the_limit(relay, 60, said=speech("Please count from one to five."))
    assert "today's $1.00 budget for this demo is spent" in relay.status.message
    with pytest.raises(LimitReached):
        gate.admit("v_other", model="gpt-realtime", billed=True)


async def test_concurrency_refuses_a_second_session_until_the_first_ends(backend, loop_thread, sqlite_limiter):
    gate = sqlite_limiter(Limits(max_concurrent_sessions=1))
    first = Relay(backend, SETTINGS, loop_thread)
    first.start(gate.admit("a", model=SETTINGS.model, billed=False)).result(timeout=30)
    second = Relay(backend, SETTINGS, loop_thread)
    try:
        with pytest.raises(LimitReached) as refused:
            gate.admit("b", model=SETTINGS.model, billed=False)
        second.refuse(str(refused.value))
        assert second.status.state == "failed" and second.status.message.startswith("Not started: all 1 conversation slots")
    finally:
        first.stop()
    assert gate.active == 0
    second.start(gate.admit("b", model=SETTINGS.model, billed=False)).result(timeout=30)
    assert second.status.state == "live"
    second.stop()
    assert gate.active == 0


async def test_a_failed_connection_gives_its_slot_back(loop_thread, sqlite_limiter):
    from koe.client import Backend

    gate = sqlite_limiter(Limits(max_concurrent_sessions=1))
    relay = Relay(Backend("http://127.0.0.1:9", api_key="x"), SETTINGS, loop_thread)
    relay.start(gate.admit("a", model=SETTINGS.model, billed=False)).result(timeout=30)
    assert relay.status.state == "failed" and gate.active == 0
