"""End of user speech to first reply audio, through the local server on loopback.

    .venv/bin/python bench/engine_latency.py [--turns 8] [--languages en,ja] [--reply-model fast|default]
        [--japanese-voice mei|jf_alpha|...] [--chat-base-url URL --chat-model M]

A simulated caller speaks several utterances (made with the project's own TTS) over a real WebRTC
call, in English and then in Japanese (transcription language "ja": Whisper base, OpenJTalk's mei). For
each turn it prints the time from `speech_stopped` to the first non-silent reply frame at the
client, split into speech to text, first token and first audio as the server measured them; then
p50/p95 per language and the process's peak memory. Goal on a 2-core CPU: p50 at most 1.0 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.figures import TimingsCollector, percentile  # noqa: E402
from koe.client import Backend  # noqa: E402
from koe.client.simulated_user import QUESTIONS as UTTERANCES, SimulatedUser  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.models import get_japanese_models, warm  # noqa: E402
from koe.local.stages.llm import PROFILES  # noqa: E402
from koe.local.voices import DEFAULT_JAPANESE_VOICE, JAPANESE_VOICES  # noqa: E402
from koe.protocol import SessionSettings, TranscriptionSettings  # noqa: E402

JAPANESE_UTTERANCES = [
    "東京駅までの行き方を教えてください。",
    "今日の天気はどうですか？",
    "おすすめの本を教えてください。",
    "好きな食べ物は何ですか？",
    "明日は何曜日ですか？",
    "日本の有名な山はどこですか？",
    "週末に何をしたらいいですか？",
    "猫について面白いことを教えて。",
]


JAPANESE_INSTRUCTIONS = "あなたは親切なアシスタントです。日本語で、一文か二文で短く答えてください。"


def japanese_caller(japanese) -> Callable[[str], np.ndarray]:
    """The simulated caller's Japanese speech: Kokoro's jf_alpha, which Whisper base hears best."""
    return lambda text: japanese.tts.synthesize(text, voice="jf_alpha")


async def conversation(server: LocalServer, settings: SessionSettings, utterances: list[str],
                       speak: Callable[[str], np.ndarray], timings: TimingsCollector, turns: int) -> list[tuple]:
    """One call of `turns` turns; per turn (client ms, transcribed, first token, first audio as the server saw
    them, what the server heard, the reply's transcript, the utterance); turns without reply audio are left out."""
    rows = []
    user = SimulatedUser(Backend(server.url), settings)
    user.connection.extra_voices = JAPANESE_VOICES  # the local backend's own voices
    async with user:
        for n in range(turns):
            text = utterances[n % len(utterances)]
            start = len(user.events)
            await user.say(speak(text), silence_after_s=0.2)
            done = await user.connection.wait_for("response.done", timeout_s=90)
            await user.connection.wait_for("output_audio_buffer.stopped", timeout_s=90)
            turn = user.events[start:]
            stopped = next(t for t, e in turn if e.type == "input_audio_buffer.speech_stopped")
            first_audio = user.first_voice_after(stopped)
            if first_audio is None or done.response["status"] != "completed" or not timings.turns:
                print(f"turn {n + 1}: no reply audio ({done.response['status']})")
                continue
            stages = timings.turns[-1]
            heard = next((e.transcript for _, e in turn
                          if e.type == "conversation.item.input_audio_transcription.completed"), "")
            reply = next((e.transcript for _, e in turn if e.type == "response.output_audio_transcript.done"), "")
            rows.append((1000 * (first_audio - stopped), stages["transcribed"], stages["first_token"],
                         stages["first_audio"], heard, reply, text))
            print(f"turn {n + 1}: {rows[-1][0]:5.0f} ms at the client  (server: transcript +{rows[-1][1]}, "
                  f"first token +{rows[-1][2]}, first audio +{rows[-1][3]} ms)  {text}")
            await asyncio.sleep(0.5)
    return rows


def report(language: str, rows: list[tuple]) -> None:
    if not rows:
        raise SystemExit(f"no {language} turn produced reply audio")
    total = [r[0] for r in rows]
    print(f"{language}: end of speech -> first reply audio at the client over {len(rows)} turns: "
          f"p50 {statistics.median(total):.0f} ms, p95 {percentile(total, 0.95):.0f} ms")
    print("  split, measured in the server from speech_stopped:")
    for label, index in (("speech to text done", 1), ("first LLM token", 2), ("first audio queued", 3)):
        values = [r[index] for r in rows]
        print(f"    {label:26s} p50 {statistics.median(values):5.0f} ms  p95 {percentile(values, 0.95):5.0f} ms")


async def run(turns: int, languages: list[str], chat: dict[str, str | None], reply_model: str | None,
              japanese_voice: str) -> None:
    models = warm(japanese="ja" in languages, reply_model=reply_model)
    japanese = get_japanese_models() if "ja" in languages else None
    timings = TimingsCollector()
    server_log = logging.getLogger("koe.local")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(timings)
    server_log.propagate = False  # the figures are printed below
    server = LocalServer(port=0, models=models, **chat).start()
    replies = f"{server.chat.endpoint.model} at {server.chat.endpoint.base_url}" if server.chat \
        else f"{models.llm.profile.model} (profile {models.llm.profile.name})"
    print(f"reply model: {replies}")
    results = {}
    try:
        if "en" in languages:
            print("English (Whisper tiny.en, Piper):")
            english = SessionSettings(instructions="You are a helpful assistant. Answer in one or two short sentences.",
                                      voice="alloy")
            results["English"] = await conversation(server, english, UTTERANCES, models.tts.synthesize, timings, turns)
        if japanese is not None:
            print(f"Japanese (Whisper base, voice {japanese_voice}):")
            # Bounded replies: each turn waits for its audio to end. The caller speaks with Kokoro's jf_alpha.
            settings = SessionSettings(instructions=JAPANESE_INSTRUCTIONS, voice=japanese_voice, max_output_tokens=60,
                                       transcription=TranscriptionSettings(language="ja"))
            results["Japanese"] = await conversation(server, settings, JAPANESE_UTTERANCES, japanese_caller(japanese),
                                                     timings, turns)
    finally:
        server.stop()
    print()
    for language, rows in results.items():
        report(language, rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (RSS) {peak_mb:.0f} MB; goal: p50 <= 1000 ms on 2 cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8, help="turns per language")
    parser.add_argument("--languages", default="en,ja", help="comma-separated: en, ja (default: %(default)s)")
    parser.add_argument("--chat-base-url", help="reply through this OpenAI-compatible endpoint (else $KOE_CHAT_BASE_URL)")
    parser.add_argument("--chat-model")
    parser.add_argument("--chat-api-key")
    parser.add_argument("--reply-model", choices=list(PROFILES), help="bundled reply model profile (else $KOE_REPLY_MODEL, "
                                                                    "else default)")
    parser.add_argument("--japanese-voice", default=DEFAULT_JAPANESE_VOICE, choices=JAPANESE_VOICES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chat = {"chat_base_url": args.chat_base_url, "chat_model": args.chat_model, "chat_api_key": args.chat_api_key}
    asyncio.run(run(args.turns, args.languages.split(","), chat, args.reply_model, args.japanese_voice))


if __name__ == "__main__":
    main()
