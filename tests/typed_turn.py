"""Typed questions through a Relay, for tests of function calling: the app's own runner runs the tools."""

from __future__ import annotations

import asyncio
import time

from koe.client import Backend
from koe.protocol import SessionSettings
from koe.relay import LoopThread, Relay
from koe.tool_runner import ToolCall, ToolRunner
from koe.tools import ToolContext, default_registry


def tool_relay(url: str, settings: SessionSettings,
               context: ToolContext) -> tuple[Relay, list[tuple[str, dict]], list[ToolCall]]:
    """A Relay (not started) to the local server at `url` running the built-in tools with `context`; with
    the (direction, event) pairs it will see and the calls it will run, in order."""
    relay = Relay(Backend(url), settings, LoopThread())
    events: list[tuple[str, dict]] = []
    calls: list[ToolCall] = []
    relay.on_event = lambda direction, event, at: events.append((direction, event))
    relay.use_tools(ToolRunner(default_registry(), context, on_call=calls.append))
    return relay, events, calls


async def ask(relay: Relay, events: list[tuple[str, dict]], question: str | None, *, responses: int = 2,
              timeout_s: float = 90) -> None:
    """Type `question` as a user message (None: none), send `response.create`, and return once `events`
    hold `responses` response.done, or after `timeout_s`."""
    if question is not None:
        relay.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}})
    relay.send({"type": "response.create"})
    deadline = time.monotonic() + timeout_s
    while sum(e["type"] == "response.done" for _, e in events) < responses and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
