"""Function calling: tools in the settings (both dialects), function-call events, checked against openai's types."""

from __future__ import annotations

import json

import pytest
from openai.types.beta.realtime.session_update_event import Session as BetaSession
from openai.types.realtime import RealtimeSessionCreateRequest

from koe.protocol import (
    FunctionTool, McpTool, SessionSettings, SettingsError, ToolChoiceFunction, function_call_item,
    function_call_output_item, parse_server_event, validate_for_dialect,
)
from openai_oracle import check_server_event

CLOCK = FunctionTool(name="current_time", description="The time now.",
                     parameters={"type": "object", "properties": {"timezone": {"type": "string"}}})
MCP = {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp",
       "require_approval": "never", "allowed_tools": ["ask_question"]}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_tools_round_trip_and_match_openai_session_types(dialect: str) -> None:
    tools = [CLOCK] + ([McpTool.model_validate(MCP)] if dialect == "ga" else [])
    settings = SessionSettings(voice="alloy", tools=tools, tool_choice=ToolChoiceFunction(name="current_time"))
    validate_for_dialect(settings, dialect)
    wire = json.loads(json.dumps(settings.to_wire(dialect)))
    assert SessionSettings.from_wire(dialect, wire) == settings
    if dialect == "ga":
        assert wire["tools"][1] == MCP  # MCP servers go to OpenAI unchanged, every key kept
        assert wire["tool_choice"] == {"type": "function", "name": "current_time"}
        RealtimeSessionCreateRequest.model_validate(wire)  # OpenAI's own shape of the session
    else:
        assert wire["tool_choice"] == "current_time"  # beta names the function in a string
        BetaSession.model_validate(wire)


def test_tool_settings_are_validated_in_plain_words() -> None:
    with pytest.raises(SettingsError, match=r"^tools\.0\.type: must be 'function', 'mcp' \(got 'web'\)"):
        SessionSettings().merge_wire("ga", {"type": "realtime", "tools": [{"type": "web"}]})
    with pytest.raises(SettingsError, match=r"^tools\.0\.name: .*pattern"):
        SessionSettings().merge_wire("ga", {"type": "realtime", "tools": [{"type": "function", "name": "a b"}]})
    with pytest.raises(SettingsError, match=r"^tool_choice: must be 'auto', 'none' or 'required'"):
        SessionSettings().merge_wire("ga", {"type": "realtime", "tool_choice": "sometimes"})
    with pytest.raises(SettingsError, match="MCP servers are part of the GA interface only"):
        validate_for_dialect(SessionSettings(voice="alloy", tools=[MCP]), "beta")
    # A function tool without "type" (beta allows it) is a function.
    beta = SessionSettings().merge_wire("beta", {"tools": [{"name": "current_time"}], "tool_choice": "required"})
    assert beta.tools == [FunctionTool(name="current_time")] and beta.tool_choice == "required"


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_function_call_events_match_openai_types(dialect: str) -> None:
    item = function_call_item("item_1", "call_1", "current_time", '{"timezone":"Asia/Tokyo"}')
    where = {"event_id": "event_1", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "call_id": "call_1"}
    events = [
        {"type": "response.output_item.done", "event_id": "event_2", "response_id": "resp_1", "output_index": 0,
         "item": item},
        {"type": "response.function_call_arguments.delta", "delta": '{"timezone"', **where},
        {"type": "response.function_call_arguments.done", "arguments": item["arguments"], **where,
         **({"name": "current_time"} if dialect == "ga" else {})},
        {"type": "conversation.item.created" if dialect == "beta" else "conversation.item.added", "event_id": "e3",
         "previous_item_id": "item_1", "item": {"object": "realtime.item", "status": "completed",
                                                **function_call_output_item("call_1", '{"time":"12:00"}', "item_2")}},
    ]
    for event in events:
        assert check_server_event(event, dialect) is None, check_server_event(event, dialect)
        parsed = parse_server_event(event)
        assert parsed.type == event["type"] and type(parsed).__name__ != "UnknownServerEvent"


# -- the registry and the built-ins ----------------------------------------------------------------
from datetime import datetime  # noqa: E402
from typing import Annotated  # noqa: E402
from zoneinfo import ZoneInfo  # noqa: E402

