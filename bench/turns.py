"""Turn detection: how soon the reply starts, and how often a pausing speaker is cut off.

    .venv/bin/python bench/turns.py [--languages en,ja] [--modes server_vad,high,medium,low] [--rounds 1]
        [--reply-models default,fast]

A simulated caller speaks over a real WebRTC call to the local server, once per turn detection
mode, in the same run: `server_vad` as OpenAI documents it (500 ms of silence) and `semantic_vad`
at each eagerness (Smart Turn v3.2 judges each silence). Half the utterances are complete
questions; the other half are sentences with a pause of 0.6-1.2 s in the middle, made from the
voice's own breath at a comma, widened (`with_pause`). English speech is Piper's; Japanese speech is
Kokoro's (the Japanese TTS's natural voice), answered in the default Japanese voice.

Per mode it prints the time from the end of the user's audio (the last voiced sample leaving the
caller) to the first voiced reply frame at the caller, p50/p95 over all turns and per kind; the share
of paused sentences cut off (the server ended the turn before the speaker finished); and the silence
the server waited through after the user fell silent (its own `user_stopped` timing). Figures from a
shared, loaded machine are noisy: compare modes within one run. With several `--reply-models` (the
bundled profiles), every mode runs with each, one server per profile, and a table is printed per profile.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.engine_latency import JAPANESE_UTTERANCES  # noqa: E402
from bench.figures import TimingsCollector, percentile  # noqa: E402
from koe.audio import RATE  # noqa: E402
from koe.client import Backend  # noqa: E402
from koe.client.simulated_user import QUESTIONS, SimulatedUser, trim_silence, with_pause  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.llm import PROFILES  # noqa: E402
from koe.local.stages.models import get_japanese_models, warm  # noqa: E402
from koe.local.voices import JAPANESE_VOICES  # noqa: E402
from koe.protocol import SemanticVad, ServerVad, SessionSettings, TranscriptionSettings  # noqa: E402

PAUSES_S = (0.6, 0.8, 1.0, 1.2)
ENGLISH_PAUSED = (  # the comma is where the speaker stops to think
    "I'd like to order, a large pizza with mushrooms.",
    "So what I was thinking, is that we could go to the park.",
    "Could you tell me, how long it takes to boil an egg?",
    "I would like to book a table, for four people tonight.",
)
JAPANESE_PAUSED = (
    "私が言いたいのは、明日は休みだということです。",
    "大きいピザを、一枚注文したいです。",
    "明日の朝、駅の近くで、会いましょう。",
    "週末は、家族と一緒に、海に行きたいです。",
)
JAPANESE_CALLER = "jf_alpha"  # Kokoro


@dataclass
class Utterance:
    text: str
    audio: np.ndarray  # int16 mono 48 kHz, no quiet edges
    resumes_s: float | None = None  # where speech comes back after the pause; None: a complete question


@dataclass
class Turn:
    paused: bool
    latency_ms: float | None  # end of the user's audio -> first reply audio at the caller
    cut: bool  # the server ended a turn before the speaker finished
    waited_ms: int | None  # the server's own figure: silence waited through before speech_stopped


def utterances(speak, complete: tuple[str, ...], paused: tuple[str, ...]) -> list[Utterance]:
    out = []
    for n, (question, sentence) in enumerate(zip(complete, paused)):
        out.append(Utterance(question, trim_silence(speak(question))))
        audio, resumes_s = with_pause(trim_silence(speak(sentence)), PAUSES_S[n % len(PAUSES_S)])
        out.append(Utterance(sentence, audio, resumes_s))
    return out


async def played(user: SimulatedUser, sample: int) -> float:
    """When the caller's microphone track sent its `sample`-th queued sample (5 ms resolution)."""
    while user.mic.played_samples < sample:
        await asyncio.sleep(0.005)
    return time.monotonic()


async def first_reply_voice(user: SimulatedUser, since: int, end: float, timeout_s: float = 20.0) -> float | None:
    """When the reply to the user's last words became audible at the caller: the first voiced frame after
    the first `output_audio_buffer.started` that no later speech interrupted (a reply to a fragment cut
    off mid-sentence is interrupted when the speaker goes on, and does not count)."""
    while time.monotonic() < end + timeout_s:
        turn = user.events[since:]
        last_start = max((t for t, e in turn if e.type == "input_audio_buffer.speech_started"), default=end)
        started = [t for t, e in turn if e.type == "output_audio_buffer.started" and t > last_start]
        if started and (voice := user.first_voice_after(started[0])) is not None:
            return voice
        await asyncio.sleep(0.02)
    return None


async def settle(user: SimulatedUser, timeout_s: float = 30.0) -> None:
    """Wait until no reply is in progress, then drop any reply audio still playing."""
    deadline = time.monotonic() + timeout_s
    while len(user.of_type("response.done")) < len(user.of_type("response.created")) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await user.connection.send({"type": "output_audio_buffer.clear"})
    await asyncio.sleep(0.8)


