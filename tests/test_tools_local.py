"""Function calling end to end on the local backend: a chat endpoint stub that calls tools, the relay's
tool runner, the store. Every event the local server sends is checked against openai's types (conftest)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from chat_stub import ChatStub, Reply, ToolCalls
from typed_turn import ask, tool_relay
from koe.client import Backend
from koe.client.simulated_user import SimulatedUser
from koe.local import LocalServer
from koe.protocol import SessionSettings
from koe.relay import LoopThread, Relay
from koe.store import SessionStore
from koe.tool_runner import ToolRunner, stored_in
from koe.tools import ToolContext, default_registry

TOKYO = ZoneInfo("Asia/Tokyo")


def _answer_from_the_tool(body: dict) -> str:
    """The stub's second reply: read the tool's output the way a model would."""
    result = json.loads(body["messages"][-1]["content"])
    return f"It is {result['time']} in {result['timezone']}."


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-4o-realtime-preview-2024-12-17"])
async def test_what_time_is_it_is_answered_through_the_tool(models, tmp_path, model):
    stub = ChatStub(script=[ToolCalls([("current_time", "{}")]), Reply(_answer_from_the_tool)]).start()
    server = LocalServer(port=0, models=models, chat_base_url=stub.url, chat_model="tool-model").start()
    store = SessionStore(tmp_path / "koe.sqlite3")
    registry = default_registry()
    beta = "preview" in model
    settings = SessionSettings(model=model, voice="alloy", turn_detection=None, transcription=None,
                               output_modalities="text" if beta else "audio",
                               tools=registry.declarations(["current_time", "calculate"]))
    relay = Relay(Backend(server.url), settings, LoopThread())
    conversation_id = store.start_conversation(backend="local", model=model, dialect="beta" if beta else "ga",
                                               settings={}, visitor="v_tools")
    events: list[tuple[str, dict]] = []

    def record(direction: str, event: dict, at: float) -> None:
        events.append((direction, event))
        store.record_event(conversation_id, direction, event, at)

    relay.on_event = record
    relay.use_tools(ToolRunner(registry, ToolContext(visitor="v_tools", timezone="Asia/Tokyo", store=store,
                                                     conversation_id=conversation_id),
                               on_call=stored_in(store, conversation_id)))
    try:
        relay.start().result(timeout=60)
        assert relay.status.state == "live", relay.status.message
        before = datetime.now(TOKYO)
        await ask(relay, events, "What time is it?")
        after = datetime.now(TOKYO)
    finally:
        relay.stop()
        server.stop()
        stub.stop()

    done = [e for d, e in events if e["type"] == "response.done"]
    assert [r["response"]["status"] for r in done] == ["completed", "completed"], [
        (d, e["type"], e.get("error") or e.get("item", {}).get("type")) for d, e in events]
    # The first reply only calls the function: no empty assistant message is made (nor shown) before the call.
    assert [o["type"] for o in done[0]["response"]["output"]] == ["function_call"]
    call = done[0]["response"]["output"][0]
    assert (call["name"], call["arguments"], call["call_id"]) == ("current_time", "{}", "call_stub0")
    assert [e["type"] for d, e in events if d == "server" and e["type"].startswith("response.function_call")][-1] \
        == "response.function_call_arguments.done"
    # The app answered the call, then asked for the reply: in that order, once.
    sent = [e for d, e in events if d == "client" and e["type"] in ("conversation.item.create", "response.create")]
    assert [e["type"] for e in sent] == ["conversation.item.create", "response.create"] * 2
    output = sent[2]["item"]
    assert (output["type"], output["call_id"]) == ("function_call_output", "call_stub0")
    said = json.loads(output["output"])
    assert said["timezone"] == "Asia/Tokyo" and said["time"] in {f"{t:%H:%M}" for t in (before, after)}
    final = [e.get("transcript") or e.get("text") for _, e in events
             if e["type"] in ("response.output_audio_transcript.done", "response.text.done")][-1]
    assert final == f"It is {said['time']} in Asia/Tokyo."

    # What the chat endpoint was asked: the tools in chat-completions form, then the call and its result.
    first, second = stub.requests[0].body, stub.requests[1].body
    assert [t["function"]["name"] for t in first["tools"]] == ["current_time", "calculate"]
    assert first["tools"][0]["type"] == "function" and first["tool_choice"] == "auto"
    assert "timezone" in first["tools"][0]["function"]["parameters"]["properties"]
    assert second["messages"][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_stub0", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_stub0", "content": output["output"]}]

    store.flush()
    stored = store.events(conversation_id, types=["koe.tool_call"])
    assert len(stored) == 1 and json.loads(stored["payload"][0])["name"] == "current_time"
    # The transcript (History, every export) shows the call where it happened, with how long it took.
    rows = store.transcript(conversation_id)
    assert list(rows["speaker"]) == ["You", "Tool call", "Tool result", "AI"]
    assert list(rows["text"]) == ["What time is it?", "current_time({})", output["output"], final]
    assert rows["latency_ms"].iloc[1] >= 0
    exported = store.export(conversation_id, "json")
    assert "current_time({})" in exported and "Tool result" in exported
    assert "Tool call" in store.export(conversation_id, "csv") and "Tool call" in store.export(conversation_id, "markdown")
    store.close()


async def test_the_fast_bundled_model_says_once_that_it_cannot_call_tools(backend):
    """conftest runs the server with the fast profile (SmolLM2), whose chat template has no tools."""
    settings = SessionSettings(voice="alloy", turn_detection=None, tools=default_registry().declarations(["calculate"]))
    async with SimulatedUser(backend, settings) as user:
        await user.connection.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief.", "tools": settings.to_wire("ga")["tools"]}})
        await user.seen("session.updated", where=lambda e: e.session.get("instructions") == "Be brief.")
        warnings = [e.error for e in user.of_type("error") if e.error.code == "local_tools_unsupported"]
    assert len(warnings) == 1 and warnings[0].type == "warning" and "cannot call functions" in warnings[0].message
    assert "SmolLM2" in warnings[0].message


async def test_a_tool_the_session_does_not_offer_is_not_run(models):
    stub = ChatStub(script=[ToolCalls([("search_history", '{"query": "password"}')]), Reply("I cannot look.")]).start()
    server = LocalServer(port=0, models=models, chat_base_url=stub.url, chat_model="tool-model").start()
    settings = SessionSettings(voice="alloy", turn_detection=None, transcription=None, output_modalities="text",
                               tools=default_registry().declarations(["calculate"]))
    relay, events, calls = tool_relay(server.url, settings, ToolContext(visitor="v_x"))
    try:
        relay.start().result(timeout=60)
        await ask(relay, events, None, timeout_s=60)
    finally:
        relay.stop()
        server.stop()
        stub.stop()
    assert [c.error for c in calls] == ["there is no tool named 'search_history' in this session"]
