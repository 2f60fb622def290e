"""Is the user's utterance complete? Smart Turn v3.2 (pipecat-ai, BSD-2-Clause) over onnxruntime.

The model reads the last 8 s of 16 kHz audio (shorter audio is left-padded with zeros) as Whisper's
80-bin log-mel features of a waveform normalised to zero mean and unit variance ([1, 80, 800]),
and returns the probability that the speaker has finished their turn (pipecat: complete above 0.5;
how Koe uses it: turns.SemanticVadDetector). It was trained on 23 languages, English and Japanese
among them. The features come from faster-whisper's numpy extractor, which Koe already loads for
speech to text; a test checks them against the extractor pipecat ships beside the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

from koe.local.stages.assets import SMART_TURN_SHA256, smart_turn_onnx_path
from koe.local.stages.joined import verified

RATE = 16_000
WINDOW_S = 8
_NORM_EPS = 1e-7


class TurnModel:
    """The ONNX session, shared by every call: InferenceSession.run is thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        """Load the bundled model, or the file at `path`; either must have the pinned SHA-256.

        Raises FileNotFoundError (package missing), RuntimeError (a different file).
        """
        path = verified(path or smart_turn_onnx_path(), SMART_TURN_SHA256)
        options = ort.SessionOptions()
        # One thread: a decision takes ~25 ms on one core here, and speech to text needs the other.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_features"]:
            raise ValueError(f"unexpected Smart Turn ONNX inputs {names}; expected ['input_features'] (v3)")
        self._features = FeatureExtractor(feature_size=80, sampling_rate=RATE, hop_length=160,
                                          chunk_length=WINDOW_S, n_fft=400)

    def features(self, audio16k: np.ndarray) -> np.ndarray:
        """The model's input for float32 16 kHz mono audio: [1, 80, 800] float32."""
        samples = WINDOW_S * RATE
        audio = np.asarray(audio16k, dtype=np.float32).reshape(-1)[-samples:]
        audio = np.pad(audio, (samples - audio.size, 0))  # the model was trained on left-padded audio
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + _NORM_EPS)
        return self._features(audio, padding=0)[np.newaxis].astype(np.float32)

    def probability(self, audio16k: np.ndarray) -> float:
        """The probability (0..1) that the utterance in the audio is complete."""
        logits = self.session.run(None, {"input_features": self.features(audio16k)})[0]
        return float(logits[0, 0])  # the exported graph ends in a sigmoid already
