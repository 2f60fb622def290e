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
