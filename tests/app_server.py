"""An app server's store and limits in a process of its own, driven by the tests over a pipe: what two
Streamlit servers on one database do, without browsers (tests/test_db.py).

`AppServer(url, limits)` starts the process; `server("method", *args)` runs that method of `_Server`
there and returns its result (or raises RuntimeError with the process's error).
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

from koe.limits import LimitReached, Ledger, Limiter, Limits
from koe.protocol import new_id
from koe.store import SessionStore

# gpt-realtime: 1000 text in (200 cached), 500 audio in, 100 text out, 300 audio out: $0.04008.
USAGE = {"total_tokens": 1900, "input_tokens": 1500, "output_tokens": 400,
         "input_token_details": {"text_tokens": 1000, "audio_tokens": 500, "cached_tokens": 200,
                                 "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 0}},
         "output_token_details": {"text_tokens": 100, "audio_tokens": 300}}
USAGE_COST = 0.04008


class _Server:
    """What runs in the process: one store and one limiter, as components/runtime.py makes them."""

    def __init__(self, url: str, limits: dict[str, Any]) -> None:
        self.store = SessionStore(url)
        self.limiter = Limiter(Limits(**limits), Ledger(self.store.engine))
        self.guards: dict[str, Any] = {}

    def talk(self, visitor: str, words: str) -> str:
        """Admit a billed session, say `words`, get one reply with usage; the conversation stays open.
        Returns its id, or "refused: <reason>"."""
        try:
            guard = self.limiter.admit(visitor, model="gpt-realtime", billed=True)
        except LimitReached as exc:
            return f"refused: {exc}"
        conversation = self.store.start_conversation(backend="openai", model="gpt-realtime", dialect="ga",
                                                     settings={}, visitor=visitor)
        self.guards[conversation] = guard
        user, reply, response = new_id("item"), new_id("item"), new_id("resp")
        message = {"type": "message", "object": "realtime.item", "status": "completed"}
        for event in [
            {"type": "conversation.item.added", "previous_item_id": None,
             "item": {**message, "id": user, "role": "user", "content": [{"type": "input_text", "text": words}]}},
            {"type": "conversation.item.done", "item": {**message, "id": reply, "role": "assistant",
                                                        "content": [{"type": "output_text", "text": "Noted."}]},
             "previous_item_id": user},
            {"type": "response.done", "response": {"id": response, "status": "completed", "usage": USAGE}},
        ]:
            event["event_id"] = new_id("event")
            self.store.record_event(conversation, "server", event)
            guard.observe(event)
        return conversation

    def end(self, conversation: str, reason: str) -> None:
        self.store.end_conversation(conversation, reason)
        self.guards.pop(conversation).release()

    def check(self, conversation: str) -> str | None:
        """The running session's guard: why it must end now, or None."""
        return self.guards[conversation].check()

    def settle(self) -> None:
        """Everything written: the store's queue and the limiter's spends; then today's spend read again."""
        assert self.store.flush(30) and self.limiter.flush(30)
        self.limiter.refresh()

    def spend_many(self, times: int, usd: float) -> None:
        for _ in range(times):
            self.limiter.spend(usd)

    def spent_today(self) -> float:
        return self.limiter.spent_today

    def conversation(self, conversation: str) -> dict[str, Any] | None:
        return self.store.conversation(conversation)

    def said(self, conversation: str) -> list[str]:
        return self.store.transcript(conversation)["text"].tolist()

    def history(self) -> list[str]:
        return [c["id"] for c in self.store.conversations()]

    def close(self) -> None:
        self.limiter.close()
        self.store.close()


def _serve(url: str, limits: dict[str, Any], pipe: Any) -> None:
    try:
        server = _Server(url, limits)
        pipe.send((True, None))
    except Exception:
        pipe.send((False, traceback.format_exc()))
        return
    while True:
        method, args = pipe.recv()
        try:
            pipe.send((True, getattr(server, method)(*args)))
        except Exception:
            pipe.send((False, traceback.format_exc()))
        if method == "close":
            return


class AppServer:
    """The test's handle on one app server process (spawned: nothing inherited but the arguments)."""

    def __init__(self, url: str, **limits: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(url, limits, theirs), daemon=True)
        self.process.start()

    def ready(self) -> AppServer:
        """Wait until the process has opened its store (migrated the schema if it had to)."""
        self._reply(120)
        return self

    def send(self, method: str, *args: Any) -> None:
        self.pipe.send((method, args))

    def _reply(self, timeout_s: float = 60) -> Any:
        if not self.pipe.poll(timeout_s):
            raise RuntimeError("the app server process did not answer")
        ok, value = self.pipe.recv()
        if not ok:
            raise RuntimeError(value)
        return value

    def __call__(self, method: str, *args: Any) -> Any:
        self.send(method, *args)
        return self._reply()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self("close")
            finally:
                self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
