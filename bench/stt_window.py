"""What Whisper's encoder window costs and keeps: the full 30 s against shorter windows, in one run.

    .venv/bin/python bench/stt_window.py [--windows full,10,15] [--decodings fallback,greedy]

Whisper's encoder reads 30 s of audio whatever the turn's length (a 2 s question is padded with 28 s of
silence); koe.local gives Whisper base a shorter window (`stt.WINDOW_S`: the turn plus a margin, at least
that long). For each window this prints, per voice that asks, the error rate of
the transcripts and the median time per transcript: the bench's Japanese questions and the engine
benchmark's utterances said by Kokoro jf_alpha and jm_kumo and OpenJTalk mei (Whisper base; error rate on
the reading in kana, so 一週間 / 1週間 is no error but 首都 / 種類 is), and the English ones said by Piper
joe, written by Whisper base (shipped) and by tiny.en (English's model before; character error rate). Windows alternate per sentence, so load falls on all alike.
Each clip is handed over as server_vad hands a turn to Whisper: 300 ms of silence before (its prefix padding)
and 500 ms after (its silence window). `--decodings` compares, in the same run, Whisper's temperature fallback
(`fallback`, shipped: stt.FALLBACK_TEMPERATURES) with greedy decoding alone (`greedy`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jiwer  # noqa: E402
import numpy as np  # noqa: E402

from bench.answers import DECODINGS, ENGLISH, JAPANESE  # noqa: E402
from bench.engine_latency import JAPANESE_UTTERANCES  # noqa: E402
from bench.voices import normalized, reading  # noqa: E402
from koe.audio import resample, to_float32  # noqa: E402
from koe.client.simulated_user import QUESTIONS  # noqa: E402
from koe.local.stages.assets import whisper_base_dir, whisper_tiny_en_dir  # noqa: E402
from koe.local.stages.models import get_japanese_models, get_models  # noqa: E402
from koe.local.stages.stt import Transcriber  # noqa: E402
from koe.local.stages.tts import OUTPUT_RATE  # noqa: E402


def window(name: str) -> float | None:
    return None if name == "full" else float(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="full,10,15", help="comma-separated: full or seconds (default: %(default)s)")
    parser.add_argument("--decodings", default="fallback", help=f"comma-separated: {', '.join(DECODINGS)} "
                        "(default: %(default)s)")
    args = parser.parse_args()
    if unknown := [d for d in args.decodings.split(",") if d not in DECODINGS]:
        parser.error(f"unknown decoding(s) {unknown}: choose from {', '.join(DECODINGS)}")
    # Every window with every decoding, alternating per sentence.
    windows = [(w, d) for w in args.windows.split(",") for d in args.decodings.split(",")]
    models, japanese = get_models(), get_japanese_models()
    ja_text = [q for q, _ in JAPANESE] + JAPANESE_UTTERANCES
    en_text = [q for q, _ in ENGLISH] + list(QUESTIONS)

    def clips(synthesize, texts):
        return [np.concatenate([np.zeros(4_800, np.float32), to_float32(resample(synthesize(t), OUTPUT_RATE, 16_000)),
                                np.zeros(8_000, np.float32)]) for t in texts]

    cases = []  # (label, texts, clips, model dir, language, score)
    for voice in ("jf_alpha", "jm_kumo", "mei"):
        japanese.tts.prepare(voice)
        cases.append((f"Japanese, {voice} (Whisper base, kana error rate)", ja_text,
                      clips(lambda t, v=voice: japanese.tts.synthesize(t, voice=v), ja_text), whisper_base_dir(), "ja",
                      reading))
    english = clips(models.tts.synthesize, en_text)
    for name, model_dir in (("base", whisper_base_dir()), ("tiny.en, before", whisper_tiny_en_dir())):
        cases.append((f"English, joe (Whisper {name}, character error rate)", en_text, english, model_dir, "en",
                      normalized))
    print("| who asks | window, decoding | error rate | transcript p50 |")
    print("| --- | --- | --- | --- |")
    for label, texts, audio, model_dir, language, score in cases:
        stt = {(w, d): Transcriber(model_dir, window(w), DECODINGS[d]) for w, d in windows}
        heard = {w: [] for w in windows}
        took = {w: [] for w in windows}
        for clip in audio:
            for w in windows:
                started = time.perf_counter()
                heard[w].append(stt[w].transcribe(clip, language))
                took[w].append(1000 * (time.perf_counter() - started))
        for w in windows:
            cer = jiwer.cer([score(t) for t in texts], [score(h) or "-" for h in heard[w]])
            print(f"| {label} | {'30 s (Whisper)' if w[0] == 'full' else w[0] + ' s'}, {w[1]} | {100 * cer:.1f} % | "
                  f"{statistics.median(took[w]):.0f} ms |", flush=True)
            wrong = [h for t, h in zip(texts, heard[w]) if score(t) != score(h)]
            print(f"    differs: {wrong}", file=sys.stderr)


if __name__ == "__main__":
    main()
