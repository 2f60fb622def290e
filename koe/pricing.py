"""What a reply costs: the one editable price table, and the arithmetic over `response.done` usage.

Prices are USD per million tokens, from OpenAI's model pages (gpt-realtime-2.1 and -2.1-mini
as published with them; check the pricing page when editing). A dated snapshot (`gpt-realtime-2025-08-28`) is billed as its base model. Models not
in the table (and Koe's local backend) cost nothing: a wrong zero is visible, a guessed price is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["LOCAL_MODEL_PRICE", "PRICES", "Price", "TokenCounts", "cost_usd", "price_for", "token_counts"]


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    text_in: float = 0.0
    text_cached: float = 0.0
    text_out: float = 0.0
    audio_in: float = 0.0
    audio_cached: float = 0.0
    audio_out: float = 0.0


LOCAL_MODEL_PRICE = Price()

_GPT_REALTIME = Price(4.00, 0.40, 16.00, 32.00, 0.40, 64.00)
_GPT_REALTIME_2 = Price(4.00, 0.40, 24.00, 32.00, 0.40, 64.00)
_GPT_REALTIME_MINI = Price(0.60, 0.06, 2.40, 10.00, 0.30, 20.00)

PRICES: dict[str, Price] = {
    "gpt-realtime": _GPT_REALTIME,
    "gpt-realtime-1.5": _GPT_REALTIME,
    "gpt-realtime-2": _GPT_REALTIME_2,
    "gpt-realtime-2.1": _GPT_REALTIME_2,
    "gpt-realtime-mini": _GPT_REALTIME_MINI,
    "gpt-realtime-2.1-mini": _GPT_REALTIME_MINI,
    "gpt-4o-realtime-preview-2024-12-17": Price(5.00, 2.50, 20.00, 40.00, 2.50, 80.00),
    "gpt-4o-mini-realtime-preview-2024-12-17": Price(0.60, 0.30, 2.40, 10.00, 0.30, 20.00),
}

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_for(model: str) -> Price:
    """The model's row, else its base model's (date suffix dropped), else zero."""
    return PRICES.get(model) or PRICES.get(_DATE_SUFFIX.sub("", model), LOCAL_MODEL_PRICE)


@dataclass(frozen=True)
class TokenCounts:
    """One reply's tokens; the input counts include the cached ones, as OpenAI reports them."""

    input_text: int = 0
    input_audio: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def input_tokens(self) -> int:
        return self.input_text + self.input_audio

    @property
    def output_tokens(self) -> int:
        return self.output_text + self.output_audio


def _count(data: Any, key: str) -> int:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def token_counts(usage: dict[str, Any] | None) -> TokenCounts:
    """Break a `response.done` usage object down; totals without details count as text."""
    if not usage:
        return TokenCounts()
    inp, out = usage.get("input_token_details"), usage.get("output_token_details")
    if isinstance(inp, dict):
        text, audio = _count(inp, "text_tokens"), _count(inp, "audio_tokens")
        split = inp.get("cached_tokens_details")
        if isinstance(split, dict):
            cached_text, cached_audio = _count(split, "text_tokens"), _count(split, "audio_tokens")
        else:  # only a total: count it against text first (a guess, stated here)
            cached = _count(inp, "cached_tokens")
            cached_text = min(cached, text)
            cached_audio = min(cached - cached_text, audio)
    else:
        text, audio, cached_text, cached_audio = _count(usage, "input_tokens"), 0, 0, 0
    if isinstance(out, dict):
        out_text, out_audio = _count(out, "text_tokens"), _count(out, "audio_tokens")
    else:
        out_text, out_audio = _count(usage, "output_tokens"), 0
    return TokenCounts(text, audio, min(cached_text, text), min(cached_audio, audio), out_text, out_audio)


def cost_usd(model: str, usage: dict[str, Any] | None) -> float:
    """USD for one reply of `model`; 0 when usage is missing (cancelled or failed replies)."""
    p, t = price_for(model), token_counts(usage)
    micro = (
        (t.input_text - t.cached_text) * p.text_in
        + t.cached_text * p.text_cached
        + (t.input_audio - t.cached_audio) * p.audio_in
        + t.cached_audio * p.audio_cached
        + t.output_text * p.text_out
        + t.output_audio * p.audio_out
    )
    return micro / 1_000_000
