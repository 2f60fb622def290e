"""What the session needs of a reply model: the bundled LLM and a chat endpoint both fit it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class ReplyStream(Protocol):
    def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float | None,
               cancelled: Callable[[], bool]) -> Iterator[str]:
        """Text deltas of the reply to `messages` (system first, then the history); runs in a worker thread.

        `temperature` None: the model's recommended sampling."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`, for usage figures."""
        ...
