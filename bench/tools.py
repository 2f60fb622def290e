"""What one tool round trip adds to a reply: the app's tool runner, the local backend, a chat endpoint.

    .venv/bin/python bench/tools.py [--rounds 8]
    .venv/bin/python bench/tools.py --bundled [--rounds 3]

In this process: a scripted chat-completions endpoint on loopback (tests/chat_stub.py: no model, so
the figures are the plumbing's), the local server using it for replies, and a Relay with the app's
tool runner, text replies, no turn detection. Rounds alternate between a typed question answered at
once ("direct") and the same question answered after a `current_time` call ("tool": function_call
item -> the relay runs the tool -> function_call_output + response.create -> the answer). Each round
is timed from `response.create` sent to the answer's `response.done` seen by the relay; the tool adds
the difference of the medians. Figures from a shared, loaded machine are noisy: compare runs made
back to back, on the same machine.

`--bundled`: no stub; the bundled default reply model (Qwen2.5-Coder-1.5B-Instruct) decides itself: the
direct question is "What is the capital of France?", the tool question "What time is it?" (model time
included, so the figures are the model's more than the plumbing's; a round where it did not call the
tool is counted apart).
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


def _answered(event: dict) -> bool:
    """A response.done whose reply is an answer (a reply that calls a function is followed by another)."""
    return event["type"] == "response.done" and not any(
        o.get("type") == "function_call" for o in event["response"].get("output") or [])


async def one_round(relay: Relay, events: list, question: str = "What time is it?",
                    timeout_s: float = 60) -> tuple[float, bool]:
    """Ask; (seconds until the answer's response.done, whether a function was called on the way)."""
    before = len(events)
    relay.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}})
    started = time.perf_counter()
    relay.send({"type": "response.create"})
    while not any(_answered(e) for e in events[before:]):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"no answer within {timeout_s:g} s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started, any(e["type"] == "response.function_call_arguments.done"
                                              for e in events[before:])


async def main(rounds: int, bundled: bool) -> None:
    logging.basicConfig(level=logging.WARNING)
    stub = None if bundled else ChatStub().start()
    server = (LocalServer(port=0, models=get_models("default")) if bundled else
              LocalServer(port=0, models=get_models(), chat_base_url=stub.url, chat_model="bench")).start()
    registry = default_registry()
    settings = SessionSettings(voice="alloy", turn_detection=None, transcription=None, output_modalities="text",
                               tools=registry.declarations(["current_time"]))
    relay = Relay(Backend(server.url), settings, LoopThread())
    events: list[dict] = []
    relay.on_event = lambda direction, event, at: events.append(event) if direction == "server" else None
    runs: list[int] = []
    relay.use_tools(ToolRunner(registry, ToolContext(timezone="Asia/Tokyo"), on_call=lambda call: runs.append(call.ms)))
    relay.start().result(timeout=120)
    direct, tool, missed = [], [], 0
    try:
        for n in range(rounds + 1):  # the first pair warms up and is not counted
            if bundled:
                d, _ = await one_round(relay, events, "What is the capital of France?", timeout_s=600)
                t, called = await one_round(relay, events, timeout_s=600)
            else:
                stub.script = [Reply(ANSWER)]
                d, _ = await one_round(relay, events)
                stub.script = [ToolCalls([("current_time", "{}")]), Reply(ANSWER)]
                t, called = await one_round(relay, events)
            if n:
                direct.append(d)
                if called:
                    tool.append(t)
                missed += not called
    finally:
        relay.stop()
        server.stop()
        if stub is not None:
            stub.stop()
    ms = lambda xs: 1000 * statistics.median(xs) if xs else float("nan")  # noqa: E731
    print(f"rounds: {rounds} (noisy: shared machine; " + (
        "the bundled default model, Qwen2.5-Coder-1.5B-Instruct, text replies; "
        f"{missed} round(s) answered without calling the tool, left out)" if bundled else
        "plumbing only, the chat endpoint is a stub)"))
    print(f"direct answer            p50 {ms(direct):7.1f} ms")
    print(f"answer after a tool call p50 {ms(tool):7.1f} ms")
    print(f"one tool round trip adds p50 {ms(tool) - ms(direct):7.1f} ms (the tool itself ran p50 "
          f"{statistics.median(runs[1:] or runs):.0f} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="8; 3 with --bundled")
    parser.add_argument("--bundled", action="store_true", help="the bundled default reply model answers (no stub)")
    args = parser.parse_args()
    asyncio.run(main(args.rounds or (3 if args.bundled else 8), args.bundled))
