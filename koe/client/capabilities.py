"""What a backend offers beyond the protocol: Koe's local server says so at `GET /v1/koe/capabilities`.

OpenAI has no such endpoint (its voices, models and options are the protocol's own), so a backend
that does not answer is taken to be OpenAI-like: `fetch_capabilities` returns None.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field, ValidationError, model_validator

from koe.client.signaling import Backend

__all__ = ["Capabilities", "fetch_capabilities", "estimate_tokens"]


class Capabilities(BaseModel):
    """The local backend's own description (koe.local.server.LocalServer.capabilities); unknown keys ignored."""

    voices: dict[str, list[str]] = Field(default_factory=dict)  # language → voice names
    context_tokens: int | None = None  # the reply model's whole context; None: unknown
    max_reply_tokens: int | None = None
    ignored: list[str] = Field(default_factory=list)  # settings accepted but without effect

    @model_validator(mode="before")
    @classmethod
    def _reply_model_context(cls, data: object) -> object:
        # The server names the context under its reply model: {"reply_model": {"context_tokens": ...}}.
        if isinstance(data, dict) and "context_tokens" not in data and isinstance(data.get("reply_model"), dict):
            data = {**data, "context_tokens": data["reply_model"].get("context_tokens")}
        return data


def fetch_capabilities(backend: Backend, timeout_s: float = 30.0) -> Capabilities | None:
    """The backend's capabilities, or None when it has no such endpoint or does not answer in
    `timeout_s` (blocking: call it from a UI thread, never from an event loop)."""
    try:
        response = httpx.get(backend.url("/v1/koe/capabilities"), timeout=timeout_s)
        if response.status_code != 200:
            return None
        return Capabilities.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError):
        return None


def estimate_tokens(text: str) -> int:
    """A generous estimate of a text's tokens for a small model's tokenizer: about four characters
    of ASCII per token, and one and a half tokens per other character (Japanese, emoji...)."""
    ascii_chars = sum(1 for c in text if c.isascii())
    return round(ascii_chars / 4 + (len(text) - ascii_chars) * 1.5)
