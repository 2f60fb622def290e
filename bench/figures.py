"""What the benchmarks share: percentiles, and the local server's per-turn stage times."""

from __future__ import annotations

import logging


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class TimingsCollector(logging.Handler):
    """Collects the per-turn stage times the local server logs (same process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.turns: list[dict[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "timings_ms"):
            self.turns.append(record.timings_ms)