from pydantic import Field  # noqa: E402

from koe.store import SessionStore  # noqa: E402
from koe.tools import ToolArgumentsError, ToolContext, ToolRegistry, default_registry  # noqa: E402


def test_the_schema_comes_from_the_signature_and_arguments_are_validated() -> None:
    registry = ToolRegistry()

    @registry.register
    def book_table(people: Annotated[int, Field(ge=1, le=12, description="How many")], day: str,
                   context: ToolContext, window: bool = False) -> str:
        """Book a table.

        More words the model does not need."""
        return f"{people} on {day} for {context.visitor}"

    declared = registry.declarations()[0]
    assert declared.description == "Book a table."
    assert declared.parameters == {"type": "object", "additionalProperties": False, "required": ["people", "day"],
                                   "properties": {"people": {"type": "integer", "minimum": 1, "maximum": 12,
                                                             "description": "How many"},
                                                  "day": {"type": "string"},
                                                  "window": {"type": "boolean", "default": False}}}
    entry = registry.get("book_table")
    assert entry.call(entry.parse('{"people": 2, "day": "Friday"}'), ToolContext(visitor="v1")) == "2 on Friday for v1"
    for bad, says in (('{"people": 0, "day": "x"}', "people: Input should be greater than or equal to 1"),
                      ('{"day": "x"}', "people: Field required"), ('{"people": 2, "day": "x", "dog": 1}', "dog"),
                      ("{not json", "not valid JSON")):
        with pytest.raises(ToolArgumentsError, match=says):
            entry.parse(bad)
    with pytest.raises(TypeError, match="docstring"):
        registry.register(lambda x: x)


def test_builtins(tmp_path) -> None:
    registry = default_registry()
    now = registry.get("current_time")
    got = now.call(now.parse("{}"), ToolContext(timezone="Asia/Tokyo"))
    assert got["timezone"] == "Asia/Tokyo" and datetime.fromisoformat(got["iso"]).utcoffset().total_seconds() == 9 * 3600
    assert abs(datetime.fromisoformat(got["iso"]) - datetime.now(ZoneInfo("UTC"))).total_seconds() < 60
    with pytest.raises(ValueError, match="unknown time zone"):
        now.call(now.parse('{"timezone": "Mars/Olympus"}'), ToolContext())

    calc = registry.get("calculate")
    assert calc.call(calc.parse('{"expression": "(17 + 4) * 3 / 2"}'), ToolContext())["result"] == 31.5
    assert calc.call({"expression": "2 ** 10 + sqrt(16)"}, ToolContext())["result"] == 1028
    for refused in ("__import__('os').system('true')", "().__class__", "9 ** 9 ** 9", "1 / 0", "'a' * 3"):
        with pytest.raises(ValueError):
            calc.call({"expression": refused}, ToolContext())

    store = SessionStore(tmp_path / "koe.sqlite3")
    try:
        for visitor, said in (("alice", "my cat is called Miso"), ("bob", "my cat is called Secret")):
            cid = store.start_conversation(backend="local", model="gpt-realtime", dialect="ga", settings={},
                                           visitor=visitor)
            store.record_event(cid, "server", {"type": "conversation.item.added", "previous_item_id": None, "item": {
                "id": "item_" + visitor, "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": said}]}})
        store.flush()
        search = registry.get("search_history")
        found = search.call(search.parse('{"query": "CAT"}'), ToolContext(visitor="alice", store=store))
        lines = [line["text"] for c in found["conversations"] for line in c["lines"]]
        assert lines == ["my cat is called Miso"]  # bob's conversation stays bob's
        assert search.call({"query": "", "limit": 3}, ToolContext(visitor="carol", store=store)) == {"conversations": []}
    finally:
        store.close()


def test_a_module_dropped_into_the_tools_folder_is_picked_up(tmp_path) -> None:
    (tmp_path / "weather.py").write_text(
        "from koe.tools import tool\n\n@tool\ndef weather(city: str) -> str:\n"
        "    '''The weather in a city.'''\n    return f'sunny in {city}'\n")
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    registry = default_registry(str(tmp_path))
    assert registry.get("weather").call({"city": "Kyoto"}, ToolContext()) == "sunny in Kyoto"
    assert "nonexistent_module_xyz" in registry.load_errors[str(tmp_path / "broken.py")]
    assert {"current_time", "calculate", "search_history", "weather"} <= set(registry.names())


