"""The two Realtime dialects: GA (current) and beta (the Dec 2024 preview interface)."""

import re
from typing import Literal

__all__ = ["BETA_MODELS", "BETA_VOICES", "CONTEXT_WINDOWS", "GA_MODELS", "GA_VOICES", "REASONING_EFFORTS",
           "REASONING_MODELS", "Dialect", "ReasoningEffort", "context_window", "dialect_for_model", "is_reasoning_model",
           "served_model"]

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

# A dated snapshot (`gpt-realtime-2025-08-28`) or the undated alias of a dated preview model.
_SNAPSHOT = re.compile(r"(?P<base>.+?)(-\d{4}-\d{2}-\d{2})?")

# Models that reason before they speak and take `reasoning.effort` (OpenAI's model pages: "Reasoning
# token support"); "low" is the server's default, kept short for voice.
REASONING_MODELS: tuple[str, ...] = ("gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini")
ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh"]
REASONING_EFFORTS: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh")

# (context window, max output tokens) as OpenAI's model pages give them (developers.openai.com/api/docs/models/…).
# A model not listed here is not checked: a guessed limit would refuse instructions the model takes.
CONTEXT_WINDOWS: dict[str, tuple[int, int]] = {
    "gpt-realtime": (32_000, 4_096),
    "gpt-realtime-1.5": (32_000, 4_096),
    "gpt-realtime-2": (128_000, 32_000),
    "gpt-realtime-2.1": (128_000, 32_000),
    "gpt-realtime-2.1-mini": (128_000, 32_000),
    "gpt-4o-realtime-preview-2024-12-17": (32_000, 4_096),
}

BETA_VOICES: tuple[str, ...] = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
GA_VOICES: tuple[str, ...] = (*BETA_VOICES, "marin", "cedar")


def dialect_for_model(model: str) -> Dialect:
    """Beta models are the `*-realtime-preview*` family; everything else (incl. dated snapshots) is GA."""
    return "beta" if "realtime-preview" in model else "ga"


def served_model(model: str) -> bool:
    """A model Koe speaks to: one of GA_MODELS or BETA_MODELS, a dated snapshot of one, or the undated
    name of a beta model (`gpt-4o-realtime-preview`)."""
    base = _SNAPSHOT.fullmatch(model)
    bases = {_SNAPSHOT.fullmatch(name)["base"] for name in (*GA_MODELS, *BETA_MODELS)}
    return model in GA_MODELS or model in BETA_MODELS or (base is not None and base["base"] in bases)


def is_reasoning_model(model: str) -> bool:
    """Whether `model` (or the base model of a dated snapshot) takes `reasoning.effort`."""
    return re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model) in REASONING_MODELS


def context_window(model: str) -> tuple[int, int] | None:
    """(context window, max output tokens) in tokens of `model` (or of the base model of a dated snapshot),
    None when OpenAI's pages were not read for it."""
    return CONTEXT_WINDOWS.get(model) or CONTEXT_WINDOWS.get(re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model))
