"""The two Realtime dialects: GA (current) and beta (the Dec 2024 preview interface)."""

from typing import Literal

__all__ = ["BETA_MODELS", "BETA_VOICES", "GA_MODELS", "GA_VOICES", "Dialect", "dialect_for_model"]

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

BETA_VOICES: tuple[str, ...] = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
GA_VOICES: tuple[str, ...] = (*BETA_VOICES, "marin", "cedar")


def dialect_for_model(model: str) -> Dialect:
    """Beta models are the `*-realtime-preview*` family; everything else (incl. dated snapshots) is GA."""
    return "beta" if "realtime-preview" in model else "ga"
