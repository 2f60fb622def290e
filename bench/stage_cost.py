"""What one conversation costs koe.local: CPU-seconds per turn for each model stage, and the capacity that follows.

    .venv/bin/python bench/stage_cost.py [--turns 8] [--reply-model fast|default] [--pause 2.0]

Runs the stages one after another in this process, as a session runs them, on spoken questions (the
project's own TTS): turn detection (Silero VAD over all the audio a call hears: the question, the reply
playing back, the pause), speech to text on the question, the turn model's verdict (semantic_vad), the
reply model streaming a reply to it (bench/load.py's instructions, at most 256 tokens) and text to
speech of that reply, clause by clause. For each stage it prints CPU-seconds per turn (the process's CPU
time, all threads: the models' own thread pools included) and wall seconds, with the model threads
koe.local uses (`koe.local.scheduler.model_threads()`).

Capacity, two ways, for a conversation taking one turn every `question + reply + pause` seconds:
- CPU-bound: cores x turn period / CPU-seconds per turn;
- reply-model-bound: one llama.cpp context serves every conversation one reply at a time, so
  turn period / reply-model wall seconds per turn.
The smaller is the figure to set `--max-calls` with; WebRTC's own cost per call (Opus, RTP) is left out.
Run it on a quiet machine: on a shared one the wall figures swell and the CPU figures less so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from koe.audio import RATE, resample, to_float32  # noqa: E402
from koe.client.simulated_user import QUESTIONS  # noqa: E402
from koe.local.scheduler import cores, lanes, model_threads  # noqa: E402
from koe.local.session import DEFAULT_REPLY_TOKENS  # noqa: E402
from koe.local.stages.models import get_models  # noqa: E402
from koe.local.stages.sentences import ClauseSplitter  # noqa: E402
from koe.local.stages.vad import VadStream  # noqa: E402

STAGES = ("vad", "stt", "turn", "llm", "tts")
INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."  # as bench/load.py's callers


def measured(costs: dict[str, list[tuple[float, float]]], stage: str, fn, *args):
    """fn(*args), adding (CPU s, wall s) to costs[stage]."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    costs[stage].append((time.process_time() - cpu, time.perf_counter() - wall))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--reply-model", default="fast", help="the bundled reply model (default: %(default)s)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between a reply's end and the next question")
    args = parser.parse_args()
    models = get_models(args.reply_model)
    instructions = INSTRUCTIONS
    print(f"{cores()} cores, {lanes()} model lanes x {model_threads()} threads per model; reply model "
          f"{models.llm.profile.model} (shared machine: noisy)")
    costs: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    periods: list[float] = []
    models.tts.synthesize("Warm up.")
    for n in range(args.turns):
        question = QUESTIONS[n % len(QUESTIONS)]
        speech16k = to_float32(resample(models.tts.synthesize(question), RATE, 16_000))
        text = measured(costs, "stt", models.stt.transcribe, speech16k, "en")
        measured(costs, "turn", models.turn.probability, speech16k)
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": text}]
        reply = measured(costs, "llm", lambda: "".join(models.llm.stream(messages, max_tokens=DEFAULT_REPLY_TOKENS)))
        splitter = ClauseSplitter()
        clauses = [*splitter.push(reply), *splitter.flush()]
        audio = measured(costs, "tts", lambda: [models.tts.synthesize(clause) for clause in clauses])
        reply_s = sum(part.size for part in audio) / RATE
        period = speech16k.size / 16_000 + reply_s + args.pause
        periods.append(period)
        heard = np.zeros(round(period * 16_000), np.float32)  # the mic stays open: VAD hears the whole period
        heard[:speech16k.size] = speech16k
        stream = VadStream(models.vad)
        measured(costs, "vad", lambda: sum(1 for _ in stream.chunks(heard)))
        print(f"  turn {n + 1}: {question!r} -> {reply[:60]!r}{'…' if len(reply) > 60 else ''} "
              f"({reply_s:.1f} s of speech, turn period {period:.1f} s)")
    print(f"\nper turn ({args.turns} turns), p50 | mean:")
    print(f"  {'stage':5s} {'CPU s':>13s} {'wall s':>13s}")
    total_cpu = 0.0
    for stage in STAGES:
        cpu = [c for c, _ in costs[stage]]
        wall = [w for _, w in costs[stage]]
        total_cpu += statistics.mean(cpu)
        print(f"  {stage:5s} {statistics.median(cpu):6.3f} | {statistics.mean(cpu):5.3f} "
              f"{statistics.median(wall):6.3f} | {statistics.mean(wall):5.3f}")
    period = statistics.mean(periods)
    llm_wall = statistics.mean(w for _, w in costs["llm"])
    cpu_bound = cores() * period / total_cpu
    llm_bound = period / llm_wall
    print(f"  all   {total_cpu:6.3f} CPU s per turn; a turn every {period:.1f} s on average")
    print(f"\ncapacity: CPU-bound {cpu_bound:.1f} conversations ({cores()} cores x {period:.1f} s / {total_cpu:.2f} CPU s); "
          f"reply-model-bound {llm_bound:.1f} ({period:.1f} s / {llm_wall:.2f} s of reply model per turn) "
          f"-> at most {min(cpu_bound, llm_bound):.1f} at once with every core busy (set --max-calls below it: the "
          f"latency goal needs headroom; WebRTC's own cost left out)")


if __name__ == "__main__":
    main()
