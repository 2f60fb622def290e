"""Whether the bundled reply models answer right, and how fast, through the running local server.

    .venv/bin/python bench/answers.py [--profiles fast,default] [--languages en,ja] [--japanese-voice mei]

A simulated caller asks a fixed set of short factual and conversational questions aloud, over a real
WebRTC call to the local server (VAD → Whisper → reply model → TTS), once per reply-model profile, in
English and in Japanese. A reply counts as right when it contains one of the question's expected keywords
(what the server heard is printed too: a mishearing counts against the whole cascade, and the share right
among the questions heard right, at most 10 % of characters wrong, is printed beside it). Per profile and
language it prints those and, from `speech_stopped`, the first token (server) and the first reply audio at
the client, p50 and p95. Goals: English ≥ 90 % right, p50 first audio ≤ 1.0 s; Japanese ≥ 70 %
right, p50 ≤ 1.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jiwer  # noqa: E402

from bench.engine_latency import JAPANESE_INSTRUCTIONS, conversation, japanese_caller  # noqa: E402
from bench.figures import TimingsCollector, percentile  # noqa: E402
from bench.voices import normalized, reading  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.llm import PROFILES  # noqa: E402
from koe.local.stages.models import get_japanese_models, warm  # noqa: E402
from koe.local.voices import DEFAULT_JAPANESE_VOICE, JAPANESE_VOICES  # noqa: E402
from koe.presets import PRESETS  # noqa: E402
from koe.protocol import SessionSettings, TranscriptionSettings  # noqa: E402

# (question, keywords: any one of them, lower case, makes the reply right)
ENGLISH = [
    ("What is the capital of France?", ("paris",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the tallest mountain in Japan?", ("fuji",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What do bees make?", ("honey",)),
    ("Hello! How are you today?", ("good", "well", "great", "fine", "thank", "doing")),
    ("Can you suggest a fruit for breakfast?", ("banana", "bananas", "apple", "apples", "berries", "blueberries", "strawberries", "orange", "oranges",
                                                 "grapefruit", "mango", "melon")),
]
JAPANESE = [
    ("日本の首都はどこですか？", ("東京", "とうきょう", "tokyo")),
    ("日本で一番高い山は何ですか？", ("富士", "ふじさん", "fuji")),
    ("一週間は何日ですか？", ("七", "7", "なな", "なのか")),
    # なにいろ in kana: OpenJTalk, which reads the caller's Japanese, says 何色 as なんしょく.
    ("空はなにいろですか？", ("青", "あお", "ブルー", "blue")),
    ("蜂は何を作りますか？", ("蜂蜜", "はちみつ", "ハチミツ", "蜜を作", "蜜です", "honey")),
    ("太陽系で一番大きい惑星は何ですか？", ("木星", "もくせい", "jupiter")),
    ("こんにちは、元気ですか？", ("元気", "ありがとう", "はい")),
    # A fruit by name (果物 itself is the question's word, not an answer).
    ("朝ごはんにおすすめの果物は何ですか？", ("バナナ", "りんご", "リンゴ", "林檎", "いちご", "イチゴ", "苺", "みかん", "蜜柑",
                                   "オレンジ", "ぶどう", "ブドウ", "キウイ", "桃", "メロン", "梨", "マンゴー",
                                   "ブルーベリー", "グレープフルーツ", "パイナップル", "柿")),
]


def right(reply: str, keywords: tuple[str, ...], question: str = "") -> bool:
    """Whether a keyword occurs in the reply; a Latin one as a whole word ("7" is not in "57 days"). The
    question's own words said back ("こんにちは、元気ですか？" → "こんにちは、元気ですか？") answer nothing: an
    echo of the question is taken out first."""
    reply = unicodedata.normalize("NFKC", reply).lower()
    echo = unicodedata.normalize("NFKC", question).lower().rstrip("?？!！。. ")
    if echo:
        reply = reply.replace(echo, " ")
    return any(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", reply) if k.isascii() else k in reply
               for k in keywords)


def heard_right(question: str, heard: str) -> bool:
    """Whether speech to text got the question: at most 10 % of its characters wrong, or of its sounds
    (Japanese written in other characters: 一週間 / 1週間, 果物 / くだもの)."""
    if jiwer.cer(normalized(question), normalized(heard) or "-") <= 0.1:
        return True
    return reading(question) != "" and jiwer.cer(reading(question), reading(heard) or "-") <= 0.1


async def ask(server: LocalServer, settings: SessionSettings, questions: list[tuple[str, tuple[str, ...]]], speak,
              timings: TimingsCollector) -> list[tuple[float, float, bool, bool]]:
    """Each question in one call; per answered turn (first audio ms at the client, first token ms, answered
    right, heard right)."""
    rows = await conversation(server, settings, [q for q, _ in questions], speak, timings, len(questions))
    expected = dict(questions)
    results = []
    for row in rows:
        ok, heard = right(row[5], expected[row[6]], row[4]), heard_right(row[6], row[4])
        print(f"    {'RIGHT' if ok else 'wrong'}  {row[0]:5.0f} ms  heard {row[4]!r}{'' if heard else ' (misheard)'}"
              f" -> {row[5]!r}")
        results.append((row[0], row[2], ok, heard))
    return results


def summary(profile: str, language: str, asked: int, rows: list[tuple[float, float, bool, bool]]) -> str:
    if not rows:
        return f"| {profile} | {language} | 0/{asked} | – | – | – |"
    answered = sum(ok for _, _, ok, _ in rows)
    heard = [ok for _, _, ok, heard in rows if heard]
    audio, token = [r[0] for r in rows], [r[1] for r in rows]
    return (f"| {profile} | {language} | {100 * answered / asked:.0f} % ({answered}/{asked}) | "
            f"{sum(heard)}/{len(heard)} | "
            f"{statistics.median(token):.0f} / {percentile(token, 0.95):.0f} ms | "
            f"{statistics.median(audio):.0f} / {percentile(audio, 0.95):.0f} ms |")


async def run(profiles: list[str], languages: list[str], japanese_voice: str) -> None:
    timings = TimingsCollector()
    server_log = logging.getLogger("koe.local")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(timings)
    server_log.propagate = False
    japanese = get_japanese_models() if "ja" in languages else None
    lines = []
    for name in profiles:
        models = warm(reply_model=name)
        server = LocalServer(port=0, models=models).start()
        print(f"{name}: {PROFILES[name].model}")
        try:
            if "en" in languages:
                print("  English (Whisper tiny.en, Piper joe):")
                settings = SessionSettings(instructions=PRESETS["Helpful assistant"], voice="alloy", max_output_tokens=60)
                rows = await ask(server, settings, ENGLISH, models.tts.synthesize, timings)
                lines.append(summary(name, "English", len(ENGLISH), rows))
            if japanese is not None:
                print(f"  Japanese (Whisper base, voice {japanese_voice}):")
                settings = SessionSettings(instructions=JAPANESE_INSTRUCTIONS, voice=japanese_voice, max_output_tokens=60,
                                           transcription=TranscriptionSettings(language="ja"))
                rows = await ask(server, settings, JAPANESE, japanese_caller(japanese), timings)
                lines.append(summary(name, f"Japanese ({japanese_voice})", len(JAPANESE), rows))
        finally:
            server.stop()
    print("\n| profile | language | answered right | right where heard right | first token p50 / p95 | "
          "first audio at the client p50 / p95 |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))
    print("(latencies from speech_stopped; goals: English >= 90 % and <= 1000 ms, Japanese >= 70 % and <= 1200 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--languages", default="en,ja", help="comma-separated: en, ja (default: %(default)s)")
    parser.add_argument("--japanese-voice", default=DEFAULT_JAPANESE_VOICE, choices=JAPANESE_VOICES)
    args = parser.parse_args()
    profiles = args.profiles.split(",")
    if unknown := [p for p in profiles if p not in PROFILES]:
        parser.error(f"unknown profile(s) {unknown}: choose from {', '.join(PROFILES)}")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(profiles, args.languages.split(","), args.japanese_voice))


if __name__ == "__main__":
    main()
