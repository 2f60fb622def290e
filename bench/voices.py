"""How intelligible and how fast each bundled voice is: a round trip TTS → Whisper per voice.

    .venv/bin/python bench/voices.py [--repeats 3]

Every voice the local backend ships (Piper's English "joe"; in Japanese OpenJTalk's "mei" and Kokoro's five)
says a fixed set of sentences; Whisper base (as the server uses it, for every language)
writes down what it heard. Per voice it prints the character error rate (jiwer's CER, after dropping
punctuation and spaces, lower case), the real-time factor (synthesis time / audio duration, median over the
repeats), and the time to make the first clause of a two-clause sentence (what a listener waits for).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jiwer  # noqa: E402
import pyopenjtalk  # noqa: E402

from koe.audio import resample, to_float32  # noqa: E402
from koe.local.stages.models import get_japanese_models, get_models  # noqa: E402
from koe.local.stages.tts import OUTPUT_RATE  # noqa: E402
from koe.local.voices import JAPANESE_VOICES  # noqa: E402

ENGLISH = [
    "What is the capital of France?",
    "The capital of France is Paris.",
    "Spiders have eight legs, and insects have six.",
    "Please count from one to five.",
]
JAPANESE = [
    "東京駅までの行き方を教えてください。",
    "日本で一番高い山は富士山です。",
    "今日の天気はどうですか？",
    "おすすめの本を教えてください。",
]
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
FIRST_CLAUSE = {"en": "Sure, the capital of France is Paris.", "ja": "はい、日本の首都は東京です。"}


def normalized(text: str) -> str:
    """Characters that carry words: no punctuation or spaces, lower case, full-width digits as ASCII."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def reading(text: str) -> str:
    """How Japanese text is read, in katakana (OpenJTalk's reading), normalized; "" for text with none."""
    return normalized(pyopenjtalk.g2p(text, kana=True)) if _JAPANESE.search(text) else ""


def measure(synthesize, transcribe, sentences: list[str], first_clause: str, repeats: int) -> tuple[float, float, float, list[str]]:
    """(CER, median real-time factor, median ms to the first clause, what was heard)."""
    rtfs, heard = [], []
    for sentence in sentences:
        for _ in range(repeats):
            started = time.perf_counter()
            pcm = synthesize(sentence)
            rtfs.append((time.perf_counter() - started) / (pcm.size / OUTPUT_RATE))
        heard.append(transcribe(to_float32(resample(pcm, OUTPUT_RATE, 16_000))))
    cer = jiwer.cer([normalized(s) for s in sentences], [normalized(h) or "-" for h in heard])
    clause = first_clause.split(",")[0].split("、")[0]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        synthesize(clause)
        times.append(1000 * (time.perf_counter() - started))
    return cer, statistics.median(rtfs), statistics.median(times), heard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="syntheses per sentence, for the timing medians")
    args = parser.parse_args()
    models, japanese = get_models(), get_japanese_models()
    rows = []
    english = measure(models.tts.synthesize, lambda a: models.stt.transcribe(a, "en"), ENGLISH, FIRST_CLAUSE["en"],
                      args.repeats)
    rows.append(("joe (Piper, English)", *english))
    for voice in JAPANESE_VOICES:
        japanese.tts.prepare(voice)
        kind = "OpenJTalk HTS" if voice == "mei" else "Kokoro-82M"
        result = measure(lambda text, v=voice: japanese.tts.synthesize(text, voice=v),
                         lambda a: models.stt.transcribe(a, "ja"), JAPANESE, FIRST_CLAUSE["ja"], args.repeats)
        rows.append((f"{voice} ({kind}, Japanese)", *result))
    for name, cer, _, _, heard in rows:
        print(f"{name}: heard {heard}")
    print("\n| voice | round-trip CER (Whisper) | real-time factor | first clause |")
    print("| --- | --- | --- | --- |")
    for name, cer, rtf, first, _ in rows:
        print(f"| {name} | {100 * cer:.1f} % | {rtf:.3f} | {first:.0f} ms |")


if __name__ == "__main__":
    main()
