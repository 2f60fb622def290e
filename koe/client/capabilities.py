"""What a backend offers beyond the protocol: Koe's local server says so at `GET /v1/koe/capabilities`.

OpenAI has no such endpoint (its voices, models and options are the protocol's own), so a backend
that does not answer is taken to be OpenAI-like: `fetch_capabilities` returns None.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field, ValidationError, model_validator

from koe.client.signaling import Backend, _auth
from koe.protocol import context_window

__all__ = ["Capabilities", "count_tokens", "estimate_tokens", "fetch_capabilities", "openai_capabilities"]


class Capabilities(BaseModel):
    """The local backend's own description (koe.local.server.LocalServer.capabilities; unknown keys ignored),
    or for OpenAI what its model pages say (`openai_capabilities`)."""

    voices: dict[str, list[str]] = Field(default_factory=dict)  # language → voice names
    context_tokens: int | None = None  # the reply model's whole context; None: unknown
    reply_model: str | None = None  # the name of the model that writes the replies (a GGUF's, or a chat endpoint's)
    max_reply_tokens: int | None = None
    ignored: list[str] = Field(default_factory=list)  # settings accepted but without effect

    @model_validator(mode="before")
    @classmethod
    def _reply_model_context(cls, data: object) -> object:
        # The server describes its reply model as an object: {"reply_model": {"model": ..., "context_tokens": ...}}.
        if isinstance(data, dict) and isinstance(data.get("reply_model"), dict):
            reply = data["reply_model"]
            data = {**data, "reply_model": reply.get("model"),
                    "context_tokens": data.get("context_tokens", reply.get("context_tokens"))}
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


def openai_capabilities(model: str) -> Capabilities:
    """An OpenAI model's context window and longest reply, from its model page (koe.protocol.CONTEXT_WINDOWS);
    both None for a model not in that table."""
    window = context_window(model)
    return Capabilities(context_tokens=window[0] if window else None, max_reply_tokens=window[1] if window else None,
                        reply_model=model)


def count_tokens(backend: Backend, text: str, timeout_s: float = 5.0) -> int:
    """`text`'s tokens as the local backend's reply model counts them (`POST /v1/koe/tokens`). Blocking.
    Raises httpx.HTTPError (no answer in `timeout_s`, or an error status: OpenAI has no such endpoint)
    and ValueError (an answer without a whole "tokens")."""
    response = httpx.post(backend.url("/v1/koe/tokens"), json={"text": text}, headers=_auth(backend.api_key),
                          timeout=timeout_s)
    response.raise_for_status()
    tokens = response.json().get("tokens")
    if not isinstance(tokens, int):
        raise ValueError(f"no token count in {response.text[:200]!r}")
    return tokens


def estimate_tokens(text: str) -> int:
    """A generous estimate of a text's tokens for a small model's tokenizer: about four characters
    of ASCII per token, and one and a half tokens per other character (Japanese, emoji...)."""
    ascii_chars = sum(1 for c in text if c.isascii())
    return round(ascii_chars / 4 + (len(text) - ascii_chars) * 1.5)
