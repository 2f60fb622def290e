"""What the benchmarks share: percentiles, the local server's per-turn stage times, and koe.local in its own
process with its CPU and memory read from /proc."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


TIMINGS_LINE = re.compile(r"koe\.local(?: worker \d+)? INFO reply resp_\w+: (.*)$")  # session.py's _log_timings
TIMING = re.compile(r"(\w+) ([+-]\d+) ms")


class LocalBackendProcess:
    """`python -m koe.local` in a process of its own on a free port, for a benchmark's `with` block.

    `url` once up (its models loaded: a minute or more on a busy machine); `timings.turns` collects the
    per-turn stage times it logs (the same dicts as TimingsCollector's, read from its log lines).
    Raises SystemExit when it does not start."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timings = TimingsCollector()
        command = [sys.executable, "-m", "koe.local", "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        self.health: dict = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """Its process and, with `--workers N`, its workers' (from /healthz at start), whose CPU and memory count."""
        return [self.pid] + [worker["pid"] for worker in self.health.get("workers", [])]

    def _read_log(self) -> None:
        for line in self.process.stderr:  # read to the end, or the process blocks on a full pipe
            found = TIMINGS_LINE.search(line.strip())
            marks = {name: int(value) for name, value in TIMING.findall(found.group(1))} if found else {}
            if marks:
                self.timings.turns.append(marks)

    def __enter__(self) -> "LocalBackendProcess":
        for _ in range(600):
            try:
                self.health = httpx.get(self.url + "/healthz", timeout=2).json()
                return self
            except httpx.HTTPError:
                if self.process.poll() is not None:
                    raise SystemExit("koe.local did not start")
                time.sleep(0.5)
        self.__exit__()
        raise SystemExit("koe.local did not answer /healthz")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)
