"""What the benchmarks share: percentiles, and the local server's per-turn stage times."""

from __future__ import annotations

import logging


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class TimingsCollector(logging.Handler):
    """Collects what the local server logs per turn (same process): stage times, and the reply prompt's
    size and how much of it llama.cpp had cached ({"prompt", "cached"} tokens)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.turns: list[dict[str, int]] = []
        self.prompts: list[dict[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "timings_ms"):
            self.turns.append(record.timings_ms)
        if hasattr(record, "prompt_tokens"):
            self.prompts.append(record.prompt_tokens)
