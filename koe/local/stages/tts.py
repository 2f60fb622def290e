"""Text-to-speech with Piper (the bundled "joe" US English voice), as 48 kHz int16 for WebRTC."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from piper import PiperConfig, PiperVoice, SynthesisConfig

from koe.local.scheduler import model_threads
from koe.local.stages.assets import piper_joe_paths
from koe.audio import resample, trimmed

OUTPUT_RATE = 48_000
VOICE = "joe"
LEAD_LEVEL = 100  # int16 peak (about -50 dBFS) below which the start of Piper's output is silence
LEAD_MS = 10  # kept before the first sound, so its attack is not cut


class Speaker:
    """One Piper voice shared by all sessions; a lock guards espeak-ng's global phonemizer state.

    `variation` (default True) keeps Piper's sampled noise, which gives each rendition its own natural
    prosody; False turns it off so that the same text always gives the same samples, which makes what
    tests and benchmarks hear repeatable (a test that fails once fails again, on any machine).
    """

    def __init__(self) -> None:
        self.variation = True
        onnx, config = piper_joe_paths()
        options = ort.SessionOptions()  # Piper's own load would take every core
        options.intra_op_num_threads, options.inter_op_num_threads = model_threads(), 1
        self._voice = PiperVoice(session=ort.InferenceSession(str(onnx), sess_options=options,
                                                              providers=["CPUExecutionProvider"]),
                                 config=PiperConfig.from_dict(json.loads(Path(config).read_text(encoding="utf-8"))))
        self._lock = threading.Lock()

    def voices(self) -> list[str]:
        return [VOICE]

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """The speech for text as int16 mono at 48 kHz; empty when there is nothing to say."""
        if not any(ch.isalnum() for ch in text):
            return np.zeros(0, np.int16)  # blank or punctuation only: piper would say nothing or fail
        # The voice's own pace scaled by the speed: higher speed, shorter phonemes.
        steady = None if self.variation else 0.0  # None: the voice's own noise scales
        config = SynthesisConfig(length_scale=self._voice.config.length_scale / speed, noise_scale=steady,
                                 noise_w_scale=steady)
        with self._lock:
            chunks = list(self._voice.synthesize(text, syn_config=config))
        if not chunks:
            return np.zeros(0, np.int16)
        audio = np.concatenate([chunk.audio_int16_array for chunk in chunks])
        # Piper starts with 20-80 ms of near silence: cut, the first sound of a reply is heard that much sooner.
        return trimmed(resample(audio, chunks[0].sample_rate, OUTPUT_RATE), LEAD_LEVEL, OUTPUT_RATE * LEAD_MS // 1000)
