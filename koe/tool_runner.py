"""Runs the model's function calls on the server, for one Realtime call (the relay's loop, never Streamlit's).

OpenAI's flow (guides/realtime-conversations, "function calling"): the model's reply carries a
`function_call` item (`name`, `call_id`, `arguments` as a JSON string); the application runs the
function, adds a `function_call_output` item with `conversation.item.create`, then asks for the
spoken answer with `response.create`. Here each call starts as soon as its item is done
(`response.output_item.done`), runs in a worker thread (or as a coroutine) with a timeout, and the
`response.create` goes out once the reply that asked is over (`response.done`) and all its calls
have answered. A call that fails, times out or gets arguments its schema refuses answers
`{"error": "..."}`, which the model can speak about. The user speaking (`speech_started`) cancels the
calls in flight: their output says so, and no `response.create` follows (the user's turn gets the reply).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from koe.protocol import function_call_output_item
from koe.tools import ToolArgumentsError, ToolContext, ToolRegistry

log = logging.getLogger("koe.tools")

DEFAULT_TIMEOUT_S = 10.0
MAX_OUTPUT_CHARS = 8000  # an output is read by the model on every later turn: keep it bounded

__all__ = ["DEFAULT_TIMEOUT_S", "ToolCall", "ToolRunner", "stored_in"]


@dataclass
class ToolCall:
    """One function call and how it ended: `output` is what the model is told (JSON text)."""

    call_id: str
    item_id: str
    response_id: str | None
    name: str
    arguments: str
    output: str = ""
    error: str | None = None  # None: the function returned
    started_at: float = field(default_factory=time.time)
    ms: int | None = None  # how long it ran
    task: asyncio.Task | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """The `koe.tool_call` app event the store keeps and the page shows."""
        return {"type": "koe.tool_call", "call_id": self.call_id, "item_id": self.item_id, "name": self.name,
                "arguments": self.arguments, "output": self.output, "error": self.error, "ms": self.ms}


class ToolRunner:
    """Runs function calls for one call. Feed it every server event with `observe` (on the relay's loop);
    it sends client events through `send` (an async function taking one event dict) and reports each
    finished call to `on_call(ToolCall)`."""

    def __init__(self, registry: ToolRegistry, context: ToolContext, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 send: Callable[[dict], Awaitable[None]] | None = None,
                 on_call: Callable[[ToolCall], None] = lambda call: None,
                 offered: Callable[[], Iterable[str]] | None = None) -> None:
        self.registry = registry
        # The names the session offers right now (None: every registered tool): a model talked into
        # calling a tool the person did not enable gets an error, not the tool.
        self.offered = offered
        self.context = context
        self.timeout_s = timeout_s
        self.send = send
        self.on_call = on_call
        self._running: dict[str, ToolCall] = {}  # call_id → call in flight
        self._answered: dict[str, list[ToolCall]] = {}  # response id → its calls (to follow up once done)
        self._done_responses: set[str] = set()

    def observe(self, event: dict[str, Any]) -> None:
        """A server event of the call (GA or beta names); never blocks."""
        kind = event.get("type")
        if kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call" and item.get("status", "completed") == "completed":
                self._start(item, event.get("response_id"))
        elif kind == "response.done":
            response = event.get("response") or {}
            self._done_responses.add(response.get("id"))
            self._follow_up(response.get("id"))
        elif kind == "input_audio_buffer.speech_started":
            self.cancel("the user started speaking")

    def cancel(self, why: str) -> None:
        """Cancel every call in flight (barge-in, the call ending); their outputs say `why`."""
        for call in list(self._running.values()):
            if call.task is not None and not call.task.done():
                call.task.cancel(why)

    def _start(self, item: dict[str, Any], response_id: str | None) -> None:
        call = ToolCall(call_id=item.get("call_id") or "", item_id=item.get("id") or "", response_id=response_id,
                        name=item.get("name") or "", arguments=item.get("arguments") or "")
        if call.call_id in self._running:
            return  # the same item seen twice (a sideband copy)
        self._running[call.call_id] = call
        self._answered.setdefault(response_id, []).append(call)
        call.task = asyncio.ensure_future(self._run(call))

    async def _run(self, call: ToolCall) -> None:
        started = time.monotonic()
        follow_up = True
        try:
            result = await asyncio.wait_for(self._invoke(call), self.timeout_s)
            call.output = _bounded(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False,
                                                                                     default=str))
        except asyncio.CancelledError as exc:
            call.error = f"cancelled: {exc.args[0] if exc.args else 'the call ended'}"
            follow_up = False  # the user's new turn (or nobody) gets the next reply
        except TimeoutError:
            call.error = f"{call.name} did not finish within {self.timeout_s:g} s"
        except ToolArgumentsError as exc:
            call.error = str(exc)
        except Exception as exc:  # the function's own failure: the model hears it, the call goes on
            log.warning("tool %s failed: %s", call.name, exc)
            call.error = f"{call.name} failed: {type(exc).__name__}: {exc}"
        call.ms = round(1000 * (time.monotonic() - started))
        if call.error is not None:
            call.output = json.dumps({"error": call.error}, ensure_ascii=False)
        self._running.pop(call.call_id, None)
        self.on_call(call)
        item = function_call_output_item(call.call_id, call.output)
        await self._send({"type": "conversation.item.create", "item": item})
        if follow_up:
            self._follow_up(call.response_id)
        else:
            self._answered.pop(call.response_id, None)

    async def _invoke(self, call: ToolCall) -> Any:
        tool = self.registry.get(call.name)
        if tool is None or (self.offered is not None and call.name not in set(self.offered())):
            raise ToolArgumentsError(f"there is no tool named {call.name!r} in this session")
        values = tool.parse(call.arguments)
        if inspect.iscoroutinefunction(tool.function):
            return await tool.call(values, self.context)
        # Off the loop: a slow function never holds up the audio. A thread cannot be stopped, so one
        # that overruns its timeout finishes in the background and its result is dropped.
        return await asyncio.get_running_loop().run_in_executor(None, tool.call, values, self.context)

    def _follow_up(self, response_id: str | None) -> None:
        """Ask for the answer once the reply that called is over and every call of it has answered."""
        calls = self._answered.get(response_id)
        if not calls or response_id not in self._done_responses or any(c.call_id in self._running for c in calls):
            return
        del self._answered[response_id]
        asyncio.ensure_future(self._send({"type": "response.create"}))

    async def _send(self, event: dict[str, Any]) -> None:
        if self.send is not None:
            try:
                await self.send(event)
            except Exception as exc:  # the call ended meanwhile: nothing to answer
                log.info("tool result not sent: %s", exc)


def stored_in(store: Any, conversation_id: str) -> Callable[[ToolCall], None]:
    """An `on_call` that keeps each call in the session store (`koe.store.SessionStore`): a
    `koe.tool_call` app event, and the call's duration on its transcript row (the latency column)."""
    def store_call(call: ToolCall) -> None:
        store.record_event(conversation_id, "app", call.record())
        if call.item_id and call.ms is not None:
            store.set_latency(conversation_id, call.item_id, call.ms)
    return store_call


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + "…(cut)"
