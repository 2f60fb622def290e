"""Whether the bundled reply models answer right, and how fast, through the running local server.

    .venv/bin/python bench/answers.py [--profiles fast,default] [--languages en,ja] [--japanese-voice mei]
        [--japanese-stt-windows 15,full] [--japanese-stt-decodings fallback,greedy] [--caller-voices jf_alpha,jm_kumo]

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

from bench.engine_latency import CALLER_VOICE, JAPANESE_INSTRUCTIONS, conversation, japanese_caller  # noqa: E402
from bench.figures import TimingsCollector, percentile  # noqa: E402
from bench.voices import normalized, reading  # noqa: E402
from koe.local import LocalServer  # noqa: E402
from koe.local.stages.llm import PROFILES  # noqa: E402
from koe.local.stages.models import get_japanese_models, warm  # noqa: E402
from koe.local.stages.stt import FALLBACK_TEMPERATURES, WINDOW_S  # noqa: E402
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
    ("空は何色ですか？", ("青", "あお", "ブルー", "blue")),
    ("蜂は何を作りますか？", ("蜂蜜", "はちみつ", "ハチミツ", "蜜を作", "蜜です", "honey")),
    ("太陽系で一番大きい惑星は何ですか？", ("木星", "もくせい", "jupiter")),
    ("こんにちは、元気ですか？", ("元気", "ありがとう", "はい")),
    # A fruit by name (果物 itself is the question's word, not an answer).
    ("朝ごはんにおすすめの果物は何ですか？", ("バナナ", "りんご", "リンゴ", "林檎", "いちご", "イチゴ", "苺", "みかん", "蜜柑",
                                   "オレンジ", "ぶどう", "ブドウ", "キウイ", "桃", "メロン", "梨", "マンゴー",
                                   "ブルーベリー", "グレープフルーツ", "パイナップル", "柿")),
]


# Whisper's decodings a run can compare: its temperature fallback (shipped) and greedy decoding alone.
DECODINGS = {"fallback": FALLBACK_TEMPERATURES, "greedy": (0.0,)}

# What the caller says where OpenJTalk, which reads its Japanese, would misread the question (何色: なんしょく).
SPOKEN = {"空は何色ですか？": "空はなにいろですか？"}


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
    """Whether speech to text got the question: at most 10 % of its characters wrong, or every sound right
    (Japanese written in other characters: 一週間 / 1週間, 果物 / くだもの; but not 蜂 / はじ)."""
    if jiwer.cer(normalized(question), normalized(heard) or "-") <= 0.1:
        return True
    return reading(question) != "" and reading(question) == reading(heard)


async def ask(server: LocalServer, settings: SessionSettings, questions: list[tuple[str, tuple[str, ...]]], speak,
              timings: TimingsCollector) -> list[tuple[float, float, bool, bool, str]]:
    """Each question in one call; per answered turn (first audio ms at the client, first token ms, answered
    right, heard right, reply prompt tokens "evaluated/in all")."""
    rows = await conversation(server, settings, [q for q, _ in questions], speak, timings, len(questions))
    expected = dict(questions)
    results = []
    for row in rows:
        ok, heard = right(row[5], expected[row[6]], row[4]), heard_right(row[6], row[4])
        print(f"    {'RIGHT' if ok else 'wrong'}  {row[0]:5.0f} ms  prompt {row[7]:>7}  heard {row[4]!r}"
              f"{'' if heard else ' (misheard)'} -> {row[5]!r}")
        results.append((row[0], row[2], ok, heard, row[7]))
    return results


def summary(profile: str, language: str, asked: int, rows: list[tuple[float, float, bool, bool, str]]) -> str:
    if not rows:
        return f"| {profile} | {language} | 0/{asked} | – | – | – | – |"
    answered = sum(r[2] for r in rows)
    heard = [r[2] for r in rows if r[3]]
    audio, token = [r[0] for r in rows], [r[1] for r in rows]
    # Turns after the first: what llama.cpp's prompt cache left to evaluate of the whole conversation.
    later = [r[4].split("/") for r in rows[1:] if r[4] != "-"]
    evaluated = (f"{statistics.median(int(e) for e, _ in later):.0f} of {statistics.median(int(a) for _, a in later):.0f}"
                 if later else "–")
    return (f"| {profile} | {language} | {100 * answered / asked:.0f} % ({answered}/{asked}) | "
            f"{sum(heard)}/{len(heard)} | "
            f"{statistics.median(token):.0f} / {percentile(token, 0.95):.0f} ms | "
            f"{statistics.median(audio):.0f} / {percentile(audio, 0.95):.0f} ms | {evaluated} |")


async def run(profiles: list[str], languages: list[str], japanese_voice: str, windows: list[str],
              callers: list[str], decodings: list[str]) -> None:
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
                print("  English (Whisper base, Piper joe):")
                settings = SessionSettings(instructions=PRESETS["Helpful assistant"], voice="alloy", max_output_tokens=60)
                rows = await ask(server, settings, ENGLISH, models.tts.synthesize, timings)
                lines.append(summary(name, "English", len(ENGLISH), rows))
            variants = [(w, d, v) for w in windows for d in decodings for v in callers]
            for window, decoding, voice in variants if japanese is not None else ():
                models.stt.window_s = None if window == "full" else float(window)
                models.stt.temperatures = DECODINGS[decoding]
                label = f"Japanese ({japanese_voice}, STT window {'30' if window == 'full' else window} s" \
                        + (f", {decoding}" if len(decodings) > 1 else "") \
                        + (f", asked by {voice})" if callers != [CALLER_VOICE] else ")")
                print(f"  {label}, Whisper base:")
                settings = SessionSettings(instructions=JAPANESE_INSTRUCTIONS, voice=japanese_voice, max_output_tokens=60,
                                           transcription=TranscriptionSettings(language="ja"))
                caller = japanese_caller(japanese, voice)
                rows = await ask(server, settings, JAPANESE, lambda text: caller(SPOKEN.get(text, text)), timings)
                lines.append(summary(name, label, len(JAPANESE), rows))
        finally:
            server.stop()
            models.stt.window_s, models.stt.temperatures = WINDOW_S, FALLBACK_TEMPERATURES
    print("\n| profile | language | answered right | right where heard right | first token p50 / p95 | "
          "first audio at the client p50 / p95 | prompt tokens evaluated per later turn, p50 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))
    print("(latencies from speech_stopped; goals: English >= 90 % and <= 1000 ms, Japanese >= 70 % and <= 1200 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--languages", default="en,ja", help="comma-separated: en, ja (default: %(default)s)")
    parser.add_argument("--japanese-voice", default=DEFAULT_JAPANESE_VOICE, choices=JAPANESE_VOICES)
    parser.add_argument("--japanese-stt-windows", default=f"{WINDOW_S:g}",
                        help="Whisper base's encoder window, seconds or 'full' (30 s); several, comma-separated, are "
                             "asked in turn in the same run (default: the shipped %(default)s)")
    parser.add_argument("--japanese-stt-decodings", default="fallback",
                        help=f"Whisper base's decoding, comma-separated: {', '.join(DECODINGS)}, asked in turn in the "
                             "same run (default: the shipped %(default)s)")
    parser.add_argument("--caller-voices", default=CALLER_VOICE,
                        help="the voice(s) that ask the Japanese questions, comma-separated, each in its own "
                             "call (default: %(default)s, the one Whisper base mishears most; see bench/voices.py)")
    args = parser.parse_args()
    callers = args.caller_voices.split(",")
    if unknown := [v for v in callers if v not in JAPANESE_VOICES]:
        parser.error(f"unknown caller voice(s) {unknown}: choose from {', '.join(JAPANESE_VOICES)}")
    decodings = args.japanese_stt_decodings.split(",")
    if unknown := [d for d in decodings if d not in DECODINGS]:
        parser.error(f"unknown decoding(s) {unknown}: choose from {', '.join(DECODINGS)}")
    profiles = args.profiles.split(",")
    if unknown := [p for p in profiles if p not in PROFILES]:
        parser.error(f"unknown profile(s) {unknown}: choose from {', '.join(PROFILES)}")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(profiles, args.languages.split(","), args.japanese_voice, args.japanese_stt_windows.split(","), callers,
                    decodings))


if __name__ == "__main__":
    main()
