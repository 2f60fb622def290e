"""End of user speech to first reply audio, through the local server on loopback.

    .venv/bin/python bench/engine_latency.py [--turns 8]

A simulated caller speaks several utterances (made with the project's own TTS) over a real WebRTC
call. For each turn it prints the time from `speech_stopped` to the first non-silent reply frame
at the client, split into speech to text, first token and first audio as the server measured
them; then p50/p95 and the process's peak memory. Goal on a 2-core CPU: p50 at most 1.0 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from koe.client import Backend  # noqa: E402
from koe.client.simulated_user import SimulatedUser  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.models import warm  # noqa: E402
from koe.protocol import SessionSettings  # noqa: E402

UTTERANCES = [
    "Please count from one to five.",
    "What is the capital of France?",
    "Tell me a fun fact about cats.",
    "How are you doing today?",
    "Name three colors of the rainbow.",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "Why is the sky blue?",
]


class TimingsCollector(logging.Handler):
    """Collects the per-turn stage times the local server logs (same process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.turns: list[dict[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "timings_ms"):
            self.turns.append(record.timings_ms)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(turns: int) -> None:
    models = warm()
    timings = TimingsCollector()
    server_log = logging.getLogger("koe.local")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(timings)
    server_log.propagate = False  # the figures are printed below
    server = LocalServer(port=0, models=models).start()
    settings = SessionSettings(instructions="You are a helpful assistant. Answer in one or two short sentences.",
                               voice="alloy")
    rows = []
    try:
        async with SimulatedUser(Backend(server.url), settings) as user:
            for n in range(turns):
                text = UTTERANCES[n % len(UTTERANCES)]
                start = len(user.events)
                await user.say(models.tts.synthesize(text), silence_after_s=0.2)
                done = await user.connection.wait_for("response.done", timeout_s=60)
                await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=60)
                turn = user.events[start:]
                stopped = next(t for t, e in turn if e.type == "input_audio_buffer.speech_stopped")
                first_audio = user.first_voice_after(stopped)
                if first_audio is None or done.response["status"] != "completed" or not timings.turns:
                    print(f"turn {n + 1}: no reply audio ({done.response['status']})")
                    continue
                stages = timings.turns[-1]
                rows.append((1000 * (first_audio - stopped), stages["transcribed"], stages["first_token"],
                             stages["first_audio"]))
                print(f"turn {n + 1}: {rows[-1][0]:5.0f} ms at the client  (server: transcript +{rows[-1][1]}, "
                      f"first token +{rows[-1][2]}, first audio +{rows[-1][3]} ms)  {text}")
                await asyncio.sleep(0.5)
    finally:
        server.stop()
    if not rows:
        raise SystemExit("no turn produced reply audio")
    total = [r[0] for r in rows]
    print()
    print(f"end of speech -> first reply audio at the client over {len(rows)} turns: "
          f"p50 {statistics.median(total):.0f} ms, p95 {percentile(total, 0.95):.0f} ms")
    print("split, measured in the server from speech_stopped:")
    for label, index in (("speech to text done", 1), ("first LLM token", 2), ("first audio queued", 3)):
        values = [r[index] for r in rows]
        print(f"  {label:28s} p50 {statistics.median(values):5.0f} ms  p95 {percentile(values, 0.95):5.0f} ms")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (RSS) {peak_mb:.0f} MB; goal: p50 <= 1000 ms on 2 cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.turns))


if __name__ == "__main__":
    main()
