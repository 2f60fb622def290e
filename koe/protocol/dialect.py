"""The two Realtime dialects: GA (current) and beta (the Dec 2024 preview interface)."""

from typing import Literal

import re

__all__ = ["BETA_MODELS", "BETA_VOICES", "GA_MODELS", "GA_VOICES", "REASONING_EFFORTS", "REASONING_MODELS", "Dialect",
           "ReasoningEffort", "dialect_for_model", "is_reasoning_model"]

Dialect = Literal["ga", "beta"]

GA_MODELS: tuple[str, ...] = (
    "gpt-realtime",
    "gpt-realtime-mini",
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
)
BETA_MODELS: tuple[str, ...] = (
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-mini-realtime-preview-2024-12-17",
)

# Models that reason before they speak and take `reasoning.effort` (OpenAI's model pages: "Reasoning
# token support"); "low" is the server's default, kept short for voice.
REASONING_MODELS: tuple[str, ...] = ("gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini")
ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh"]
REASONING_EFFORTS: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh")

BETA_VOICES: tuple[str, ...] = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
GA_VOICES: tuple[str, ...] = (*BETA_VOICES, "marin", "cedar")


def dialect_for_model(model: str) -> Dialect:
    """Beta models are the `*-realtime-preview*` family; everything else (incl. dated snapshots) is GA."""
    return "beta" if "realtime-preview" in model else "ga"


def is_reasoning_model(model: str) -> bool:
    """Whether `model` (or the base model of a dated snapshot) takes `reasoning.effort`."""
    return re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model) in REASONING_MODELS
