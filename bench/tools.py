"""What one tool round trip adds to a reply: the app's tool runner, the local backend, a chat endpoint.

    .venv/bin/python bench/tools.py [--rounds 8]

In this process: a scripted chat-completions endpoint on loopback (tests/chat_stub.py: no model, so
the figures are the plumbing's), the local server using it for replies, and a Relay with the app's
tool runner, text replies, no turn detection. Rounds alternate between a typed question answered at
once ("direct") and the same question answered after a `current_time` call ("tool": function_call
item -> the relay runs the tool -> function_call_output + response.create -> the answer). Each round
is timed from `response.create` sent to the answer's `response.done` seen by the relay; the tool adds
the difference of the medians. Figures from a shared, loaded machine are noisy: compare runs made
back to back, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chat_stub import ChatStub, Reply, ToolCalls  # noqa: E402
from koe.client import Backend  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.models import get_models  # noqa: E402
from koe.protocol import SessionSettings  # noqa: E402
from koe.relay import LoopThread, Relay  # noqa: E402
from koe.tool_runner import ToolRunner  # noqa: E402
from koe.tools import ToolContext, default_registry  # noqa: E402

ANSWER = "It is late in Tokyo."


async def one_round(relay: Relay, events: list, answers: int) -> float:
    """Ask; seconds until the `answers`-th response.done of this round (1: direct, 2: after a tool)."""
    before = sum(e["type"] == "response.done" for e in events)
    relay.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What time is it?"}]}})
    started = time.perf_counter()
    relay.send({"type": "response.create"})
    while sum(e["type"] == "response.done" for e in events) < before + answers:
        if time.perf_counter() - started > 60:
            raise TimeoutError("no answer within 60 s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started


async def main(rounds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    stub = ChatStub().start()
    server = LocalServer(port=0, models=get_models(), chat_base_url=stub.url, chat_model="bench").start()
    registry = default_registry()
    settings = SessionSettings(voice="alloy", turn_detection=None, transcription=None, output_modalities="text",
                               tools=registry.declarations(["current_time"]))
    relay = Relay(Backend(server.url), settings, LoopThread())
    events: list[dict] = []
    relay.on_event = lambda direction, event, at: events.append(event) if direction == "server" else None
    runs: list[int] = []
    relay.use_tools(ToolRunner(registry, ToolContext(timezone="Asia/Tokyo"), on_call=lambda call: runs.append(call.ms)))
    relay.start().result(timeout=120)
    direct, tool = [], []
    try:
        for n in range(rounds + 1):  # the first pair warms up and is not counted
            stub.script = [Reply(ANSWER)]
            d = await one_round(relay, events, 1)
            stub.script = [ToolCalls([("current_time", "{}")]), Reply(ANSWER)]
            t = await one_round(relay, events, 2)
            if n:
                direct.append(d)
                tool.append(t)
    finally:
        relay.stop()
        server.stop()
        stub.stop()
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    print(f"rounds: {rounds} (noisy: shared machine; plumbing only, the chat endpoint is a stub)")
    print(f"direct answer            p50 {ms(direct):7.1f} ms")
    print(f"answer after a tool call p50 {ms(tool):7.1f} ms")
    print(f"one tool round trip adds p50 {ms(tool) - ms(direct):7.1f} ms (the tool itself ran p50 "
          f"{statistics.median(runs[1:] or runs):.0f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args().rounds))
