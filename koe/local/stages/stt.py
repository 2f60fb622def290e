"""Speech-to-text with Whisper base (multilingual; faster-whisper / CTranslate2, int8 on the CPU), for every language."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from koe.local.scheduler import model_threads
from koe.local.stages.assets import whisper_base_dir

# Whisper can loop on unclear audio: bound the text by the audio's length (Japanese needs ~6 tokens a
# second, English ~4), never under what a short turn needs nor over Whisper's own window.
MIN_NEW_TOKENS = 48
TOKENS_PER_SECOND = 10
MAX_NEW_TOKENS = 224

# Whisper's encoder always reads 30 s (3000 mel frames, 100 a second), padding a 2 s question with 28 s
# of silence; its cost grows faster than the window. A shorter window (whisper.cpp's `audio_ctx`) keeps
# the text of short turns (bench/stt_window.py) as long as it stays well past the speech: tighter ones
# made Whisper repeat the sentence to fill the window.
FULL_WINDOW_FRAMES = 3000
FRAMES_PER_SECOND = 100
WINDOW_MARGIN_S = 2.0
# 15 s kept Whisper base's text (10 s began to repeat words in English) and made the transcript of a short
# question 3-4x cheaper, so it is ready when semantic_vad's turn model first asks (200 ms into the silence).
# English uses base too: with this window it is cheaper than tiny.en reading 30 s (p50 172 vs 299 ms a
# question, bench/stt_window.py) and hears names tiny.en did not ("Romeo and Juliet", not "Romino").
WINDOW_S = 15.0
# Whisper's own fallback (openai-whisper's and faster-whisper's defaults): a greedy text that repeats itself
# (gzip ratio > 2.4) or is unsure (mean log-probability < -1) is decoded again, sampling at rising
# temperatures, from the same encoder output. Greedy alone looped on OpenJTalk's "mei" asking
# 太陽系で一番大きい惑星は何ですか (大きい大きい大きい…); the fallback costs nothing on the turns that pass.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

# faster-whisper logs every call at INFO ("Processing audio with duration ..."): once per turn is noise.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class _WindowedWhisper(WhisperModel):
    """faster-whisper's model whose encoder reads only the first `frames` mel frames (None: all 3000)."""

    frames: int | None = None

    def encode(self, features: np.ndarray):
        if self.frames is not None:
            features = features[..., :self.frames]
        return super().encode(features)


class Transcriber:
    """One Whisper model shared by all sessions and languages, computing with `model_threads()`; a lock
    serialises calls (two would halve each; koe.local's scheduler runs one at a time anyway).

    `model_dir`: a CTranslate2 Whisper model (default: Whisper base, joined into the cache on first use).
    `window_s` (settable): the least audio Whisper's encoder reads, in seconds (the turn plus WINDOW_MARGIN_S
    when longer, at most Whisper's 30 s); None reads the full 30 s window, as Whisper was trained.
    `temperatures`: the decoding temperatures tried in turn (FALLBACK_TEMPERATURES; (0.0,) decodes greedily only).
    """

    def __init__(self, model_dir: Path | None = None, window_s: float | None = WINDOW_S,
                 temperatures: tuple[float, ...] = FALLBACK_TEMPERATURES) -> None:
        self._model = _WindowedWhisper(str(model_dir or whisper_base_dir()), device="cpu",
                                       compute_type="int8", cpu_threads=model_threads(), local_files_only=True)
        self.window_s = window_s
        self.temperatures = temperatures
        self._lock = threading.Lock()

    def transcribe(self, audio16k: np.ndarray, language: str | None = "en") -> str:
        """The text of float32 16 kHz mono audio in `language` (ISO 639-1; None: detected); "" for none."""
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return ""
        if not self._model.model.is_multilingual:
            language = "en"  # an English-only model: skip detection and faster-whisper's warning
        seconds = audio.size / 16_000
        with self._lock:
            self._model.frames = _window_frames(seconds, self.window_s)
            # With timestamps, as Whisper was trained: without them, a turn with a pause in it ("I'd like to
            # order" … 1 s … "a large pizza, please.") ended at the pause in 5 of 20 renditions (Whisper base):
            # the rest of the words were lost. They cost ~10 % more time.
            segments, _ = self._model.transcribe(
                audio, language=language, beam_size=1, temperature=self.temperatures,
                condition_on_previous_text=False, without_timestamps=False, vad_filter=False,
                max_new_tokens=_token_budget(seconds))
            # Segments are generated lazily: decode while holding the lock.
            text = "".join(segment.text for segment in segments)
        return text.strip()


def _window_frames(seconds: float, window_s: float | None) -> int | None:
    """The encoder's window in mel frames for `seconds` of audio (an even count: the encoder halves it)."""
    if window_s is None:
        return None
    frames = 2 * math.ceil(max(window_s, seconds + WINDOW_MARGIN_S) * FRAMES_PER_SECOND / 2)
    return None if frames >= FULL_WINDOW_FRAMES else frames


def _token_budget(seconds: float) -> int:
    return min(MAX_NEW_TOKENS, max(MIN_NEW_TOKENS, round(seconds * TOKENS_PER_SECOND)))