# -- the runner: results, errors, timeouts, barge-in -----------------------------------------------
import asyncio  # noqa: E402
import threading  # noqa: E402

from koe.tool_runner import ToolRunner  # noqa: E402


def runner_registry(release: threading.Event) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.register
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @registry.register
    def explode() -> str:
        """Always fails."""
        raise RuntimeError("the database is down")

    @registry.register
    def stall() -> str:
        """Takes its time."""
        release.wait(5)
        return "late"

    @registry.register
    async def wait_long(seconds: float) -> str:
        """Sleeps."""
        await asyncio.sleep(seconds)
        return "slept"

    return registry


def call_done(call_id: str, name: str, arguments: str, response_id: str = "resp_1") -> dict:
    return {"type": "response.output_item.done", "response_id": response_id, "output_index": 1,
            "item": function_call_item("item_" + call_id, call_id, name, arguments)}


def response_done(response_id: str = "resp_1") -> dict:
    return {"type": "response.done", "response": {"id": response_id, "status": "completed", "output": []}}


async def run_calls(events: list[dict], *, timeout_s: float = 5.0, settle_s: float = 0.3,
                    release: threading.Event | None = None) -> tuple[list[dict], list]:
    sent, calls = [], []
    release = release or threading.Event()

    async def send(event: dict) -> None:
        sent.append(event)

    runner = ToolRunner(runner_registry(release), ToolContext(), timeout_s=timeout_s, send=send, on_call=calls.append)
    for event in events:
        runner.observe(event)
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle_s)
    release.set()
    return sent, calls


def outputs(sent: list[dict]) -> dict[str, dict]:
    return {e["item"]["call_id"]: json.loads(e["item"]["output"]) for e in sent if e["type"] == "conversation.item.create"}


async def test_results_go_back_then_one_response_create_after_the_reply_is_done() -> None:
    sent, calls = await run_calls([call_done("call_a", "add", '{"a": 2, "b": 40}'),
                                   call_done("call_b", "explode", "{}"), response_done()])
    assert outputs(sent) == {"call_a": 42, "call_b": {"error": "explode failed: RuntimeError: the database is down"}}
    assert [e["type"] for e in sent][-1] == "response.create" and sum(e["type"] == "response.create" for e in sent) == 1
    assert all(e["item"]["type"] == "function_call_output" for e in sent if e["type"] == "conversation.item.create")
    assert {c.name: c.error is None for c in calls} == {"add": True, "explode": False}


async def test_bad_arguments_and_unknown_tools_answer_with_an_error() -> None:
    sent, _ = await run_calls([call_done("c1", "add", '{"a": "two", "b": 1}'), call_done("c2", "nope", "{}"),
                               call_done("c3", "add", "{oops"), response_done()])
    errors = {k: v["error"] for k, v in outputs(sent).items()}
    assert "a: Input should be a valid integer" in errors["c1"]
    assert errors["c2"] == "there is no tool named 'nope' in this session" and "not valid JSON" in errors["c3"]
    assert sent[-1] == {"type": "response.create"}


async def test_a_slow_tool_times_out_and_the_model_is_told() -> None:
    sent, calls = await run_calls([call_done("c1", "stall", "{}"), call_done("c2", "wait_long", '{"seconds": 3}'),
                                   response_done()], timeout_s=0.3, settle_s=0.6)
    assert outputs(sent) == {"c1": {"error": "stall did not finish within 0.3 s"},
                             "c2": {"error": "wait_long did not finish within 0.3 s"}}
    assert sent[-1] == {"type": "response.create"} and all(c.ms < 2000 for c in calls)


async def test_barge_in_cancels_the_call_and_asks_for_no_reply() -> None:
    sent, calls = await run_calls([call_done("c1", "wait_long", '{"seconds": 3}'), response_done(),
                                   {"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "u2"}])
    assert outputs(sent) == {"c1": {"error": "cancelled: the user started speaking"}}
    assert not any(e["type"] == "response.create" for e in sent)
    assert calls[0].error.startswith("cancelled")
