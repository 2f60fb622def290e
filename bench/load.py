"""Load on one local backend: N simultaneous callers, N ramping up, the backend in its own process.

    .venv/bin/python bench/load.py [--ramp 1,2,3,4,6] [--turns 2] [--max-calls N] [--reply-model fast|default]
                                   [--through-relay] [--workers N]

Starts `python -m koe.local` (its capacity: `--max-calls`, else its own default, two per core; 0 = none),
then for each N runs N synthetic callers at once (aiortc WebRTC calls from this process, each asking short
questions in speech made with the project's own TTS, Piper). With `--through-relay` each caller is a
synthetic browser behind the app's relay, as in bench/relay.py (browser peer → app peer → Relay → backend),
all of the app side in this process. Per N it prints:
- refusals: callers answered 429 (the backend full) instead of a call;
- p50/p95 reply latency: end of the caller's speech (`speech_stopped`) to the first voiced reply frame heard;
- late audio: the share of each reply's playing time (first voiced frame to `output_audio_buffer.stopped`)
  spent in silences of 250 ms or more, where the backend had no audio ready, against N = 1 in the same run
  (a reply's own pauses between sentences are in both);
- the backend process's CPU (cores busy, from /proc) and its peak memory (VmHWM), with `--workers N` summed
  over the front and its workers;
and names the first N where replies degrade (p50 over 1.5 s, or late audio 5 points above N = 1).
Figures on a shared machine are noisy: read them as ceilings, and compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench.relay's RelayedCall uses the tests' helpers
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.figures import LocalBackendProcess, cpu_seconds, peak_rss_mb, percentile  # noqa: E402
from bench.relay import DirectEvents, RelayedCall, wait_event  # noqa: E402
from koe.audio import FRAME_SAMPLES, RATE, rms_dbfs  # noqa: E402
from koe.client import Backend, RateLimitError  # noqa: E402
from koe.client.simulated_user import QUESTIONS, VOICE_DBFS, SimulatedUser  # noqa: E402
from koe.local.stages.tts import Speaker  # noqa: E402
from koe.protocol import SessionSettings  # noqa: E402
from koe.relay import LoopThread  # noqa: E402

GAP_S = 0.25  # a silence this long inside a reply is the backend falling behind
SETTINGS = SessionSettings(instructions="You are a helpful assistant. Answer in one short sentence.", voice="alloy")


@dataclass
class Level:
    """What N callers saw."""

    callers: int
    refused: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    played_s: float = 0.0  # reply playing time, summed
    gaps_s: float = 0.0  # of which silences of GAP_S or more
    cpu_cores: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def late(self) -> float:
        return self.gaps_s / self.played_s if self.played_s else 0.0


def gaps(heard: list[tuple[float, float]], begin: float, end: float) -> tuple[float, float]:
    """(playing time, time in silences of GAP_S or more) of the (arrival, dBFS) frames heard in [begin, end]."""
    levels = [level for at, level in heard if begin <= at <= end]
    silent_run, gap = 0, 0
    for level in levels:
        if level <= VOICE_DBFS:
            silent_run += 1
            continue
        if silent_run * FRAME_SAMPLES / RATE >= GAP_S:
            gap += silent_run
        silent_run = 0
    return len(levels) * FRAME_SAMPLES / RATE, gap * FRAME_SAMPLES / RATE


class DirectCaller:
    """A caller on the backend itself (OpenAI's WebRTC protocol, as any client)."""

    def __init__(self, url: str) -> None:
        self.user = SimulatedUser(Backend(url), SETTINGS)

    async def start(self) -> bool:
        """False when the backend refused the call (busy)."""
        try:
            await self.user.connection.connect()
        except RateLimitError:
            return False
        return True

    def say(self, speech: np.ndarray) -> None:
        self.user.mic.push(np.concatenate([speech, np.zeros(int(0.3 * RATE), np.int16)]))

    def events(self) -> DirectEvents:
        return DirectEvents(self.user)  # a live view: wait_event polls it while events arrive

    def heard(self) -> list[tuple[float, float]]:
        return [(at, rms_dbfs(samples)) for at, samples in self.user.frames]

    async def close(self) -> None:
        await self.user.connection.close()


class RelayedCaller:
    """A synthetic browser behind the app's relay (bench/relay.py's RelayedCall)."""

    def __init__(self, url: str, loop_thread: LoopThread) -> None:
        self.call = RelayedCall(Backend(url), SETTINGS, loop_thread)

    async def start(self) -> bool:
        try:
            await self.call.start()
        except RuntimeError:
            if "busy" in self.call.relay.status.message:
                return False
            raise
        return True

    def say(self, speech: np.ndarray) -> None:
        self.call.mic.push(np.concatenate([speech, np.zeros(int(0.3 * RATE), np.int16)]))

    def events(self) -> list[tuple[float, str]]:
        return self.call.events

    def heard(self) -> list[tuple[float, float]]:
        return list(self.call.heard)

    async def close(self) -> None:
        await self.call.close()


async def caller(make, speech: list[np.ndarray], turns: int, level: Level, delay_s: float) -> None:
    await asyncio.sleep(delay_s)  # callers do not all press START in the same millisecond
    who = make()
    try:
        if not await who.start():
            level.refused += 1
            return
        for n in range(turns):
            start = len(who.events())
            who.say(speech[(n + int(delay_s * 10)) % len(speech)])
            stopped = await wait_event(who.events(), start, "input_audio_buffer.speech_stopped", 60)
            ended = await wait_event(who.events(), start, "output_audio_buffer.stopped", 180)
            heard = who.heard()
            first = next((at for at, dbfs in heard if at > stopped and dbfs > VOICE_DBFS), None)
            if first is None or first > ended:
                level.failed += 1
                continue
            level.latencies_s.append(first - stopped)
            played, gap = gaps(heard, first, ended)
            level.played_s += played
            level.gaps_s += gap
            await asyncio.sleep(0.5)
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        print(f"  a caller gave up: {exc}")
        level.failed += 1
    finally:
        await who.close()


async def run_level(make, pids: list[int], speech: list[np.ndarray], n: int, turns: int) -> Level:
    level = Level(n)
    cpu0, t0 = sum(map(cpu_seconds, pids)), time.monotonic()
    await asyncio.gather(*(caller(make, speech, turns, level, random.uniform(0, 1.0)) for _ in range(n)))
    level.cpu_cores = (sum(map(cpu_seconds, pids)) - cpu0) / (time.monotonic() - t0)
    level.peak_rss_mb = sum(map(peak_rss_mb, pids))
    return level


def report(levels: list[Level], max_calls: str, path: str) -> None:
    print(f"\nkoe.local, capacity {max_calls}, {path}, {os.cpu_count()} cores (shared machine: noisy figures)")
    print(f"{'N':>3} {'refused':>7} {'failed':>6} {'turns':>5} {'p50 ms':>7} {'× N=1':>6} {'p95 ms':>7} {'late':>6} "
          f"{'vs N=1':>7} {'CPU cores':>9} {'peak MB':>8}")
    base = levels[0].late if levels else 0.0
    base_p50 = statistics.median(levels[0].latencies_s) * 1000 if levels and levels[0].latencies_s else float("nan")
    degraded = None
    for level in levels:
        lat = level.latencies_s
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p95 = percentile(lat, 0.95) * 1000 if lat else float("nan")
        print(f"{level.callers:>3} {level.refused:>7} {level.failed:>6} {len(lat):>5} {p50:>7.0f} {p50 / base_p50:>6.2f} "
              f"{p95:>7.0f} {level.late:>6.1%} {level.late - base:>+7.1%} {level.cpu_cores:>9.2f} "
              f"{level.peak_rss_mb:>8.0f}")
        if degraded is None and lat and (p50 > 1500 or level.late - base > 0.05):
            degraded = level.callers
    print(f"degrades at N = {degraded}" if degraded else "no degradation within the ramp "
          "(p50 <= 1.5 s and late audio within 5 points of N = 1)")


async def main_async(args: argparse.Namespace) -> None:
    speaker = Speaker()
    speech = [speaker.synthesize(q) for q in QUESTIONS[:4]]
    extra = ["--reply-model", args.reply_model, "--workers", str(args.workers)] + (
        ["--max-calls", str(args.max_calls)] if args.max_calls is not None else [])
    with LocalBackendProcess(*extra) as backend:
        url, health = backend.url, backend.health
        loop_thread = LoopThread() if args.through_relay else None  # the relays' loop, as in the app
        make = (lambda: RelayedCaller(url, loop_thread)) if loop_thread else (lambda: DirectCaller(url))
        levels = []
        for n in args.ramp:
            print(f"N = {n}: {n} callers, {args.turns} turns each…", flush=True)
            levels.append(await run_level(make, backend.pids, speech, n, args.turns))
        report(levels, str(health["max_calls"] or "unlimited") + (f", {args.workers} workers" if args.workers > 1 else ""),
               "through the relay" if loop_thread else "callers straight to the backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ramp", default="1,2,3,4,6", type=lambda s: [int(n) for n in s.split(",")])
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-calls", type=int, default=None, help="the backend's capacity (default: its own)")
    parser.add_argument("--reply-model", default="fast", help="the bundled reply model (default: %(default)s)")
    parser.add_argument("--through-relay", action="store_true", help="each caller behind the app's relay")
    parser.add_argument("--workers", type=int, default=1, help="koe.local's model processes (default: %(default)s)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
