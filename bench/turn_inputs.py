"""What the turn model is shown: Koe's input against pipecat's own, on the project's TTS speech.

    .venv/bin/python bench/turn_inputs.py [--languages en,ja]

The oracle is pipecat's own code path for Smart Turn v3.2, from the wheel: its numpy feature
extractor (`_whisper_features.compute_whisper_log_mel_features`) and the bundled ONNX file, on the
segment pipecat's `BaseSmartTurn` would cut: from 0.5 s (`pre_speech_ms`) before the speech to the
moment its VAD reports the user stopped, `stop_secs` = 0.2 s (pipecat's `VAD_STOP_SECS`, the value
its Smart Turn analyzers assume) after the last voiced sample; left-padded with zeros to 8 s.
Koe's path is the session's own: Silero over the audio, the turn detector's events, the turn model
on the audio each asks about.

Per utterance it prints the probability that the speaker has finished from pipecat's path and from
Koe's (its asks at 200 and 400 ms of silence, as SemanticVadDetector makes them; a complete answer
ends the asking), and (to show what the model keys on) the oracle's probability with 0 / 0.1 / 0.2 / 0.4 / 0.8 s
of silence after the speech. Utterances: complete questions, and sentences cut at their comma (the
words a pausing speaker has said when the silence begins), in English (Piper joe) and Japanese
(the project's Japanese voices: Kokoro jf_alpha and OpenJTalk mei).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.engine_latency import JAPANESE_UTTERANCES  # noqa: E402
from bench.turns import ENGLISH_PAUSED, JAPANESE_PAUSED  # noqa: E402
from koe.audio import RATE, resample, to_float32  # noqa: E402
from koe.client.simulated_user import QUESTIONS, trim_silence, with_pause  # noqa: E402
from koe.local.stages.assets import package_dir  # noqa: E402
from koe.local.stages.turn_model import TurnModel  # noqa: E402
from koe.local.stages.turns import SemanticVadDetector, TurnQuestion  # noqa: E402
from koe.local.stages.vad import SileroModel, VadStream  # noqa: E402

M = 16_000
PIPECAT_PRE_SPEECH_S = 0.5  # SmartTurnParams.pre_speech_ms
PIPECAT_STOP_S = 0.2  # VADParams.stop_secs (VAD_STOP_SECS)
TRAILING_S = (0.0, 0.1, 0.2, 0.4, 0.8)


def pipecat_features():
    """pipecat's feature extractor, loaded from the wheel by path (its package __init__ needs pipecat's deps)."""
    path = package_dir("pipecat") / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_whisper_log_mel_features


def oracle(model: TurnModel, extract, speech16k: np.ndarray, trailing_s: float) -> float:
    """pipecat's LocalSmartTurnAnalyzerV3._predict_endpoint on pipecat's segment of `speech16k`."""
    segment = np.concatenate([np.zeros(int(PIPECAT_PRE_SPEECH_S * M), np.float32), speech16k,
                              np.zeros(int(trailing_s * M), np.float32)])[-8 * M:]
    segment = np.pad(segment, (8 * M - segment.size, 0))  # truncate_audio_to_last_n_seconds
    features = extract(segment, do_normalize=True)[np.newaxis]
    return float(model.session.run(None, {"input_features": features})[0][0, 0])


def koe_asks(model: TurnModel, vad: SileroModel, speech16k: np.ndarray, eagerness: str) -> list[float]:
    """The probabilities Koe's server computes for this speech followed by 3 s of silence."""
    audio = np.concatenate([np.zeros(M // 2, np.float32), speech16k, np.zeros(3 * M, np.float32)])
    detector, asked = SemanticVadDetector(eagerness), []
    for chunk, prob in VadStream(vad).chunks(audio):
        for event in detector.feed(chunk, prob):
            if isinstance(event, TurnQuestion):
                asked.append(model.probability(event.audio))
                detector.verdict(event, asked[-1])
    return asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", default="en,ja")
    parser.add_argument("--eagerness", default="low", help="low: every ask is made (default)")
    args = parser.parse_args()
    model, vad, extract = TurnModel(), SileroModel(), pipecat_features()
    sets = []
    if "en" in args.languages:
        from koe.local.stages.tts import Speaker
        piper = Speaker()
        sets.append(("en piper joe", piper.synthesize, QUESTIONS, ENGLISH_PAUSED))
    if "ja" in args.languages:
        from koe.local.stages.tts_ja import JapaneseSpeaker
        japanese = JapaneseSpeaker()
        for voice in ("jf_alpha", "mei"):
            sets.append((f"ja {voice}", lambda text, v=voice: japanese.synthesize(text, voice=v),
                         JAPANESE_UTTERANCES, JAPANESE_PAUSED))
    print("P(complete): pipecat's path (0.2 s after the speech) | Koe's asks | pipecat's path with "
          + " / ".join(f"{s:.1f}" for s in TRAILING_S) + " s of silence after the speech")
    for name, speak, complete, paused in sets:
        rows = [("complete", text, trim_silence(speak(text))) for text in complete]
        for text in paused:  # the words before the comma: what has been said when the pause begins
            whole = trim_silence(speak(text))
            head = with_pause(whole, 1.0)[0][: round((with_pause(whole, 1.0)[1] - 1.0) * 48_000)]
            rows.append(("cut", text.split("、")[0].split(",")[0] + "…", trim_silence(head)))
        print(f"\n{name}")
        summary: dict[str, list[tuple[float, float]]] = {"complete": [], "cut": []}
        for kind, text, speech in rows:
            speech16k = to_float32(resample(speech, 48_000, M))
            ours = koe_asks(model, vad, speech16k, args.eagerness)
            theirs = oracle(model, extract, speech16k, PIPECAT_STOP_S)
            sweep = [oracle(model, extract, speech16k, s) for s in TRAILING_S]
            summary[kind].append((theirs, ours[0] if ours else float("nan")))
            print(f"  {kind:8s} {theirs:5.2f} | {' '.join(f'{p:.2f}' for p in ours):18s} | "
                  f"{' '.join(f'{p:.2f}' for p in sweep)}  {text}")
        for kind, pairs in summary.items():
            said = sum(p > 0.5 for p, _ in pairs), sum(q > 0.5 for _, q in pairs)
            print(f"  {kind}: pipecat's path calls {said[0]}/{len(pairs)} complete, Koe's first ask {said[1]}/"
                  f"{len(pairs)}; median P {statistics.median(p for p, _ in pairs):.2f} vs "
                  f"{statistics.median(q for _, q in pairs):.2f}")


if __name__ == "__main__":
    main()
