"""What the session needs of a reply model: the bundled LLM and a chat endpoint both fit it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a function call in a streamed reply (chat completions' `delta.tool_calls[]`): the
    first piece of call `index` carries its `id` and `name`, later ones more of its JSON `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ReplyStream(Protocol):
    model: str  # the model's name, for messages to people
    calls_functions: bool  # whether stream() takes `tools` and may yield ToolCallDelta pieces

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float | None,
               cancelled: Callable[[], bool]) -> Iterator[str | ToolCallDelta]:
        """Text deltas of the reply to `messages` (system first, then the history); runs in a worker thread.

        `temperature` None: the model's recommended sampling. A stream that calls_functions also takes
        `tools` and `tool_choice` (chat-completions form), reads assistant messages with `tool_calls` and
        `tool` messages in `messages`, and yields ToolCallDelta pieces."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`, for usage figures."""
        ...
