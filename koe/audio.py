"""Audio plumbing shared by the client, the local server and the relay.

WebRTC audio here is 48 kHz; aiortc hands out 20 ms frames. Everything in between is int16 mono
numpy arrays, which keeps conversions in one place.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from typing import AsyncIterator, Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from koe.opus import PacketOut

RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
FRAME_SECONDS = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """An aiortc frame (s16, mono or interleaved stereo) as int16 mono samples."""
    samples = frame.to_ndarray().reshape(-1)
    channels = len(frame.layout.channels)
    if channels == 1:
        return samples.astype(np.int16, copy=False)
    return samples.reshape(-1, channels).mean(axis=1).astype(np.int16)


def mono_to_frame(samples: np.ndarray, pts: int, rate: int = RATE) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.int16, copy=False), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, rate)
    return frame


def rms_dbfs(samples: np.ndarray) -> float:
    """Level of int16 samples in dBFS (-100 for digital silence), for meters and silence checks."""
    if samples.size == 0:
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float32) / 32768.0))))
    return max(-100.0, 20.0 * np.log10(rms)) if rms > 0 else -100.0


def trimmed(pcm: np.ndarray, level: int, lead: int, tail: int | None = None) -> np.ndarray:
    """int16 `pcm` from `lead` samples before its first sample louder than `level` (peak), to `tail` samples
    after its last such sample (None: to the end); empty when no sample is that loud. For speech that a
    voice starts or ends with silence: the listener hears the first sound sooner."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    if loud.size == 0:
        return np.zeros(0, np.int16)
    end = pcm.size if tail is None else min(pcm.size, loud[-1] + tail)
    return pcm[max(0, loud[0] - lead):end]


class Resampler:
    """Streaming resampler (swresample through PyAV) of int16 mono samples, 48 kHz in by default."""

    def __init__(self, out_rate: int, in_rate: int = RATE) -> None:
        self._in_rate = in_rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._pts = 0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        frame = mono_to_frame(samples, self._pts, self._in_rate)
        self._pts += samples.size
        return self._join(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the filter still holds: the end of a whole clip."""
        return self._join(self._resampler.resample(None))

    @staticmethod
    def _join(frames: list[av.AudioFrame]) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(out) if out else np.zeros(0, np.int16)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """A whole int16 mono clip at another rate (its tail flushed, so no end is lost)."""
    samples = np.ascontiguousarray(samples, dtype=np.int16)
    if src_rate == dst_rate or samples.size == 0:
        return samples
    resampler = Resampler(dst_rate, src_rate)
    return np.concatenate([resampler(samples), resampler.flush()])


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1), the form VAD and Whisper take."""
    return samples.astype(np.float32) / 32768.0


async def frames(track: MediaStreamTrack) -> AsyncIterator[av.AudioFrame]:
    """Every frame a received track gives, until it ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        yield frame


class PcmQueueTrack(MediaStreamTrack):
    """An outgoing audio track fed with int16 mono 48 kHz samples, paced at real time.

    It sends silence when empty, so `pts` stays continuous. The queue is bounded: `write()` waits
    for room (a producer faster than real time, such as TTS), `push()` drops the oldest audio
    (a real-time producer whose clock runs fast must not build up standing delay). With `encode`,
    `recv` gives Opus packets it encoded itself (koe.opus.PacketOut, ~0.15 ms a frame) rather than
    frames: aiortc's sender would also measure each frame's level sample by sample in Python.
    """

    kind = "audio"

    def __init__(self, capacity_ms: int = 2000, on_drained: Callable[[], None] | None = None,
                 encode: bool = False) -> None:
        super().__init__()
        self.packets = PacketOut() if encode else None
        self._capacity = capacity_ms * RATE // 1000
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0
        self._room = asyncio.Event()
        self._room.set()
        self.on_drained = on_drained  # called when the queued audio has all been sent
        self._start: float | None = None
        self._pts = 0
        self.played_samples = 0  # queued (non-filler) samples sent so far

    @property
    def queued_ms(self) -> int:
        return self._queued * 1000 // RATE

    def push(self, samples: np.ndarray) -> None:
        self._append(samples)
        while self._queued > self._capacity and self._chunks:
            excess = self._queued - self._capacity
            head = self._chunks[0]
            if head.size <= excess:
                self._chunks.popleft()
                self._queued -= head.size
            else:
                self._chunks[0] = head[excess:]
                self._queued -= excess

    async def write(self, samples: np.ndarray) -> None:
        for start in range(0, samples.size, self._capacity // 2 or 1):
            part = samples[start : start + self._capacity // 2]
            while self._queued + part.size > self._capacity:
                self._room.clear()
                await self._room.wait()
            self._append(part)

    def clear(self) -> int:
        """Drop everything queued; returns how many milliseconds were dropped."""
        dropped = self.queued_ms
        self._chunks.clear()
        self._queued = 0
        self._room.set()
        return dropped

    def _append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples.astype(np.int16, copy=False))
            self._queued += samples.size

    def _take(self, n: int) -> tuple[np.ndarray, int]:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._chunks:
            head = self._chunks[0]
            k = min(n - filled, head.size)
            out[filled : filled + k] = head[:k]
            filled += k
            if k == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[k:]
        self._queued -= filled
        return out, filled

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._pts / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:
                # The loop stalled: resync instead of bursting stale frames.
                self._start = now - self._pts / RATE
        had_audio = self._queued > 0
        samples, filled = self._take(FRAME_SAMPLES)
        self.played_samples += filled
        if self._queued <= self._capacity // 2:
            self._room.set()
        if had_audio and self._queued == 0 and self.on_drained is not None:
            self.on_drained()
        frame = mono_to_frame(samples, self._pts)
        self._pts += FRAME_SAMPLES
        packet = self.packets.packet(frame, frame.pts) if self.packets is not None else None
        return packet if packet is not None else frame  # (a 20 ms frame always makes one packet)


class FrameQueueTrack(MediaStreamTrack):
    """Frames handed on as they come, for relaying one peer's audio into another.

    No pacing of its own: the producer's clock drives it, so it adds no delay and cannot drift.
    Bounded: when the consumer stalls, the oldest frames go. `pts` is restamped continuously, since
    the frames may come from different peers over the track's life. With `passthrough`, `recv` gives
    `av.Packet`s (each received frame's own Opus payload, see koe.opus) that the sender sends without
    encoding; without it, frames the sender encodes.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 10, passthrough: bool = False) -> None:
        super().__init__()
        self._frames: asyncio.Queue[av.AudioFrame] = asyncio.Queue(max_frames)
        self._pts = 0
        self.played_samples = 0
        self.packets = PacketOut() if passthrough else None  # None: frames go to the sender

    @property
    def queued_samples(self) -> int:
        return sum(frame.samples for frame in self._frames._queue)  # type: ignore[attr-defined]

    def put(self, frame: av.AudioFrame) -> None:
        if self._frames.full():
            self._frames.get_nowait()
        self._frames.put_nowait(frame)

    def clear(self) -> int:
        """Drop the frames not yet sent; returns how many samples were dropped."""
        dropped = self.queued_samples
        while not self._frames.empty():
            self._frames.get_nowait()
        return dropped

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            frame = await self._frames.get()
            pts = self._pts
            if self.packets is None:
                frame.pts, frame.time_base = pts, fractions.Fraction(1, frame.sample_rate)
                out = frame
            elif (out := self.packets.packet(frame, pts)) is None:
                continue
            self._pts += frame.samples
            self.played_samples += frame.samples
            return out