async def one_turn(user: SimulatedUser, utterance: Utterance, timings: TimingsCollector) -> Turn:
    base = user.mic.played_samples + user.mic.queued_ms * RATE // 1000
    server_turns = len(timings.turns)
    events_before = len(user.events)
    await user.mic.write(utterance.audio)
    end = await played(user, base + utterance.audio.size)
    stops = [t for t, e in user.events[events_before:] if e.type == "input_audio_buffer.speech_stopped"]
    first_voice = await first_reply_voice(user, events_before, end)
    if first_voice is not None:  # measured: stop the reply so the next turn starts at once
        await user.connection.send({"type": "response.cancel"})
    await settle(user)
    server = [t for t in timings.turns[server_turns:] if "user_stopped" in t]
    turn = Turn(paused=utterance.resumes_s is not None,
                latency_ms=None if first_voice is None else 1000 * (first_voice - end),
                cut=any(t < end for t in stops), waited_ms=-server[-1]["user_stopped"] if server else None)
    split = ", ".join(f"{k} +{v}" for k, v in server[-1].items() if k != "user_stopped") if server else "no reply"
    print(f"    {'paused ' if turn.paused else 'complete'} {turn.latency_ms or float('nan'):6.0f} ms"
          f"{'  CUT' if turn.cut else '     '}  server: waited {turn.waited_ms} ms, then {split}  {utterance.text}")
    return turn


def turn_detection(mode: str):
    return ServerVad() if mode == "server_vad" else SemanticVad(eagerness=mode)


def label(mode: str) -> str:
    return "server_vad 500 ms" if mode == "server_vad" else f"semantic_vad {mode}"


async def call(server: LocalServer, settings: SessionSettings, said: list[Utterance], rounds: int,
               timings: TimingsCollector) -> list[Turn]:
    user = SimulatedUser(Backend(server.url), settings)
    user.connection.extra_voices = JAPANESE_VOICES
    turns = []
    async with user:
        for _ in range(rounds):
            for utterance in said:
                turns.append(await one_turn(user, utterance, timings))
    return turns


def stats(values: list[float]) -> str:
    if not values:
        return "      n/a       "
    return f"{statistics.median(values):5.0f} / {percentile(values, 0.95):5.0f}"


def report(language: str, results: dict[str, list[Turn]]) -> None:
    print(f"\n{language}: end of user audio -> first reply audio at the caller, ms (p50 / p95)")
    print(f"  {'mode':22s} {'all turns':>15s} {'complete':>15s} {'paused':>15s}  cut off mid-sentence  "
          f"server waited p50  no reply")
    for mode, turns in results.items():
        latency = [t.latency_ms for t in turns if t.latency_ms is not None]
        complete = [t.latency_ms for t in turns if not t.paused and t.latency_ms is not None]
        paused = [t for t in turns if t.paused]
        pausing = [t.latency_ms for t in paused if t.latency_ms is not None]
        waited = [t.waited_ms for t in turns if t.waited_ms is not None and not t.cut]
        cut = sum(t.cut for t in paused)
        print(f"  {label(mode):22s} {stats(latency):>15s} {stats(complete):>15s} {stats(pausing):>15s}  "
              f"{cut:2d}/{len(paused)} ({100 * cut / max(1, len(paused)):3.0f}%)          "
              f"{statistics.median(waited) if waited else float('nan'):5.0f}        "
              f"{sum(t.latency_ms is None for t in turns)}")


async def run(languages: list[str], modes: list[str], rounds: int, profiles: list[str]) -> None:
    timings = TimingsCollector()
    server_log = logging.getLogger("koe.local")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(timings)
    server_log.propagate = False
    results: dict[str, dict[str, list[Turn]]] = {}
    for profile in profiles:
        models = warm(japanese="ja" in languages, reply_model=profile)
        print(f"reply model: {models.llm.profile.model} (profile {profile}); "
              "turn model: Smart Turn v3.2 (pipecat-ai wheel); figures from a shared 2-core machine are noisy")
        plans = []
        if "en" in languages:
            plans.append(("English (Piper speaks, Whisper base hears)",
                          SessionSettings(instructions="Answer in one short sentence.", voice="alloy",
                                          max_output_tokens=24),
                          utterances(models.tts.synthesize, QUESTIONS, ENGLISH_PAUSED)))
        if "ja" in languages:
            tts = get_japanese_models().tts
            tts.prepare(JAPANESE_CALLER)
            plans.append(("Japanese (Kokoro speaks, Whisper base hears, mei answers)",
                          SessionSettings(instructions="日本語で、一文で短く答えてください。", voice="mei",
                                          max_output_tokens=24,
                                          transcription=TranscriptionSettings(language="ja")),
                          utterances(lambda text: tts.synthesize(text, voice=JAPANESE_CALLER), JAPANESE_UTTERANCES,
                                     JAPANESE_PAUSED)))
        server = LocalServer(port=0, models=models).start()
        try:
            for language, settings, said in plans:
                table = f"{language}, reply model {profile}"
                results[table] = {}
                for mode in modes:
                    started = time.monotonic()
                    turns = await call(server, settings.changed(turn_detection=turn_detection(mode)), said, rounds,
                                       timings)
                    results[table][mode] = turns
                    print(f"{table}, {label(mode)}: {len(turns)} turns in {time.monotonic() - started:.0f} s")
        finally:
            server.stop()
    for table, by_mode in results.items():
        report(table, by_mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", default="en,ja", help="comma-separated: en, ja (default: %(default)s)")
    parser.add_argument("--modes", default="server_vad,high,medium,low",
                        help="server_vad and semantic_vad eagernesses (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="times each utterance is spoken per mode")
    parser.add_argument("--reply-models", default="default",
                        help=f"comma-separated bundled reply model profiles: {', '.join(PROFILES)} (default: %(default)s)")
    args = parser.parse_args()
    profiles = args.reply_models.split(",")
    if not set(profiles) <= set(PROFILES):
        parser.error(f"--reply-models: choose from {', '.join(PROFILES)}")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.languages.split(","), args.modes.split(","), args.rounds, profiles))


if __name__ == "__main__":
    main()
