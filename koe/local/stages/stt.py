"""Speech-to-text with Whisper (faster-whisper / CTranslate2, int8 on the CPU)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from koe.local.scheduler import model_threads
from koe.local.stages.assets import whisper_tiny_en_dir

# Whisper can loop on unclear audio: bound the text by the audio's length (Japanese needs ~6 tokens a
# second, English ~4), never under what a short turn needs nor over Whisper's own window.
MIN_NEW_TOKENS = 48
TOKENS_PER_SECOND = 10
MAX_NEW_TOKENS = 224

# faster-whisper logs every call at INFO ("Processing audio with duration ..."): once per turn is noise.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class Transcriber:
    """One Whisper model shared by all sessions, computing with `model_threads()`; a lock serialises calls
    (two would halve each; koe.local's scheduler runs one at a time anyway)."""

    def __init__(self, model_dir: Path | None = None) -> None:
        self._model = WhisperModel(str(model_dir or whisper_tiny_en_dir()), device="cpu",
                                   compute_type="int8", cpu_threads=model_threads(), local_files_only=True)
        self._lock = threading.Lock()

    def transcribe(self, audio16k: np.ndarray, language: str | None = "en") -> str:
        """The text of float32 16 kHz mono audio; "" for none."""
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return ""
        if not self._model.model.is_multilingual:
            language = "en"  # an English-only model: skip detection and faster-whisper's warning
        with self._lock:
            segments, _ = self._model.transcribe(
                audio, language=language, beam_size=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
                max_new_tokens=_token_budget(audio.size / 16_000))
            # Segments are generated lazily: decode while holding the lock.
            text = "".join(segment.text for segment in segments)
        return text.strip()


def _token_budget(seconds: float) -> int:
    return min(MAX_NEW_TOKENS, max(MIN_NEW_TOKENS, round(seconds * TOKENS_PER_SECOND)))
