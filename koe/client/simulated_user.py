"""A scripted caller: speaks prepared audio into a call and records what comes back, with times.

Tests and benchmarks use it in place of a person at a browser.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

import av
import numpy as np
from aiortc import RTCIceServer

from koe.audio import RATE, PcmQueueTrack, frame_to_mono, rms_dbfs
from koe.client.connection import RealtimeConnection
from koe.client.signaling import Backend
from koe.protocol import ServerEvent, SessionSettings

# Short questions a small model answers in a sentence: the benchmarks' turns.
QUESTIONS = (
    "Please count from one to five.",
    "What is the capital of France?",
    "Tell me a fun fact about cats.",
    "How are you doing today?",
    "Name three colors of the rainbow.",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "Why is the sky blue?",
)
VOICE_DBFS = -45.0  # quieter than this counts as silence (Opus leaves a faint noise floor)
_FRAME = RATE // 100  # 10 ms: the resolution of the speech edits below


def _voiced(speech: np.ndarray) -> np.ndarray:
    """Per 10 ms of int16 48 kHz speech: is it louder than silence?"""
    frames = speech[: speech.size // _FRAME * _FRAME].reshape(-1, _FRAME)
    return np.array([rms_dbfs(frame) > VOICE_DBFS for frame in frames], dtype=bool)


def trim_silence(speech: np.ndarray) -> np.ndarray:
    """The speech (int16 mono 48 kHz) without its quiet start and end, so its end is the voice's end."""
    voiced = np.flatnonzero(_voiced(speech))
    return speech[voiced[0] * _FRAME : (voiced[-1] + 1) * _FRAME] if voiced.size else speech[:0]


def with_pause(speech: np.ndarray, pause_s: float) -> tuple[np.ndarray, float]:
    """A speaker who stops mid-sentence: the longest quiet stretch inside the speech (where a TTS voice
    breathes at a comma, keeping the sentence's unfinished melody) widened to `pause_s` of silence.

    Takes and returns int16 mono 48 kHz, with the seconds at which the speech resumes after the pause.
    Raises ValueError when the speech has no quiet stretch inside it.
    """
    voiced = _voiced(speech)
    inner = np.flatnonzero(voiced)
    runs, start = [], None  # (first, end) frame indexes of quiet runs between voiced frames
    for i in range(inner[0], inner[-1] + 1) if inner.size else ():
        if not voiced[i] and start is None:
            start = i
        elif voiced[i] and start is not None:
            runs.append((start, i))
            start = None
    if not runs:
        raise ValueError("the speech has no pause inside it to widen")
    first, end = max(runs, key=lambda run: run[1] - run[0])
    head = speech[: first * _FRAME]
    paused = np.concatenate([head, np.zeros(round(pause_s * RATE), np.int16), speech[end * _FRAME :]])
    return paused, head.size / RATE + pause_s


class SimulatedUser:
    def __init__(self, backend: Backend, settings: SessionSettings, *, ice_servers: list[RTCIceServer] | None = None,
                 keep_audio_s: float = 120.0) -> None:
        self.mic = PcmQueueTrack(capacity_ms=120_000)
        self.events: list[tuple[float, ServerEvent]] = []
        # (arrival time, samples) of each received frame; bounded like every buffer here.
        self.frames: deque[tuple[float, np.ndarray]] = deque(maxlen=int(keep_audio_s * 50))
        self.connection = RealtimeConnection(backend, settings, audio=self.mic, on_audio=self._on_audio,
                                             ice_servers=ice_servers)
        self.connection.add_listener(lambda event: self.events.append((time.monotonic(), event)))

    async def __aenter__(self) -> "SimulatedUser":
        await self.connection.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.connection.close()

    async def say(self, speech: np.ndarray, silence_after_s: float = 1.0) -> None:
        """Queue speech (int16 mono 48 kHz) then silence; returns once queued, not once played."""
        await self.mic.write(speech)
        await self.mic.write(np.zeros(int(silence_after_s * RATE), np.int16))

    def _on_audio(self, frame: av.AudioFrame) -> None:
        self.frames.append((time.monotonic(), frame_to_mono(frame)))

    # -- reading what happened -----------------------------------------------------------------
    async def seen(self, type_: str, timeout_s: float = 30.0,
                   where: Callable[[ServerEvent], bool] = lambda e: True) -> ServerEvent:
        """The first event of this type, whether it already arrived or arrives within the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((e for _, e in self.events if e.type == type_ and where(e)), None)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {type_} within {timeout_s:.0f} s; saw {[e.type for _, e in self.events][-12:]}")

    def of_type(self, type_: str) -> list[ServerEvent]:
        return [event for _, event in self.events if event.type == type_]

    def time_of(self, event: ServerEvent) -> float:
        return next(t for t, e in self.events if e is event)

    def first_voice_after(self, t: float) -> float | None:
        """Arrival time of the first non-silent frame received after `t`."""
        return next((at for at, samples in self.frames if at > t and rms_dbfs(samples) > VOICE_DBFS), None)

    def received(self, since: float = 0.0) -> np.ndarray:
        parts = [samples for at, samples in self.frames if at > since]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
