"""Audio as the WebSocket transport carries it: base64 in the session's format.

Formats (beta names; GA writes the same as `audio/pcm` at 24 kHz, `audio/pcmu`, `audio/pcma`):
`pcm16` is 16-bit little-endian mono at 24 kHz; `g711_ulaw` and `g711_alaw` are G.711 at 8 kHz.
G.711 goes through FFmpeg's codecs (PyAV), not a hand-written table.
"""

from __future__ import annotations

import base64
import binascii

import av
import numpy as np

from koe.audio import RATE, Resampler, mono_to_frame, resample
from koe.protocol import AudioFormat

RATES: dict[str, int] = {"pcm16": 24_000, "g711_ulaw": 8_000, "g711_alaw": 8_000}
_CODECS = {"g711_ulaw": "pcm_mulaw", "g711_alaw": "pcm_alaw"}


def _g711(fmt: str, mode: str) -> av.CodecContext:
    codec = av.CodecContext.create(_CODECS[fmt], mode)
    codec.sample_rate = RATES[fmt]
    codec.layout = "mono"
    if mode == "w":
        codec.format = "s16"
    return codec


def decode(audio_b64: str, fmt: AudioFormat) -> np.ndarray:
    """The int16 mono samples (at `RATES[fmt]`) of one `input_audio_buffer.append`.

    Raises ValueError when `audio_b64` is not base64 (or pcm16 with an odd byte count).
    """
    try:
        raw = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"audio is not valid base64: {exc}") from None
    if fmt == "pcm16":
        if len(raw) % 2:
            raise ValueError("pcm16 audio must be whole 16-bit samples (an even number of bytes)")
        return np.frombuffer(raw, "<i2").astype(np.int16)
    if not raw:
        return np.zeros(0, np.int16)
    frames = _g711(fmt, "r").decode(av.Packet(raw))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def encode(pcm48k: np.ndarray, fmt: AudioFormat) -> str:
    """A whole clip of reply audio (int16 mono 48 kHz) as base64 in `fmt`."""
    samples = resample(pcm48k, RATE, RATES[fmt])
    if fmt == "pcm16":
        return base64.b64encode(samples.astype("<i2").tobytes()).decode()
    codec = _g711(fmt, "w")
    packets = [*codec.encode(mono_to_frame(samples, 0, RATES[fmt])), *codec.encode(None)]
    return base64.b64encode(b"".join(bytes(p) for p in packets)).decode()


class InputDecoder:
    """Appended audio in a session's input format → 16 kHz int16, the rate turn detection runs at.

    Streaming: the resampler keeps its state between appends, and starts afresh when the format
    changes.
    """

    def __init__(self, out_rate: int) -> None:
        self._out_rate = out_rate
        self._fmt: str | None = None
        self._resampler: Resampler | None = None

    def __call__(self, audio_b64: str, fmt: AudioFormat) -> np.ndarray:
        samples = decode(audio_b64, fmt)
        if fmt != self._fmt:
            self._fmt, self._resampler = fmt, Resampler(self._out_rate, RATES[fmt])
        return self._resampler(samples) if samples.size else samples
