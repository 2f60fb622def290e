"""The conversation a local session holds: items in conversation order, as the LLM's history."""

from __future__ import annotations

from dataclasses import dataclass, field

from koe.protocol import Dialect, function_call_item, function_call_output_item


@dataclass
class Item:
    id: str
    role: str  # "user" | "assistant" | "system"
    text: str = ""
    audio: bool = True  # spoken (input_audio / audio parts) rather than typed text
    status: str = "completed"  # assistant items: in_progress, then completed or incomplete (cut short)
    # Assistant audio: (end sample at 48 kHz, transcript up to there) per clause, to cut the text
    # where playback stopped (conversation.item.truncate).
    spoken: list[tuple[int, str]] = field(default_factory=list)
    # Function calling: type "function_call" (the model's `name`, `call_id`, JSON `arguments`) or
    # "function_call_output" (`call_id`, `output`); role is then "assistant" / "tool".
    type: str = "message"
    name: str = ""
    call_id: str = ""
    arguments: str = ""
    output: str = ""

    def heard(self, samples: int) -> str:
        """The transcript of the clauses wholly played within the first `samples` (48 kHz)."""
        heard = [text for end, text in self.spoken if end <= samples]
        return heard[-1] if heard else ""

    def wire(self, dialect: Dialect) -> dict:
        """The item as Realtime events carry it: assistant parts are `output_audio` / `output_text`
        in GA, `audio` / `text` in beta (the SDKs' item types)."""
        if self.type == "function_call":
            return function_call_item(self.id, self.call_id, self.name, self.arguments, self.status)
        if self.type == "function_call_output":
            return {"object": "realtime.item", "status": self.status,
                    **function_call_output_item(self.call_id, self.output, self.id)}
        if self.role == "assistant":
            kind = ("output_" if dialect == "ga" else "") + ("audio" if self.audio else "text")
            part = {"type": kind, ("transcript" if self.audio else "text"): self.text}
        elif self.audio:
            part = {"type": "input_audio", "transcript": self.text or None}
        else:
            part = {"type": "input_text", "text": self.text}
        return {"id": self.id, "object": "realtime.item", "type": "message", "status": self.status,
                "role": self.role, "content": [part]}


@dataclass
class Conversation:
    items: list[Item] = field(default_factory=list)

    @property
    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` (append when None, first when "root"); returns the id it now follows.

        Raises KeyError when `previous_item_id` is not in the conversation.
        """
        if previous_item_id is None:
            after = self.last_id
            self.items.append(item)
            return after
        if previous_item_id == "root":  # OpenAI's name for "before everything"
            self.items.insert(0, item)
            return None
        index = self.index(previous_item_id)
        self.items.insert(index + 1, item)
        return previous_item_id

    def has(self, item_id: str) -> bool:
        return any(item.id == item_id for item in self.items)

    def index(self, item_id: str) -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise KeyError(item_id)

    def get(self, item_id: str) -> Item:
        return self.items[self.index(item_id)]

    def delete(self, item_id: str) -> None:
        del self.items[self.index(item_id)]

    def chat_messages(self, instructions: str, tools: bool = False) -> list[dict]:
        """The history as chat messages; the instructions stay first so the prompt prefix is cached.

        With `tools`, function calls are an assistant message's `tool_calls` (the message that holds what
        the assistant said just before them) and their outputs `tool` messages (chat completions' form);
        without, a model that cannot call functions never sees them."""
        messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
        for item in self.items:
            if item.type == "function_call" and tools:
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments or "{}"}}
                if messages and messages[-1]["role"] == "assistant":
                    messages[-1].setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif item.type == "function_call_output" and tools:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
            elif item.type == "message" and item.text.strip():
                messages.append({"role": item.role, "content": item.text})
        return messages
