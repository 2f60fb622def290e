"""Silero VAD (v5/v6 ONNX) over onnxruntime, without torch.

At 16 kHz the model takes 512 new samples plus the previous 64 as context ([1, 576]), a
recurrent state [2, 1, 128] and the rate; it returns a speech probability and the next state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from koe.local.stages.assets import silero_onnx_path

RATE = 16_000
CHUNK = 512  # samples per probability (32 ms)
CONTEXT = 64


class SileroModel:
    """The ONNX session, shared by all streams: InferenceSession.run is thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        options = ort.SessionOptions()
        # One thread: a 32 ms chunk is far too small to gain from more, and STT/LLM need the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path or silero_onnx_path()), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"unexpected Silero ONNX inputs {sorted(names)}; expected v5/v6 (input, state, sr)")
        self._sr = np.array(RATE, dtype=np.int64)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One step on a [1, 576] window; returns the probability and the next state."""
        prob, next_state = self.session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(prob[0, 0]), next_state


class VadStream:
    """One audio stream's VAD: the model's state, the context samples and any partial chunk."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def chunks(self, pcm16k: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Each complete 512-sample chunk (float32, 16 kHz) with its speech probability.

        A remainder under 512 samples waits for the next call.
        """
        audio = np.concatenate([self._pending, np.asarray(pcm16k, dtype=np.float32).reshape(-1)])
        whole = audio.size - audio.size % CHUNK
        self._pending = audio[whole:]
        out: list[tuple[np.ndarray, float]] = []
        for start in range(0, whole, CHUNK):
            chunk = audio[start : start + CHUNK]
            window = np.concatenate([self._context, chunk]).reshape(1, -1)
            prob, self._state = self._model.run(window, self._state)
            self._context = chunk[-CONTEXT:]
            out.append((chunk, prob))
        return out

    def probabilities(self, pcm16k: np.ndarray) -> list[float]:
        return [prob for _, prob in self.chunks(pcm16k)]
