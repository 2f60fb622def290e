"""The conversation as rows of text, built from server events in conversation order.

The user's transcript comes from a separate pass and often arrives after the assistant's words, so
rows are placed by `previous_item_id` and filled by `item_id`, never ordered by arrival.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from koe.protocol import (
    ConversationItemAdded,
    ConversationItemCreated,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemInputAudioTranscriptionCompleted,
    ConversationItemInputAudioTranscriptionDelta,
    ConversationItemInputAudioTranscriptionFailed,
    ConversationItemTruncated,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStopped,
    OutputAudioBufferStarted,
    ResponseAudioTranscriptDelta,
    ResponseAudioTranscriptDone,
    ResponseDone,
    ResponseOutputAudioTranscriptDelta,
    ResponseOutputAudioTranscriptDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseTextDelta,
    ResponseTextDone,
    ServerEvent,
    SessionCreated,
)

__all__ = ["Row", "Transcript"]

@dataclass
class Row:
    item_id: str
    previous_item_id: str | None
    role: str  # "user" | "assistant" | "system" | an item type such as "function_call"
    text: str = ""
    final: bool = False
    interrupted: bool = False  # cancelled or truncated by a barge-in; the text is kept
    at: float = 0.0  # when the row was first seen (epoch seconds)
    latency_ms: int | None = None  # assistant rows: end of the user's speech to the reply's first sign
    heard: int | None = None  # a cut reply: how many characters of `text` were played (None: all of it)


def _item_text(item: dict[str, Any]) -> str:
    """What a row shows: a message's text; a function call as `name(arguments)`; a function's output."""
    if item.get("type") == "function_call":
        return f"{item.get('name') or '?'}({item.get('arguments') or ''})"
    if item.get("type") == "function_call_output":
        return str(item.get("output") or "")
    parts = item.get("content")
    if not isinstance(parts, list):
        return ""
    texts = (p.get("text") or p.get("transcript") for p in parts if isinstance(p, dict))
    return "".join(t for t in texts if isinstance(t, str))


class Transcript:
    """Not thread-safe: one owner feeds it (the store's writer thread, or a test)."""

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}
        self._order: list[str] = []
        self._placed: set[str] = set()  # placed by an event that names the previous item
        self._deleted: set[str] = set()  # late events about them must not bring them back
        self._responses: dict[str, list[str]] = {}  # response id → its items
        # A new upstream session starts its own item chain (previous_item_id=null for its first
        # item): that chain goes after what the conversation already holds, not above it.
        self._session_start: str | None = None
        self._speech_stopped_at: float | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Transcript:
        """Rebuild from stored rows, given in conversation order; new items go after them."""
        transcript = cls()
        for row in rows:
            transcript._rows[row.item_id] = dataclasses.replace(row)
            transcript._order.append(row.item_id)
            transcript._placed.add(row.item_id)
        transcript._session_start = transcript._last()
        return transcript

    def rows(self) -> list[Row]:
        """Copies, in conversation order."""
        return [dataclasses.replace(self._rows[i]) for i in self._order]

    def get(self, item_id: str) -> Row | None:
        row = self._rows.get(item_id)
        return dataclasses.replace(row) if row is not None else None

    def set_latency(self, item_id: str, ms: int) -> set[str]:
        """The relay's own measurement (end of speech to the first voiced frame it handed on) wins."""
        row = self._rows.get(item_id)
        if row is None or row.latency_ms == ms:
            return set()
        row.latency_ms = ms
        return {item_id}

    def cut(self, item_id: str, heard_chars: int) -> set[str]:
        """A reply cut off where the browser stopped playing it (the relay's `koe.reply_cut`): it is
        closed as interrupted, its first `heard_chars` characters heard; later text is kept too."""
        row = self._rows.get(item_id)
        if row is None or item_id in self._deleted:
            return set()
        row.final = row.interrupted = True
        row.heard = max(0, heard_chars) if row.heard is None else min(row.heard, max(0, heard_chars))
        return {item_id}

    def close_open_rows(self) -> set[str]:
        """The session that was filling the unfinished rows is gone (a new upstream session, or the
        conversation ended): they are closed as interrupted with the text they have."""
        changed = set()
        for row in self._rows.values():
            if not row.final:
                row.final = row.interrupted = True
                changed.add(row.item_id)
        return changed

    def apply(self, event: ServerEvent, at: float) -> set[str]:
        """Fold one server event in; returns the ids of rows it added, changed, moved or removed."""
        match event:
            case SessionCreated():
                self._session_start = self._last()
                return self.close_open_rows()
            case InputAudioBufferSpeechStopped():
                self._speech_stopped_at = at
            case InputAudioBufferCommitted(item_id=item_id, previous_item_id=previous):
                if self._speech_stopped_at is None:  # a manual (push-to-talk) turn: no speech_stopped, the commit ends it
                    self._speech_stopped_at = at
                return self._place(item_id, previous, "user", at)
            case ConversationItemAdded() | ConversationItemCreated() | ConversationItemDone():
                return self._on_item(event, at)
            case ResponseOutputItemAdded(response_id=response_id, item=item) if isinstance(item.get("id"), str):
                changed = self._provisional(item["id"], item.get("role") or item.get("type") or "assistant", at)
                self._responses.setdefault(response_id, []).append(item["id"])
                return changed
            case ResponseOutputItemDone(item=item) if item.get("type") == "function_call" \
                    and isinstance(item.get("id"), str) and item.get("status") == "completed":
                # Beta sends no conversation.item.done: the finished call's arguments arrive here.
                return self._set_final(item["id"], "function_call", _item_text(item), at)
            case ConversationItemInputAudioTranscriptionDelta(item_id=item_id, delta=delta):
                return self._add_text(item_id, "user", delta, at)
            case ConversationItemInputAudioTranscriptionCompleted(item_id=item_id, transcript=text):
                return self._set_final(item_id, "user", text, at)
            case ConversationItemInputAudioTranscriptionFailed(item_id=item_id, error=error):
                return self._set_final(item_id, "user", f"(transcription failed: {error.message})", at)
            case ResponseOutputAudioTranscriptDelta() | ResponseAudioTranscriptDelta() | ResponseOutputTextDelta() \
                    | ResponseTextDelta():
                changed = self._add_text(event.item_id, "assistant", event.delta, at)
                return changed | self._reply_began([event.item_id], at)
            case ResponseOutputAudioTranscriptDone(transcript=text) | ResponseAudioTranscriptDone(transcript=text) \
                    | ResponseOutputTextDone(text=text) | ResponseTextDone(text=text):
                return self._set_final(event.item_id, "assistant", text, at)
            case OutputAudioBufferStarted(response_id=response_id):
                return self._reply_began(self._responses.get(response_id, []), at)
            case ConversationItemTruncated(item_id=item_id) if item_id in self._rows:
                self._rows[item_id].interrupted = True
                return {item_id}
            case ConversationItemDeleted(item_id=item_id):
                return self._delete(item_id)
            case ResponseDone(response=response):
                return self._on_response_done(response)
        return set()

    # -- placing rows --------------------------------------------------------------------------------
    def _last(self) -> str | None:
        return self._order[-1] if self._order else None

    def _ensure(self, item_id: str, role: str, at: float) -> tuple[Row, bool]:
        """The row, created at the end when new; the flag says whether it was new."""
        row = self._rows.get(item_id)
        if row is not None:
            return row, False
        row = Row(item_id=item_id, previous_item_id=self._last(), role=role, at=at)
        self._rows[item_id] = row
        self._order.append(item_id)
        return row, True

    def _place(self, item_id: str, previous: str | None, role: str, at: float) -> set[str]:
        """Put the item right after `previous` (null: at the start of this session's chain).

        An item already placed moves only when an event names a different previous item: a re-sent
        or null `previous_item_id` (the local server's `item.done` omits it) leaves it where it is.
        """
        if item_id in self._deleted:
            return set()
        row = self._ensure(item_id, role, at)[0]
        if item_id in self._placed and (previous is None or previous == row.previous_item_id
                                        or previous not in self._rows):
            return set()
        self._order.remove(item_id)
        if previous is None:
            anchor = self._session_start
            index = self._order.index(anchor) + 1 if anchor in self._order else 0
        elif previous in self._rows and previous != item_id:
            index = self._order.index(previous) + 1
        else:  # a new item whose previous is unknown: the end is the best guess
            index = len(self._order)
        self._order.insert(index, item_id)
        row.previous_item_id = previous
        self._placed.add(item_id)
        return {item_id}

    def _provisional(self, item_id: str, role: str, at: float) -> set[str]:
        """A row at the end until an event names its previous item."""
        if item_id in self._deleted:
            return set()
        return {item_id} if self._ensure(item_id, role, at)[1] else set()

    def _on_item(self, event: ConversationItemAdded | ConversationItemCreated | ConversationItemDone,
                 at: float) -> set[str]:
        item = event.item
        item_id = item.get("id")
        if not isinstance(item_id, str):
            return set()
        changed = self._place(item_id, event.previous_item_id, item.get("role") or item.get("type") or "", at)
        row = self._rows.get(item_id)
        text = _item_text(item)
        # Typed messages and finished items carry their text; an earlier final text (from a
        # transcript `.done`) is kept, so a truncated reply's words are not lost.
        if row is not None and text and not row.final and item.get("status") != "in_progress":
            row.text, row.final = text, True
            changed.add(item_id)
        return changed

    def _delete(self, item_id: str) -> set[str]:
        self._deleted.add(item_id)
        if item_id not in self._rows:
            return set()
        index = self._order.index(item_id)
        if self._session_start == item_id:
            self._session_start = self._order[index - 1] if index else None
        del self._order[index]
        del self._rows[item_id]
        self._placed.discard(item_id)
        return {item_id}

    # -- filling rows --------------------------------------------------------------------------------
    def _add_text(self, item_id: str, role: str, delta: str, at: float) -> set[str]:
        if item_id in self._deleted:
            return set()
        row, new = self._ensure(item_id, role, at)
        if row.final or not delta:
            return {item_id} if new else set()
        row.text += delta
        return {item_id}

    def _set_final(self, item_id: str, role: str, text: str, at: float) -> set[str]:
        if item_id in self._deleted:
            return set()
        row, new = self._ensure(item_id, role, at)
        if not new and row.final and row.text == text:
            return set()
        if (row.heard is not None or row.interrupted) and row.text.startswith(text):
            # A cut reply whose server kept only whole clauses: the words already shown stay, the part
            # not heard struck through (once the relay says how much was heard: its koe.reply_cut may
            # come after the server's truncated transcript), rather than vanishing with the clause they were in.
            return set()
        row.text, row.final = text, True
        return {item_id}

    def _reply_began(self, item_ids: list[str], at: float) -> set[str]:
        """Latency from the latest end of speech; each end of speech is used once, so a reply
        nobody spoke to (a manual `response.create`) gets no figure."""
        stopped = self._speech_stopped_at
        row = next((self._rows[i] for i in item_ids if i in self._rows), None)
        if stopped is None or row is None or row.latency_ms is not None:
            return set()
        row.latency_ms = max(0, round(1000 * (at - stopped)))
        self._speech_stopped_at = None
        return {row.item_id}

    def _on_response_done(self, response: dict[str, Any]) -> set[str]:
        outputs = response.get("output")
        ids = list(self._responses.pop(str(response.get("id")), []))
        if isinstance(outputs, list):
            ids += [o["id"] for o in outputs if isinstance(o, dict) and isinstance(o.get("id"), str)]
        cancelled = response.get("status") == "cancelled"
        changed: set[str] = set()
        for item_id in ids:
            row = self._rows.get(item_id)
            if row is None or (row.final and (row.interrupted or not cancelled)):
                continue
            row.final = True
            row.interrupted = row.interrupted or cancelled
            changed.add(item_id)
        return changed
