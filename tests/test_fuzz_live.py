"""Hypothesis against a live call: events generated from OpenAI's own request types, then mutated
(unknown keys, wrong types, missing keys, huge and deep values, bytes that are no UTF-8), sent on a
real `oai-events` data channel of a call to koe.local on loopback.

After every event: the call is alive, at most one `error` carries the event's id (exactly one when
koe's parser refuses it), no `server_error`, and every error event is one OpenAI's
`RealtimeErrorEvent` type reads. At the end a text turn still completes and every `response.created`
got exactly one `response.done`. One call serves all examples of a dialect (bounded for CI).
"""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from openai.types.beta.realtime import realtime_client_event_param as beta_types
from openai.types.realtime import realtime_client_event_param as ga_types
from openai.types.realtime.realtime_error_event import RealtimeErrorEvent

from koe.client import Backend, RealtimeConnection
from koe.protocol import EventError, SessionSettings, parse_client_event
from koe.relay import LoopThread

from tests.conftest import LOCAL_KEY
from tests.test_client_events import jsonable, nodes, put

MODELS = {"ga": "gpt-realtime", "beta": "gpt-4o-realtime-preview-2024-12-17"}
TYPES = {"ga": ga_types.RealtimeClientEventParam, "beta": beta_types.RealtimeClientEventParam}
INSTRUCTIONS = "Answer in one short sentence."
_ids = itertools.count()


class LiveCall:
    """One call on a loop thread of its own, so Hypothesis's synchronous examples can drive it."""

    def __init__(self, url: str, dialect: str) -> None:
        self.dialect = dialect
        self.loop = LoopThread(f"fuzz-{dialect}")
        settings = SessionSettings(model=MODELS[dialect], instructions=INSTRUCTIONS, max_output_tokens=16,
                                   voice="alloy", turn_detection=None)
        self.connection = RealtimeConnection(Backend(url, api_key=LOCAL_KEY), settings)
        self.events: list = []
        self.connection.add_listener(self.events.append)
        self.run(self.connection.connect(), 90)

    def run(self, coro, timeout_s: float = 30):
        return self.loop.submit(coro).result(timeout_s)

    def errors_for(self, event_id: str) -> list:
        return [e for e in self.events if e.type == "error" and getattr(e.error, "event_id", None) == event_id]

    def send(self, message: dict | str | bytes) -> None:
        """Send as it is (a dict as JSON text), then wait until the server has handled it: events are
        handled in order, so the error answering a probe that follows means it is done."""
        async def go() -> None:
            channel = self.connection._channel  # raw text and bytes, not only well-formed events
            channel.send(json.dumps(message) if isinstance(message, dict) else message)
            probe = f"probe_{next(_ids)}"
            channel.send(json.dumps({"type": "conversation.item.retrieve", "item_id": probe, "event_id": probe}))
            for _ in range(1000):
                if self.errors_for(probe) or self.connection.closed.is_set():
                    return
                await asyncio.sleep(0.02)
            raise AssertionError("the server stopped answering")
        self.run(go())
        assert not self.connection.closed.is_set(), self.connection.close_reason

    async def settled(self) -> None:
        """Until every response.created has its response.done."""
        def count(kind: str) -> int:
            return sum(1 for e in self.events if e.type == kind)
        while count("response.created") != count("response.done"):
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.run(self.connection.close())


@pytest.fixture(scope="module", params=["ga", "beta"])
def live(request, local_server):
    call = LiveCall(local_server.url, request.param)
    yield call
    call.close()


def mutations(event: dict) -> st.SearchStrategy:
    """The event as generated, or one thing wrong with it."""
    paths = [path for path, _ in nodes(event) if path]
    objects = [path for path, value in nodes(event) if isinstance(value, dict)]
    wrong = st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(), st.just([1, "a"]), st.just({}))
    options = [st.just(event),
               st.sampled_from(objects).map(lambda at: put(event, f"{at}.zz_typo" if at else "zz_typo", 1))]
    if paths:
        options += [
            st.tuples(st.sampled_from(paths), wrong).map(lambda pv: put(event, *pv)),
            st.sampled_from(paths).map(lambda at: put(event, at, "x" * 30_000)),
            st.sampled_from(paths).map(lambda at: put(event, at, json.loads("[" * 60 + "]" * 60))),
            st.sampled_from([p for p in paths if "[" not in p.rsplit(".", 1)[-1]] or paths).map(
                lambda at: _without(event, at)),
        ]
    return st.one_of(options)


def _without(event: dict, path: str) -> dict:
    copy = json.loads(json.dumps(event))
    parts = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
    node = copy
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]
    return copy


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_and_mutated_events_never_break_the_call(live, data):
    raw = data.draw(st.sampled_from(["event", "event", "event", "event", "garbage", "bytes"]))
    if raw == "garbage":
        message = data.draw(st.text(max_size=200))
        live.send(message)
        return
    if raw == "bytes":
        live.send(data.draw(st.binary(min_size=1, max_size=200)) + b"\xff")
        return
    event = jsonable(data.draw(st.from_type(TYPES[live.dialect])))
    event = data.draw(mutations(event))
    event_id = f"fuzz_{next(_ids)}"
    if isinstance(event, dict) and ("event_id" in event or data.draw(st.booleans())):
        event = {**event, "event_id": event_id}
    try:
        parse_client_event(event, live.dialect)
        refused = False
    except EventError:
        refused = True
    live.send(event)
    answers = live.errors_for(event_id)
    assert len(answers) <= 1, answers
    if refused and isinstance(event, dict) and event.get("event_id") == event_id:
        assert len(answers) == 1, event


def test_after_the_fuzzing_the_call_still_talks(live):
    errors = [e for e in live.events if e.type == "error"]
    for error in errors:
        RealtimeErrorEvent.model_validate(error.model_dump(mode="json"))  # OpenAI's own type reads it
        assert error.error.type != "server_error" and error.error.code != "server_error", error
    live.send({"type": "response.cancel"})  # whatever a fuzzed response.create started
    live.run(live.settled(), 120)
    session = {"type": "realtime", "instructions": INSTRUCTIONS, "max_output_tokens": 16,
               "output_modalities": ["text"]} if live.dialect == "ga" else {
        "instructions": INSTRUCTIONS, "max_response_output_tokens": 16, "modalities": ["text"]}
    live.send({"type": "session.update", "session": session})
    live.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}})
    earlier = {e.response["id"] for e in live.events if e.type == "response.created"}
    live.send({"type": "response.create", "event_id": "final_turn"})
    assert not live.errors_for("final_turn")
    live.run(live.settled(), 180)
    final = [e.response for e in live.events if e.type == "response.done" and e.response["id"] not in earlier]
    assert len(final) == 1 and final[0]["status"] == "completed", final
    created = [e.response["id"] for e in live.events if e.type == "response.created"]
    finished = [e.response["id"] for e in live.events if e.type == "response.done"]
    assert sorted(created) == sorted(finished) and len(set(finished)) == len(finished)
