"""One-shot sample-rate conversion of whole clips (swresample through PyAV).

Streams use koe.audio.Resampler; a whole clip also needs the resampler's tail flushed, or its
last few milliseconds are lost.
"""

from __future__ import annotations

import av
import numpy as np


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """int16 mono samples at src_rate as int16 mono samples at dst_rate."""
    samples = np.ascontiguousarray(samples, dtype=np.int16)
    if src_rate == dst_rate or samples.size == 0:
        return samples
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = src_rate
    frames = list(resampler.resample(frame)) + list(resampler.resample(None))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1), the form VAD and Whisper take."""
    return samples.astype(np.float32) / 32768.0
